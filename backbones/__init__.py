"""Backbone Zoo: vision backbones registered with timm.

``import backbones`` registers every zoo model, after which ``timm.create_model("cswin_tiny_224",
pretrained=True)`` works. Zoo names are ``<family>_<variant>_<resolution>`` and never replace a
model timm already has.
"""
from . import biformer, cswin, halonet, litv2, shvit  # noqa: F401  (registers the families with timm)
from ._pretrained import PretrainedWeightsError
from ._registry import list_zoo_families, list_zoo_models
from .version import __version__

FAMILIES = {"biformer": biformer, "cswin": cswin, "halonet": halonet, "litv2": litv2,
            "shvit": shvit}


def get_family_module(name):
    """The family module (``backbones.cswin``...) of a family or zoo model name."""
    family = name if name in FAMILIES else dict(
        (m, f) for f in list_zoo_families() for m in list_zoo_models(f)).get(name.split(".")[0])
    if family not in FAMILIES:
        raise KeyError(f"{name!r} is neither a zoo family {sorted(FAMILIES)} nor a zoo model "
                       "(see backbones.list_zoo_models())")
    return FAMILIES[family]


__all__ = ["FAMILIES", "PretrainedWeightsError", "get_family_module", "list_zoo_families",
           "list_zoo_models", "__version__"]
