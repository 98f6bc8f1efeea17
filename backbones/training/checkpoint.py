"""Checkpoint files in and out, for every path that touches one: training (``--initial-checkpoint``,
the exports), validation (``--checkpoint``), conversion, the dense tools and ``pretrained=True``.

Reading checks the file first (a truncated download or an HTML page saved as ``.pth`` gets an
error that says so), unpickles nothing but tensors (``weights_only``, plus the
``argparse.Namespace`` official releases pickle beside them), and unwraps the usual wrappers (EMA
first when asked, ``module.`` prefixes). Writing is atomic and gives ``.safetensors`` files the
mode of any new file. Loading into a model converts an official layout through the family's
``checkpoint_filter_fn`` and replaces a head of another class count only when asked to.

Needs only the core dependencies (torch, timm, safetensors): ``import backbones`` uses it.
"""
import argparse
import hashlib
import json
import logging
import os
import pickle
import struct
import zipfile

import torch

from .._helpers import unwrap_checkpoint

_logger = logging.getLogger("backbones.training")

__all__ = ["CheckpointError", "check_checkpoint_file", "sha256_of", "read_checkpoint",
           "read_state_dict", "write_safetensors", "head_keys", "to_model_layout", "load_weights"]


class CheckpointError(ValueError):
    """A checkpoint file that is damaged, is not a checkpoint, or does not fit the model."""


def check_checkpoint_file(path, what="checkpoint file"):
    """Raise ``CheckpointError`` if ``path`` is visibly not a whole checkpoint
    (``FileNotFoundError`` if it is missing).

    Checks are cheap (no tensor is read): a zip archive (torch >= 1.6 ``.pth``) must have its
    central directory, a ``.safetensors`` file must be as long as its header says, and a legacy
    pickle must start with the pickle protocol byte.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what} {path} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path {path} is a directory, expected a file")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint file {path} is empty")
    with open(path, "rb") as f:
        head = f.read(8)
    if str(path).endswith(".safetensors"):
        header_len = struct.unpack("<Q", head)[0] if len(head) == 8 else -1
        try:
            with open(path, "rb") as f:
                f.seek(8)
                header = json.loads(f.read(header_len))
            end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"),
                      default=0)
        except (ValueError, KeyError, TypeError, MemoryError, OverflowError) as e:
            raise CheckpointError(f"{path} is not a valid safetensors file ({e})") from e
        if size != 8 + header_len + end:
            raise CheckpointError(
                f"{path} is truncated or padded: {size} bytes, its header says {8 + header_len + end}")
    elif head[:4] == b"PK\x03\x04":
        try:
            with zipfile.ZipFile(path) as zf:
                zf.infolist()
        except zipfile.BadZipFile as e:
            raise CheckpointError(
                f"{path} is a damaged or truncated zip checkpoint ({e}); {size} bytes on disk") from e
    elif head[:1] != b"\x80":
        raise CheckpointError(
            f"{path} is neither a PyTorch checkpoint (zip or pickle) nor a safetensors file "
            f"(starts with {head!r}); an HTML error page saved as a checkpoint looks like this")


def sha256_of(path, chunk=1 << 20):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def read_checkpoint(path, what="checkpoint file"):
    """The object stored in a ``.safetensors`` or ``.pth`` / ``.pt`` / ``.bin`` file, checked first
    and unpickled with ``weights_only=True``."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    check_checkpoint_file(path, what)
    try:
        if str(path).endswith(".safetensors"):
            return load_file(path)
        # official releases pickle their training arguments beside the weights
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, EOFError, RuntimeError, OSError, zipfile.BadZipFile,
            SafetensorError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: "
                              f"{str(e).strip()[:500]}") from e


def read_state_dict(path, use_ema=True, what="checkpoint file"):
    """A flat ``{name: tensor}`` dict from a checkpoint file: the EMA weights of a file that holds
    both with ``use_ema`` (timm's rule), the live ones otherwise; wrapper prefixes removed."""
    checkpoint = read_checkpoint(path, what)
    if isinstance(checkpoint, dict):
        keys = ("state_dict_ema", "model_ema", "state_dict", "model") if use_ema \
            else ("state_dict", "model")
        key = next((k for k in keys if isinstance(checkpoint.get(k), dict)), None)
        if key is not None:
            checkpoint = checkpoint[key]
    try:
        return unwrap_checkpoint(checkpoint)
    except ValueError as e:
        raise CheckpointError(f"{path}: {e}") from e


def write_safetensors(net_or_state, path, metadata=None):
    """A state dict (of a module, or given) as ``.safetensors``, written atomically: a killed
    writer never leaves a half-written file under ``path``."""
    from safetensors.torch import save_file
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    state = net_or_state if isinstance(net_or_state, dict) else net_or_state.state_dict()
    state = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        save_file(state, tmp, metadata={k: str(v) for k, v in (metadata or {}).items()})
        # safetensors writes through a private temporary file (mode 0600); give the file the mode
        # of any new file (0644 under the usual umask), like the .pth checkpoints beside it
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def head_keys(net, state_dict):
    """Keys of ``state_dict`` that belong to ``net``'s classifier (its pretrained_cfg says which)."""
    classifier = net.pretrained_cfg.get("classifier") if hasattr(net, "pretrained_cfg") else None
    prefixes = [classifier] if isinstance(classifier, str) else list(classifier or [])
    return [k for k in state_dict if any(k == p or k.startswith(p + ".") for p in prefixes)]


def to_model_layout(net, state):
    """``state`` in ``net``'s layout: a zoo family's ``checkpoint_filter_fn`` converts official
    checkpoints (and passes zoo ones through)."""
    from .._family import family_of_model
    family = family_of_model(net)
    return family.checkpoint_filter_fn(dict(state), net) if family else dict(state)


def load_weights(net, state, source, num_classes_given, flag="--initial-checkpoint"):
    """Load ``state`` (read from ``source``) into ``net``. A head of another class count is
    replaced (fine-tuning) when ``--num-classes`` was given, and is an error otherwise; anything
    else that does not fit is an error."""
    state = to_model_layout(net, state)
    own = net.state_dict()
    # a head of another class count (its first dim); other shape differences are errors below
    mismatched = [k for k in head_keys(net, own) if k in state and state[k].dim() >= 1
                  and state[k].shape[0] != own[k].shape[0]]
    if mismatched:
        ckpt_classes = state[mismatched[0]].shape[0]
        if not num_classes_given:
            raise CheckpointError(
                f"{flag} {source} has a {ckpt_classes}-class head but the model has "
                f"{net.num_classes} classes (from the data set); pass --num-classes "
                f"{net.num_classes} to fine-tune with a new head, or --num-classes "
                f"{ckpt_classes} to keep it")
        for k in mismatched:
            state.pop(k)
        _logger.info("new %d-class head (checkpoint head had %d classes: %s dropped)",
                     net.num_classes, ckpt_classes, ", ".join(mismatched))
    wrong = [k for k, v in state.items() if k in own and k not in mismatched
             and tuple(v.shape) != tuple(own[k].shape)]
    if wrong:
        k = wrong[0]
        raise CheckpointError(
            f"{flag} {source} does not fit {type(net).__name__}: {len(wrong)} tensor(s) differ in "
            f"shape, e.g. {k} {tuple(state[k].shape)} in the file vs {tuple(own[k].shape)} in the "
            f"model (other --model-kwargs?)")
    missing, unexpected = net.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in mismatched]
    if missing or unexpected:
        raise CheckpointError(f"{flag} {source} does not fit {type(net).__name__}: "
                              f"missing {missing[:8]}, unexpected {unexpected[:8]}")
