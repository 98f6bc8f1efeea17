"""The family contract: what a zoo family provides, declared once in one typed record.

Every family module (``backbones/<family>.py``) builds one :class:`Family` and passes it to
:func:`register_family` above its model entrypoints. The registry, the tools (benchmark,
conversion, dense transfer) and the test suite read this record and nothing else; the conformance
suite checks that it is complete (every registered model has its exact official parameter count,
every official class its fixture, ...). Adding a family is filling one record.

The golden-fixture contract (``tests/golden/README.md``) still names the module-level
``create_from_official`` and ``checkpoint_filter_fn``; the record points at those same functions.
"""
import inspect
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Tuple

import torch.nn as nn

__all__ = ["Family", "PaperResult", "family_of_model", "get_family", "list_families",
           "register_family"]


@dataclass(frozen=True)
class PaperResult:
    """A paper's (or official README's) ImageNet-1k row. ``verified``: re-read from the source."""
    top1: float
    params_m: Optional[float] = None
    gflops: Optional[float] = None  # multiply-adds, as the papers count them
    verified: bool = True


def _frozen(mapping):
    return MappingProxyType(dict(mapping or {}))


@dataclass(frozen=True)
class Family:
    """One zoo family.

    Args:
        name: the family name, the prefix of its zoo model names (``cswin``).
        model_cls: the model class every entrypoint builds.
        checkpoint_filter_fn: official (and zoo) checkpoint -> zoo state_dict.
        create_from_official: ``(kwargs, official_class=None) -> model`` with the architecture
            the official constructor builds from ``kwargs`` (fixtures, ``tools/convert.py``).
        official_repo: ``owner/name`` of the authors' code, or None (HaloNet: none released).
        official_classes: every official class ``create_from_official`` accepts, as
            ``path/in/repo.py:Class``; each needs at least one golden fixture.
        official_entrypoints: zoo model -> ``path.py:function`` in the official repository
            building the same model (``tools/benchmark.py --official``).
        official_builder: ``(module, entry, zoo_name) -> model`` for official code whose
            entrypoint is not ``entry(pretrained=False)`` returning logits (a class needing the
            arguments its training script passes, a forward returning a dict); default None.
        param_counts: zoo model -> its exact parameter count in the official implementation.
        tag_param_counts: ``model.tag`` -> exact count, for tags whose architecture differs.
        paper_results: zoo model -> :class:`PaperResult`.
        dense_backbone_kwargs: ``'detection'`` / ``'segmentation'`` -> the model kwargs that make
            the family's official dense backbone.
        timm_equivalents: zoo model -> timm's model of the identical architecture, if any.
        any_input_size: every model takes any image size >= ``min_input_size`` (else only the
            cfg's ``input_size``).
        torchscript: None when ``torch.jit.script`` works, else why not (torch >= 2.10
            deprecates TorchScript; ``torch.export`` is the supported path).
        fx: None when ``torch.fx`` tracing (timm's ``feature_cls='fx'``) works, else why not.
        export: None when ``torch.export`` works, else why not.
        mac_breakdown: ``(model, gmacs) -> {column: GMACs}``: extra per-image columns for
            ``tools/benchmark.py`` (``gmacs``: fvcore's count of the whole model), e.g. the
            attention MACs a sparse model saves, which a shape-based count cannot see.
        no_grad_params: ``fnmatch`` patterns of parameters that get no gradient from the
            classification loss by design (timm's backward checks expect every parameter to);
            ``no_grad_reason`` says why.
        query_attention: ``(model, x, (qx, qy)) -> [QueryAttention]``: per attention layer, what
            the attention of input pixel ``(qx, qy)`` of the image ``x`` ``(1, C, H, W)`` reaches
            and how much it weighs each pixel (``backbones.query_attention``; ``zoo-visualize``
            draws it); None: the family has nothing to draw.
    """
    name: str
    model_cls: type
    checkpoint_filter_fn: Callable
    create_from_official: Callable
    official_repo: Optional[str]
    official_classes: Tuple[str, ...]
    param_counts: Mapping[str, int]
    official_entrypoints: Mapping[str, str] = field(default_factory=dict)
    official_builder: Optional[Callable] = None
    tag_param_counts: Mapping[str, int] = field(default_factory=dict)
    paper_results: Mapping[str, PaperResult] = field(default_factory=dict)
    dense_backbone_kwargs: Mapping[str, Mapping] = field(default_factory=dict)
    timm_equivalents: Mapping[str, str] = field(default_factory=dict)
    any_input_size: bool = True
    torchscript: Optional[str] = None
    fx: Optional[str] = None
    export: Optional[str] = None
    mac_breakdown: Optional[Callable] = None
    no_grad_params: Tuple[str, ...] = ()
    no_grad_reason: Optional[str] = None
    query_attention: Optional[Callable] = None
    module: str = ""

    def __post_init__(self):
        if not (isinstance(self.model_cls, type) and issubclass(self.model_cls, nn.Module)):
            raise TypeError(f"family {self.name!r}: model_cls must be an nn.Module class")
        for fn in ("checkpoint_filter_fn", "create_from_official"):
            if not callable(getattr(self, fn)):
                raise TypeError(f"family {self.name!r}: {fn} must be callable")
        if self.query_attention is not None and not callable(self.query_attention):
            raise TypeError(f"family {self.name!r}: query_attention must be callable or None")
        params = inspect.signature(self.create_from_official).parameters
        if list(params)[:2] != ["kwargs", "official_class"]:
            raise TypeError(f"family {self.name!r}: create_from_official must take "
                            "(kwargs, official_class=None) (tests/golden/README.md)")
        bad_tasks = set(self.dense_backbone_kwargs) - {"detection", "segmentation"}
        if bad_tasks:
            raise ValueError(f"family {self.name!r}: unknown dense tasks {sorted(bad_tasks)}")
        for attr in ("official_entrypoints", "param_counts", "tag_param_counts", "paper_results",
                     "dense_backbone_kwargs", "timm_equivalents"):
            object.__setattr__(self, attr, _frozen(getattr(self, attr)))
        object.__setattr__(self, "official_classes", tuple(self.official_classes))
        object.__setattr__(self, "no_grad_params", tuple(self.no_grad_params))
        if bool(self.no_grad_params) != bool(self.no_grad_reason):
            raise ValueError(f"family {self.name!r}: no_grad_params and no_grad_reason go together")


_FAMILIES = {}  # name -> Family


def register_family(family: Family) -> Family:
    """Register ``family``; called once by its module, above the model entrypoints."""
    if not isinstance(family, Family):
        raise TypeError(f"register_family takes a Family record, got {type(family).__name__}")
    module = inspect.getmodule(inspect.stack()[1][0])
    module_name = module.__name__ if module else ""
    if module_name.split(".")[-1] != family.name:
        raise ValueError(f"family {family.name!r} must be registered by backbones/{family.name}.py, "
                         f"not {module_name}")
    if family.name in _FAMILIES:
        raise RuntimeError(f"family {family.name!r} is registered twice")
    object.__setattr__(family, "module", module_name)
    _FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    """The record of a family, by family name."""
    try:
        return _FAMILIES[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a zoo family; families: {sorted(_FAMILIES)}") from None


def list_families():
    return sorted(_FAMILIES)


def family_of_model(model: nn.Module) -> Optional[Family]:
    """The record of the family that built ``model`` (None for models not of the zoo)."""
    return next((f for f in _FAMILIES.values() if isinstance(model, f.model_cls)), None)
