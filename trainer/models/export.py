"""Self-describing single-file export of a trained encoder, for ``reid embed`` and the service.

The file holds everything a consumer needs to embed an image (architecture, pooling, input size,
normalisation, whether embeddings are flip-averaged) next to a plain-BN state dict (DSBN collapsed
to the target branch) and, for a domain-adapted model, the BN layers of its source branch: the
same encoder embeds source-domain images best through the source statistics it was trained with.
Only tensors and plain containers, so it loads with ``torch.load(weights_only=True)``: a foreign
or malicious pickle is refused rather than executed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from trainer.files import write_atomic
from trainer.models.dsbn import plain_state_dict
from trainer.models.encoder import IMAGENET_MEAN, IMAGENET_STD, Encoder

__all__ = [
    "DOMAINS",
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "InvalidModelFile",
    "load_model",
    "save_model",
]

FORMAT_TAG = "reid-service/encoder"
FORMAT_VERSION = 1
DOMAINS = ("target", "source")  # the BN branch an export embeds with; target is the default


class InvalidModelFile(ValueError):
    """A file given to :func:`load_model` is corrupt or not an exported encoder."""


_SAFE_SCALARS = (str, int, float, bool, type(None))


def _check_safe(value: Any, where: str) -> None:
    """Reject values that ``torch.load(weights_only=True)`` would refuse, naming the culprit.

    Exact types on purpose: subclasses such as ``numpy.float64`` or ``TorchVersion`` pass an
    ``isinstance`` check but are pickled as foreign classes and make the file unloadable.
    """
    if type(value) in _SAFE_SCALARS or isinstance(value, torch.Tensor):
        return
    if type(value) in (list, tuple):
        for i, item in enumerate(value):
            _check_safe(item, f"{where}[{i}]")
        return
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str:
                raise TypeError(f"{where} has a non-string key {key!r}")
            _check_safe(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"{where} is a {type(value).__name__}; only str/int/float/bool/None, lists, dicts and "
        "tensors can be stored (convert paths and numpy values first)"
    )


def _float_list(values: Sequence[float], name: str) -> list[float]:
    out = [float(v) for v in values]
    if len(out) not in (1, 3) or not all(math.isfinite(v) for v in out):
        raise ValueError(f"{name} must be 1 or 3 finite numbers, got {values!r}")
    return out


def save_model(
    path: str | os.PathLike[str],
    encoder: Encoder,
    *,
    height: int,
    width: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    flip: bool = False,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write a self-describing single-file export of ``encoder`` (DSBN collapsed to target,
    the source branch's BN layers kept beside it).

    Everything a consumer needs to embed images (arch, pooling, input size, normalisation,
    ``flip``: embeddings averaged with the mirror image's) is in the file; its content is
    limited to tensors and plain containers so it loads with ``weights_only=True``. ``extra``
    is free-form (e.g. training config, dataset names).
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"height and width must be positive, got {height}×{width}")
    mean_l, std_l = _float_list(mean, "mean"), _float_list(std, "std")
    if any(s <= 0 for s in std_l):
        raise ValueError(f"std must be positive, got {std_l}")
    extra = {} if extra is None else extra
    _check_safe(extra, "extra")
    payload = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "arch": encoder.arch,
        "pooling": encoder.pooling,
        "last_stride": encoder.last_stride,
        "feature_dim": encoder.feature_dim,
        "height": int(height),
        "width": int(width),
        "mean": mean_l,
        "std": std_l,
        "collapsed_from_dsbn": encoder.dsbn,
        "flip": bool(flip),
        "torch_version": str(torch.__version__),
        "extra": extra,
        "state_dict": plain_state_dict(encoder, "target"),
    }
    if encoder.dsbn:
        payload["source_bn"] = plain_state_dict(encoder, "source", only_dsbn=True)
    out = Path(path)
    write_atomic(out, lambda fh: torch.save(payload, fh))
    return out


_REQUIRED_META: dict[str, type | tuple[type, ...]] = {
    "arch": str,
    "pooling": str,
    "last_stride": int,
    "feature_dim": int,
    "height": int,
    "width": int,
    "mean": list,
    "std": list,
    "extra": dict,
    "state_dict": dict,
}


def load_model(
    path: str | os.PathLike[str], device: str | torch.device = "cpu", domain: str = "target"
) -> tuple[Encoder, dict[str, Any]]:
    """Rebuild an encoder from a :func:`save_model` file; returns ``(encoder.eval(), meta)``.

    ``domain="source"`` gives the encoder with the BN layers of a domain-adapted model's source
    branch (an error for a model that has none). ``meta`` is the file's description without
    the weights, plus ``domains``: the branches the file holds. Loading is ``weights_only``, so
    a foreign or malicious pickle is refused rather than executed.
    """
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {', '.join(DOMAINS)}, got {domain!r}")
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"model file {file} does not exist (or is not a file)")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise InvalidModelFile(
            f"{file} is corrupt or not a model exported by save_model ({type(exc).__name__}: {exc})"
        ) from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_TAG:
        raise InvalidModelFile(
            f"{file} is not a reid-service encoder export (no format tag {FORMAT_TAG!r}); "
            "to use a raw state dict, pass it as pretrained= to build_encoder"
        )
    version = payload.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise InvalidModelFile(
            f"{file} has format_version {version!r}; this code reads up to {FORMAT_VERSION} "
            "(upgrade reid-service)"
        )
    for key, kind in _REQUIRED_META.items():
        if not isinstance(payload.get(key), kind):
            raise InvalidModelFile(f"{file} is damaged: field {key!r} is missing or malformed")
    try:
        encoder = Encoder(payload["arch"], payload["pooling"], payload["last_stride"])
    except ValueError as exc:
        raise InvalidModelFile(
            f"{file} describes an encoder this code cannot build: {exc}"
        ) from exc
    if encoder.feature_dim != payload["feature_dim"]:
        raise InvalidModelFile(
            f"{file} says feature_dim {payload['feature_dim']}, but {payload['arch']} gives "
            f"{encoder.feature_dim}"
        )
    source_bn = payload.get("source_bn")
    if source_bn is not None and not isinstance(source_bn, dict):
        raise InvalidModelFile(f"{file} is damaged: field 'source_bn' is malformed")
    state = payload["state_dict"]
    if domain == "source":
        if source_bn is None:
            raise ValueError(
                f"{file} has no source branch (only a domain-adapted model has one); "
                "embed with the target branch"
            )
        state = {**state, **source_bn}
    try:
        encoder.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise InvalidModelFile(
            f"{file} has weights that do not fit {payload['arch']}: {exc}"
        ) from exc
    encoder.to(device).eval()
    meta = {k: v for k, v in payload.items() if k not in ("state_dict", "source_bn")}
    meta["flip"] = bool(payload.get("flip", False))  # files written before the option: off
    meta["domains"] = list(DOMAINS) if source_bn is not None else ["target"]
    return encoder, meta
