"""Backbone Zoo: vision backbones registered with timm.

``import backbones`` registers every zoo model, after which ``timm.create_model("cswin_tiny_224",
pretrained=True)`` works. Zoo names are ``<family>_<variant>_<resolution>`` and never replace a
model timm already has. Each family declares what it provides in one :class:`Family` record
(``backbones.get_family("cswin")``), which the tools and the tests read.
"""
import importlib
from types import MappingProxyType

from . import (  # noqa: F401  (registers the families with timm)
    biformer, cswin, dependencyvit, ela, halonet, litv2, shvit, sparsifiner, ulsam)
from ._family import _FAMILIES, Family, PaperResult, list_families
from ._pretrained import PretrainedWeightsError
from ._registry import list_zoo_families, list_zoo_models
from .version import __version__

FAMILIES = MappingProxyType(_FAMILIES)  # family name -> Family record (read-only view)


def get_family(name):
    """The :class:`Family` record of a family name (``cswin``) or zoo model name
    (``cswin_tiny_224``, ``cswin_tiny_224.in1k``)."""
    if name in FAMILIES:
        return FAMILIES[name]
    family = {m: f for f in list_zoo_families() for m in list_zoo_models(f)}.get(name.split(".")[0])
    if family is None:
        raise KeyError(f"{name!r} is neither a zoo family {sorted(FAMILIES)} nor a zoo model "
                       "(see backbones.list_zoo_models())")
    return FAMILIES[family]


def get_family_module(name):
    """The family module (``backbones.cswin``) of a family or zoo model name."""
    return importlib.import_module(get_family(name).module)


__all__ = ["FAMILIES", "Family", "PaperResult", "PretrainedWeightsError", "get_family",
           "get_family_module", "list_families", "list_zoo_families", "list_zoo_models",
           "__version__"]
