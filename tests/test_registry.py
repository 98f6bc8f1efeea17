"""``import backbones`` registers the zoo with timm and never replaces a timm model."""
import os
import re
import subprocess
import sys
from urllib.parse import urlparse

import pytest
import timm

import backbones
from backbones._pretrained import cache_file_name
from backbones._registry import register_zoo_model

ZOO = backbones.list_zoo_models()


def test_import_overwrites_no_timm_name():
    code = (
        "import warnings, timm\n"
        "before = set(timm.list_models())\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import backbones\n"
        "after = set(timm.list_models())\n"
        "ours = set(backbones.list_zoo_models())\n"
        "assert not [w for w in caught if 'Overwriting' in str(w.message)], caught\n"
        "assert before <= after and not (ours & before), ours & before\n"
        "assert ours == after - before, (ours, after - before)\n"
        "print(len(ours))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=dict(os.environ, PYTHONWARNINGS="default"))
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.strip()) == len(ZOO) > 0


def test_registering_a_timm_name_raises():
    def resnet50(pretrained=False, **kwargs):  # timm's own name
        raise AssertionError("never called")
    with pytest.raises(RuntimeError, match="overwrite timm's own model"):
        register_zoo_model(resnet50)
    assert "resnet50" not in ZOO


@pytest.mark.parametrize("name", ZOO)
def test_name_is_family_variant_resolution(name):
    """``<family>_<variant>_<resolution>``; a family that hosts timm's own architectures under
    zoo names (HaloNet's hybrids) names them ``<timm architecture>_<resolution>``."""
    family = backbones._registry._ZOO_MODELS[name]
    timm_twin = backbones.get_family(family).timm_equivalents.get(name)
    prefix = re.escape(timm_twin) if timm_twin and not name.startswith(family + "_") \
        else rf"{family}_([a-z0-9]+_)*[a-z0-9]+"
    match = re.fullmatch(rf"{prefix}_(?P<res>\d+)", name)
    assert match, f"{name} is not <family>_<variant>_<resolution>"
    assert timm.models.get_pretrained_cfg(name).input_size[-1] == int(match.group("res"))
    for tag_name in timm.list_pretrained(name + ".*"):
        cfg = timm.models.get_pretrained_cfg(tag_name)
        assert cfg.input_size[-1] == int(match.group("res")), tag_name


@pytest.mark.parametrize("name", ZOO)
def test_default_cfgs_carry_real_sources_and_metadata(name):
    tags = timm.list_pretrained(name + ".*")
    if not tags:
        # a paper configuration nobody released weights for (timm's convention: the tag
        # 'untrained', no url, not listed as pretrained); asking for weights must say so
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.tag == "untrained" and not cfg.url and not cfg.hf_hub_id
        assert cfg.paper_ids and cfg.notes
        assert not timm.is_model_pretrained(name)
        with pytest.raises(backbones.PretrainedWeightsError, match="no pretrained weights"):
            timm.create_model(name, pretrained=True)
        return
    for tag_name in tags:
        cfg = timm.models.get_pretrained_cfg(tag_name)
        if cfg.url or not cfg.hf_hub_id:  # timm's hub-only weights have an hf_hub_id instead
            assert urlparse(cfg.url).scheme == "https"
            assert cache_file_name(cfg.url).endswith((".pth", ".pt", ".pth.tar", ".safetensors",
                                                      ".bin"))
        assert cfg.license and cfg.paper_ids and cfg.origin_url and cfg.paper_name
        assert cfg.first_conv and cfg.classifier
        assert 0 < cfg.crop_pct <= 1 and cfg.interpolation in ("bicubic", "bilinear")
    assert timm.is_model_pretrained(name)


def test_release_file_names_are_unique():
    """Downloads are cached by file name (the URL basename, timm's convention; share links get a
    URL digest): two sources with one cache name would collide."""
    seen = {}
    for name in ZOO:
        for tag_name in timm.list_pretrained(name + ".*"):
            url = timm.models.get_pretrained_cfg(tag_name).url
            base = cache_file_name(url)
            assert seen.setdefault(base, url) == url, f"{base}: {seen[base]} and {url}"


def test_share_links_get_distinct_cache_names():
    a = "https://api.onedrive.com/v1.0/shares/s!A/root/content"
    b = "https://api.onedrive.com/v1.0/shares/s!B/root/content"
    assert cache_file_name(a) != cache_file_name(b)
    assert cache_file_name(a).startswith("content-") and cache_file_name(a).endswith(".pth")
    assert cache_file_name("https://x.org/r/cswin_tiny_224.pth") == "cswin_tiny_224.pth"


def test_get_family():
    assert backbones.get_family("cswin_tiny_224") is backbones.cswin.FAMILY
    assert backbones.get_family("cswin_tiny_224.in1k") is backbones.FAMILIES["cswin"]
    assert backbones.get_family_module("cswin") is backbones.cswin
    with pytest.raises(KeyError, match="list_zoo_models"):
        backbones.get_family("nope_1")
