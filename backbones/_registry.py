"""Registration of zoo models with timm, refusing to shadow any name timm already has."""
import sys

from timm.models import is_model, register_model

from ._family import list_families

_ZOO_MODELS = {}  # model name -> family (module basename)


def register_zoo_model(fn):
    """``timm.models.register_model`` that raises instead of silently overwriting a timm model.

    timm only warns when a name is registered twice and then replaces the first entry, which
    would swap a timm model for ours behind the user's back. Zoo names follow
    ``<family>_<variant>_<resolution>`` so that this never has to fire.
    """
    name = fn.__name__
    if name in _ZOO_MODELS:
        raise RuntimeError(f"zoo model {name!r} is registered twice "
                           f"({_ZOO_MODELS[name]} and {fn.__module__})")
    if is_model(name):
        raise RuntimeError(
            f"zoo model {name!r} would overwrite timm's own model of that name; zoo names are "
            "<family>_<variant>_<resolution>, choose one timm does not use")
    module = sys.modules[fn.__module__]
    if not hasattr(module, "default_cfgs"):
        raise RuntimeError(f"{fn.__module__} must define `default_cfgs` above {name}")
    family = fn.__module__.split(".")[-1]
    if family not in list_families():
        raise RuntimeError(f"{fn.__module__} must register its Family record "
                           f"(backbones._family.register_family) above {name}")
    registered = register_model(fn)
    _ZOO_MODELS[name] = fn.__module__.split(".")[-1]
    return registered


def list_zoo_models(family=None):
    """Names of every model the zoo registered with timm (optionally of one family), sorted.

    Use this rather than ``timm.list_models(module=...)``: timm groups by the last module name, so
    a zoo family that shares a name with a timm module (``shvit``) would be mixed with timm's own.
    """
    return sorted(n for n, fam in _ZOO_MODELS.items() if family is None or fam == family)


def list_zoo_families():
    return sorted(set(_ZOO_MODELS.values()))
