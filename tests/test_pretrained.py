"""pretrained=True through timm's own path, against an HTTP server on 127.0.0.1 (never the network).

The server hands out the CSWin golden fixture's weights in the official release layout
(``{'state_dict_ema': ..., 'args': Namespace}``), so a download that works must reproduce the
official model's logits.
"""
import argparse
import http.server
import socket
import threading
import traceback

import pytest
import torch
import timm
from safetensors.torch import save_file

import backbones  # noqa: F401  (registers the zoo with timm)
from backbones import PretrainedWeightsError
from backbones._pretrained import register_checksum, PUBLISHED_SHA256
from conftest import GOLDEN
from golden import load_fixture

FIXTURE = "cswin"
# The fixture's architecture expressed as overrides of a registered variant.
FIXTURE_ARCH = dict(embed_dim=12, depths=(1, 2, 2, 1), num_heads=(4, 4, 8, 8),
                    split_sizes=(1, 2, 7, None))


class _Handler(http.server.BaseHTTPRequestHandler):
    files = {}  # path -> (bytes, mode)

    def do_GET(self):  # noqa: N802 (http.server API)
        if self.path not in self.files:
            self.send_error(404, "not found")
            return
        body, mode = self.files[self.path]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        # 'cut': the connection drops half-way, as a flaky link or a killed proxy does.
        self.wfile.write(body[: len(body) // 2] if mode == "cut" else body)
        self.wfile.flush()
        if mode == "cut":
            self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def fixture_data():
    config, state_dict, io = load_fixture(GOLDEN, FIXTURE)
    return config, state_dict, io


@pytest.fixture(scope="module")
def official_checkpoint(fixture_data, tmp_path_factory):
    """Bytes of an official-layout release file holding the fixture's weights."""
    _, state_dict, _ = fixture_data
    path = tmp_path_factory.mktemp("release") / "cswin_fixture.pth"
    torch.save({"state_dict_ema": state_dict, "epoch": 300,
                "args": argparse.Namespace(model="CSWin_64_12211_tiny_224", lr=2e-3)}, path)
    return path.read_bytes()


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    _Handler.files = {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd, _Handler.files
    httpd.shutdown()
    httpd.server_close()


def _url(httpd, path):
    return f"http://127.0.0.1:{httpd.server_address[1]}{path}"


def _create(url=None, file=None, cache_dir=None, **kwargs):
    overlay = dict(num_classes=100)
    if url:
        overlay["url"] = url
    if file:
        overlay["file"] = str(file)
    return timm.create_model("cswin_tiny_224", pretrained=True, pretrained_cfg_overlay=overlay,
                             cache_dir=cache_dir, **dict(FIXTURE_ARCH, **kwargs))


def test_download_filter_load_reproduces_official(server, official_checkpoint, fixture_data, tmp_path):
    httpd, files = server
    files["/v0.1.0/cswin_fixture.pth"] = (official_checkpoint, "ok")
    url = _url(httpd, "/v0.1.0/cswin_fixture.pth")
    model = _create(url=url, cache_dir=tmp_path).eval()
    cached = tmp_path / "cswin_fixture.pth"
    assert cached.read_bytes() == official_checkpoint
    _, _, io = fixture_data
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max() < 1e-4

    # Offline afterwards: the cached file is used without touching the server.
    httpd.shutdown()
    again = _create(url=url, cache_dir=tmp_path).eval()
    with torch.no_grad():
        assert (again(io["input"]) - io["logits"]).abs().max() < 1e-4


def test_pretrained_features_only_and_adaptations(server, official_checkpoint, fixture_data, tmp_path):
    httpd, files = server
    files["/f.pth"] = (official_checkpoint, "ok")
    url = _url(httpd, "/f.pth")
    _, _, io = fixture_data
    features = _create(url=url, cache_dir=tmp_path, features_only=True).eval()
    with torch.no_grad():
        for i, feat in enumerate(features(io["input"])):
            assert (feat - io[f"features.{i}"]).abs().max() < 1e-4
    # timm's adaptations on the pretrained path: new head, headless, single-channel stem.
    assert _create(url=url, cache_dir=tmp_path, num_classes=5).num_classes == 5
    assert _create(url=url, cache_dir=tmp_path, num_classes=0)(torch.randn(1, 3, 64, 64)).shape == (1, 96)
    gray = _create(url=url, cache_dir=tmp_path, in_chans=1)
    assert gray.stem.conv.weight.shape[1] == 1
    assert gray(torch.randn(1, 1, 64, 64)).shape == (1, 100)


def test_refused_connection_names_url_cache_and_overlay(tmp_path):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/cswin_tiny_224.pth"
    with pytest.raises(PretrainedWeightsError) as info:
        _create(url=url, cache_dir=tmp_path)
    message = str(info.value)
    assert url in message
    assert str(tmp_path / "cswin_tiny_224.pth") in message
    assert "pretrained_cfg_overlay=dict(file=" in message
    assert not list(tmp_path.iterdir()), "a failed download must leave nothing in the cache"
    # the cause is one line of the message, not a chained traceback printed above it
    assert "URLError: " in message and "refused" in message.lower()
    printed = "".join(traceback.format_exception(info.value))
    assert "During handling of the above exception" not in printed
    assert "direct cause" not in printed and "urllib" not in printed.replace(url, "")


def test_connection_cut_mid_download(server, official_checkpoint, tmp_path):
    httpd, files = server
    files["/cut.pth"] = (official_checkpoint, "cut")
    url = _url(httpd, "/cut.pth")
    with pytest.raises(PretrainedWeightsError) as info:
        _create(url=url, cache_dir=tmp_path)
    assert url in str(info.value) and "pretrained_cfg_overlay" in str(info.value)
    assert not list(tmp_path.iterdir())


def test_truncated_release_file_is_rejected_and_removed(server, official_checkpoint, tmp_path):
    httpd, files = server
    files["/trunc.pth"] = (official_checkpoint[: len(official_checkpoint) * 2 // 3], "ok")
    with pytest.raises(PretrainedWeightsError, match="not a valid checkpoint"):
        _create(url=_url(httpd, "/trunc.pth"), cache_dir=tmp_path)
    assert not (tmp_path / "trunc.pth").exists()


def test_http_error_page(server, tmp_path):
    httpd, _ = server
    with pytest.raises(PretrainedWeightsError, match="404"):
        _create(url=_url(httpd, "/missing.pth"), cache_dir=tmp_path)


def test_published_checksum_is_checked(server, official_checkpoint, tmp_path):
    httpd, files = server
    files["/sum.pth"] = (official_checkpoint, "ok")
    url = _url(httpd, "/sum.pth")
    register_checksum(url, "0" * 64)
    try:
        with pytest.raises(PretrainedWeightsError, match="sha256"):
            _create(url=url, cache_dir=tmp_path)
        assert not (tmp_path / "sum.pth").exists()
        import hashlib
        register_checksum(url, hashlib.sha256(official_checkpoint).hexdigest())
        _create(url=url, cache_dir=tmp_path)
    finally:
        PUBLISHED_SHA256.pop(url, None)


def test_damaged_cached_file_says_delete_it(tmp_path, official_checkpoint):
    (tmp_path / "bad.pth").write_bytes(official_checkpoint[:1000])
    with pytest.raises(PretrainedWeightsError, match="Delete"):
        _create(url="http://127.0.0.1:9/bad.pth", cache_dir=tmp_path)


def test_local_file_overlay(official_checkpoint, fixture_data, tmp_path):
    _, state_dict, io = fixture_data
    pth = tmp_path / "official.pth"
    pth.write_bytes(official_checkpoint)
    model = _create(file=pth).eval()
    with torch.no_grad():
        assert (model(io["input"]) - io["logits"]).abs().max() < 1e-4
    # A zoo-layout safetensors file (what tools/convert.py writes) passes the filter unchanged.
    zoo = tmp_path / "zoo.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(zoo))
    model2 = _create(file=zoo).eval()
    with torch.no_grad():
        assert (model2(io["input"]) - io["logits"]).abs().max() < 1e-4


def test_local_file_errors(tmp_path, official_checkpoint):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        _create(file=tmp_path / "nowhere.pth")
    broken = tmp_path / "broken.pth"
    broken.write_bytes(official_checkpoint[:-100])
    with pytest.raises(PretrainedWeightsError, match="truncated"):
        _create(file=broken)
    html = tmp_path / "page.pth"
    html.write_bytes(b"<!DOCTYPE html><html>Sign in</html>")
    with pytest.raises(PretrainedWeightsError, match="HTML"):
        _create(file=html)


def test_wrong_variant_checkpoint_explains_mismatch(official_checkpoint, tmp_path):
    pth = tmp_path / "official.pth"
    pth.write_bytes(official_checkpoint)
    with pytest.raises(PretrainedWeightsError, match="does not fit"):
        timm.create_model("cswin_tiny_224", pretrained=True,
                          pretrained_cfg_overlay=dict(file=str(pth), num_classes=100))


def test_unknown_model_hint():
    with pytest.raises(RuntimeError, match="Unknown model"):
        timm.create_model("cswin_huge_224")
