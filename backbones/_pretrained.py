"""Pretrained checkpoints: download through timm's cache with errors that say what to do.

timm's own url path fails with bare ``URLError``/``UnpicklingError``/empty ``FileNotFoundError``
messages and cannot tell a truncated download from a bad checkpoint. Before timm loads anything,
the zoo resolves the checkpoint to a local file: the user's ``pretrained_cfg_overlay=dict(file=...)``,
or the cfg ``url`` downloaded into timm's cache folder (``$TORCH_HOME/hub/checkpoints/<basename>``,
or ``cache_dir=``) exactly where timm itself would look. The file is checked (existence, archive
integrity: ``training.checkpoint``, the zoo's one checkpoint reader; the published checksum) and
handed to timm's file loader, so the filter, the ``in_chans`` / ``num_classes`` adaptation and
``features_only`` all run as timm does them.
"""
import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from urllib.parse import urlparse

from timm.models._hub import get_cache_dir

from .training.checkpoint import CheckpointError, check_checkpoint_file, sha256_of

# sha256 of released files, by URL, for the sources that publish one (none of the CSWin releases
# do). Families add entries with ``register_checksum``.
PUBLISHED_SHA256 = {}

DOWNLOAD_TIMEOUT_S = float(os.environ.get("BACKBONES_DOWNLOAD_TIMEOUT", "60"))


class PretrainedWeightsError(RuntimeError):
    """A pretrained checkpoint could not be found, downloaded, verified or loaded."""


def register_checksum(url, sha256):
    PUBLISHED_SHA256[url] = sha256.lower()


CHECKPOINT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".tar", ".ckpt")


def cache_file_name(url):
    """The file name a release is cached under: its URL's basename (timm's convention), or, for
    share links whose basename names no file (OneDrive's ``.../root/content`` for every release),
    that basename with a digest of the whole URL, so two releases never share a cache file."""
    base = os.path.basename(urlparse(url).path)
    if base.endswith(CHECKPOINT_SUFFIXES):
        return base
    return f"{base or 'download'}-{hashlib.sha256(url.encode()).hexdigest()[:16]}.pth"


def cache_path_for(url, cache_dir=None):
    return os.path.join(str(cache_dir) if cache_dir else get_cache_dir(), cache_file_name(url))


def _how_to_fix(model_name, url, cached_file):
    lines = []
    if url:
        lines.append(f"  * download {url} yourself and place it at {cached_file} (timm's cache; set "
                     "TORCH_HOME or pass cache_dir= to move it), then call again: no network is "
                     "needed once the file is there;")
    lines.append(f"  * or load any local copy: timm.create_model({model_name!r}, pretrained=True, "
                 "pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth'))")
    return "\n".join(lines)


def download(url, dst, progress=True, timeout=DOWNLOAD_TIMEOUT_S):
    """Download ``url`` to ``dst`` atomically (a temporary file renamed on success), so an
    interrupted or truncated transfer never leaves a file that looks cached."""
    os.makedirs(os.path.dirname(dst) or ".", exist_ok=True)
    request = urllib.request.Request(url, headers={"User-Agent": "backbone-zoo"})
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(dst) or ".", prefix=".partial-")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
            expected = resp.headers.get("Content-Length")
            expected = int(expected) if expected is not None else None
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=expected, unit="B", unit_scale=True, unit_divisor=1024,
                           desc=os.path.basename(dst))
            received = 0
            try:
                while True:
                    block = resp.read(1 << 16)
                    if not block:
                        break
                    out.write(block)
                    received += len(block)
                    if bar is not None:
                        bar.update(len(block))
            finally:
                if bar is not None:
                    bar.close()
        if expected is not None and received != expected:
            raise PretrainedWeightsError(
                f"download of {url} was cut short: got {received} of {expected} bytes")
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def resolve_checkpoint_file(model_name, pretrained_cfg, cache_dir=None, progress=True):
    """The local checkpoint file for ``pretrained_cfg``, downloading it into the cache if needed."""
    cfg_file = pretrained_cfg.get("file")
    url = pretrained_cfg.get("url")
    if isinstance(url, (tuple, list)):
        url = url[0]
    if cfg_file:
        try:
            check_checkpoint_file(cfg_file)
        except FileNotFoundError as e:
            raise FileNotFoundError(
                f"pretrained_cfg_overlay file for {model_name} not found: {cfg_file}. Check the "
                "path (relative paths are taken from the current directory).") from e
        except CheckpointError as e:
            raise PretrainedWeightsError(f"cannot load weights for {model_name}: {e}") from e
        return cfg_file
    if not url:
        hub = pretrained_cfg.get("hf_hub_id")
        if hub:
            return None  # hub-hosted weights: timm's hub loader handles them
        notes = " ".join(pretrained_cfg.get("notes") or ())
        raise PretrainedWeightsError(
            f"no pretrained weights are published for {model_name}; use pretrained=False, or load "
            "a file you trained: pretrained_cfg_overlay=dict(file='/path/to/checkpoint.pth')"
            + (f". {notes}" if notes else ""))

    cached_file = cache_path_for(url, cache_dir)
    if os.path.exists(cached_file):
        try:
            check_checkpoint_file(cached_file)
        except CheckpointError as e:
            raise PretrainedWeightsError(
                f"the cached checkpoint for {model_name} is damaged: {e}.\nDelete {cached_file} "
                f"and call again to re-download it, or:\n{_how_to_fix(model_name, url, cached_file)}"
            ) from e
        return cached_file

    try:
        download(url, cached_file, progress=progress)
    except (urllib.error.URLError, OSError, PretrainedWeightsError, ValueError) as e:
        if isinstance(e, urllib.error.HTTPError):
            reason = f"HTTP {e.code} {e.reason}"
        else:
            reason = f"{type(e).__name__}: {getattr(e, 'reason', None) or e}"
        # from None: the cause is the one line above; its chained traceback (urllib's and
        # http.client's frames) would bury this message at the end of ~75 lines
        raise PretrainedWeightsError(
            f"could not download the pretrained weights of {model_name} from {url}: {reason}.\n"
            f"Offline, behind a proxy, or if the link moved:\n"
            f"{_how_to_fix(model_name, url, cached_file)}") from None

    problem = None
    try:
        check_checkpoint_file(cached_file)
    except CheckpointError as e:
        problem = str(e)
    expected_sha = PUBLISHED_SHA256.get(url)
    if problem is None and expected_sha:
        actual = sha256_of(cached_file)
        if actual != expected_sha:
            problem = f"sha256 {actual} does not match the published {expected_sha}"
    if problem:
        os.remove(cached_file)
        raise PretrainedWeightsError(
            f"the file downloaded from {url} for {model_name} is not a valid checkpoint: {problem}. "
            f"It was deleted; try again, or:\n{_how_to_fix(model_name, url, cached_file)}")
    return cached_file


def copy_into_cache(path, url, cache_dir=None):
    """Put a local copy of a released checkpoint where ``pretrained=True`` will find it offline."""
    dst = cache_path_for(url, cache_dir)
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    shutil.copyfile(path, dst)
    return dst
