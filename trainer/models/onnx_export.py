"""ONNX export of a model file: the embedding exactly as ``reid embed`` and ``/search`` compute it.

The graph is the encoder in the chosen BN branch plus the model's own flip-averaging, so an
exported model gives the service's embeddings and not a near miss (the most frequent complaint
about exported re-ID models). Contract: input ``images``, float32 N × 3 × H × W with a dynamic
batch axis, already normalised with the file's ``mean``/``std``; output ``embeddings``, float32
N × d, L2-normalised. The file's metadata (``metadata_props``, ONNX Runtime's
``custom_metadata_map``) says how to feed it: ``height``, ``width``, ``mean``, ``std`` (JSON
lists), ``feature_dim``, ``arch``, ``flip``, ``domain`` and ``source_sha256``, the SHA-256 of the
model file it came from. ``fp16`` stores the backbone's weights and computes it in half
precision (pooling and neck stay float32); inputs and outputs stay float32.

The TorchScript-based exporter (``dynamo=False``) is used: for these convolutional encoders it
is exact, takes a second instead of ten, and needs no onnxscript.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from trainer.features import embed_batch
from trainer.files import file_sha256, write_atomic
from trainer.models.encoder import Encoder
from trainer.models.export import load_model

__all__ = [
    "DEFAULT_OPSET",
    "INPUT_NAME",
    "MIN_OPSET",
    "OUTPUT_NAME",
    "OnnxExport",
    "export_onnx",
    "exported_next_to",
]

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
FORMAT_TAG = "reid-service/onnx-embedding"
DEFAULT_OPSET = 17
MIN_OPSET = 11  # flip needs 10, dynamic shapes in the neck 11


class _Half(nn.Module):
    """The wrapped module in half precision, float32 in and out. Only the backbone: pooling and
    the BN neck subtract a large shared mean, which fp16 would cancel into noise."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module.half()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x.half()).float()


class _EmbeddingGraph(nn.Module):
    """What the service runs per batch: the encoder, flip-averaged when the model is, unit rows."""

    def __init__(self, encoder: Encoder, flip: bool) -> None:
        super().__init__()
        self.encoder = encoder
        self.flip = flip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return embed_batch(self.encoder, images, self.flip)


@dataclass(frozen=True)
class OnnxExport:
    """The written file and what it says about itself."""

    path: Path
    metadata: dict[str, str]
    opset: int
    fp16: bool
    size_bytes: int


def export_onnx(
    model: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    domain: str = "target",
) -> OnnxExport:
    """Write ``out`` from the :func:`~trainer.models.export.save_model` file ``model``.

    ``domain``: the BN branch (``source`` for a domain-adapted model's source images). Raises
    ``ValueError`` for an opset the exporter cannot target, the model file's own errors for a
    bad file; ``out`` is only replaced by a complete, checked model.
    """
    if opset < MIN_OPSET:
        raise ValueError(f"opset must be >= {MIN_OPSET} (flip and dynamic batch), got {opset}")
    source = Path(model)
    encoder, meta = load_model(source, "cpu", domain=domain)
    if fp16:
        encoder.backbone = _Half(encoder.backbone)
    graph = _EmbeddingGraph(encoder, meta["flip"]).eval()
    example = torch.zeros(2, 3, meta["height"], meta["width"])
    buffer = io.BytesIO()
    batch = {0: "batch"}
    with warnings.catch_warnings():  # the TorchScript exporter announces its deprecation
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph,
                (example,),
                buffer,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: batch, OUTPUT_NAME: batch},
                opset_version=opset,
                do_constant_folding=True,
                dynamo=False,
            )
        except (torch.onnx.errors.OnnxExporterError, ValueError) as exc:
            raise ValueError(f"cannot export to ONNX opset {opset}: {exc}") from exc
    proto = onnx.load_from_string(buffer.getvalue())
    batch_dim, dim = proto.graph.output[0].type.tensor_type.shape.dim
    batch_dim.dim_param = "batch"  # the exporter names these after ops; say what they are
    dim.dim_value = int(meta["feature_dim"])
    metadata = {
        "format": FORMAT_TAG,
        "arch": str(meta["arch"]),
        "pooling": str(meta["pooling"]),
        "feature_dim": str(meta["feature_dim"]),
        "height": str(meta["height"]),
        "width": str(meta["width"]),
        "mean": json.dumps(meta["mean"]),
        "std": json.dumps(meta["std"]),
        "flip": json.dumps(meta["flip"]),
        "domain": domain,
        "precision": "fp16" if fp16 else "fp32",
        "source_sha256": file_sha256(source),
    }
    onnx.helper.set_model_props(proto, metadata)
    proto.doc_string = (
        f"{meta['arch']} re-ID encoder: {INPUT_NAME} float32 N x 3 x {meta['height']} x "
        f"{meta['width']} (normalised with mean/std) -> {OUTPUT_NAME} N x {meta['feature_dim']}, "
        "L2-normalised"
    )
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    target = Path(out)
    write_atomic(target, lambda fh: fh.write(data))
    return OnnxExport(target, metadata, opset, fp16, len(data))


def exported_next_to(model: str | os.PathLike[str], domain: str = "target") -> Path:
    """The ONNX export of ``model`` beside it (``model.onnx``; ``model.source.onnx`` for the
    source branch), written on first use and again when the model file is newer: what the
    service downloads and what ONNX Runtime embeds with."""
    source = Path(model)
    suffix = ".onnx" if domain == "target" else f".{domain}.onnx"
    onnx_file = source.with_suffix(suffix)
    if not onnx_file.is_file() or onnx_file.stat().st_mtime < source.stat().st_mtime:
        export_onnx(source, onnx_file, domain=domain)
    return onnx_file
