"""An exported ONNX model run by ONNX Runtime, with the same ``embed`` as :class:`Embedder`.

Used to check an export against the PyTorch model it came from (``reid export`` prints the
difference) and as a drop-in embedder where ONNX Runtime is the faster engine.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.models.onnx_export import INPUT_NAME

__all__ = ["OnnxEmbedder", "Parity", "parity"]


@dataclass
class OnnxEmbedder:
    """An ONNX Runtime session on the CPU and the export's metadata (parsed)."""

    session: Any  # onnxruntime.InferenceSession
    meta: dict[str, Any]

    @classmethod
    def load(cls, path: str | os.PathLike[str], threads: int | None = None) -> OnnxEmbedder:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(Path(path)), options, providers=["CPUExecutionProvider"])
        raw = session.get_modelmeta().custom_metadata_map
        meta: dict[str, Any] = dict(raw)
        for key in ("height", "width", "feature_dim"):
            meta[key] = int(raw[key])
        for key in ("mean", "std", "flip"):
            meta[key] = json.loads(raw[key])
        return cls(session, meta)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """N × 3 × H × W preprocessed images → N × d unit rows (float32)."""
        batch = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (out,) = self.session.run(None, {INPUT_NAME: batch})
        return torch.from_numpy(out)


@dataclass(frozen=True)
class Parity:
    """How far two engines' embeddings of the same images are apart."""

    images: int
    max_abs: float  # largest element-wise difference
    min_cosine: float  # worst image


def parity(reference: torch.Tensor, other: torch.Tensor) -> Parity:
    """Compare two N × d embedding matrices row by row."""
    diff = (reference.float() - other.float()).abs().max().item()
    cosine = torch.nn.functional.cosine_similarity(reference.float(), other.float(), dim=1)
    return Parity(len(reference), float(diff), float(cosine.min().item()))
