"""A trained model file, loaded to embed images exactly as its training evaluated them.

`reid embed`, `reid evaluate`, index builds and `/search` all need the same three things from a
model file: the encoder (in the chosen DSBN branch), its test transform, and whether embeddings
are flip-averaged. Loading them in one place keeps indexes and queries comparable.

The engine: PyTorch, or on a CPU ONNX Runtime running the model's own export (the same
embedding, within float rounding: see ``reid export``). ``engine="auto"`` times both on the
machine at load (batches of 1 and 8) and keeps the faster; any failure falls back to PyTorch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch.utils.data import DataLoader

from trainer.data.transforms import eval_transform
from trainer.features import ImageDataset, embed_batch, extract_features
from trainer.models.export import load_model

__all__ = ["ENGINES", "Embedder"]

Engine = Literal["auto", "torch", "onnx"]
ENGINES: tuple[str, ...] = ("auto", "torch", "onnx")
logger = logging.getLogger(__name__)


@dataclass
class Embedder:
    """An encoder in eval mode with its transform and embedding options."""

    encoder: torch.nn.Module
    transform: Callable[[Any], torch.Tensor]
    flip: bool
    device: torch.device
    meta: dict[str, Any]
    runtime: Any = None  # an OnnxEmbedder when ONNX Runtime embeds instead of the encoder

    @classmethod
    def load(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        domain: str = "target",
        engine: Engine = "torch",
    ) -> Embedder:
        """``domain``: the BN branch (``source`` only for a domain-adapted model); ``engine``:
        torch, onnx (ONNX Runtime on the CPU) or auto (the faster of the two here)."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
        device = torch.device(device)
        if engine == "onnx" and device.type != "cpu":
            raise ValueError("the onnx engine runs on the CPU; use torch (or auto) on a GPU")
        encoder, meta = load_model(path, device, domain=domain)
        transform = eval_transform(meta["height"], meta["width"], meta["mean"], meta["std"])
        embedder = cls(encoder, transform, meta["flip"], device, meta)
        if engine == "onnx" or (engine == "auto" and device.type == "cpu"):
            embedder.runtime = _onnx_runtime(Path(path), domain, embedder, engine == "onnx")
        return embedder

    @property
    def engine(self) -> str:
        return "torch" if self.runtime is None else "onnx"

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """N × 3 × H × W preprocessed images → N × d unit rows (float32, on CPU)."""
        if self.runtime is not None:
            return self.runtime.embed(images)
        return embed_batch(self.encoder, images.to(self.device), self.flip).cpu()

    def features(
        self, root: Path, paths: Sequence[str], *, workers: int = 0, batch_size: int = 128
    ) -> torch.Tensor:
        """Embeddings of the images at ``root / path``, in order."""
        dataset = ImageDataset(root, paths, self.transform)
        if self.runtime is not None:
            loader = DataLoader(dataset, batch_size=batch_size, num_workers=workers)
            chunks = [self.embed(images) for images, _ in loader]
            return torch.cat(chunks) if chunks else torch.empty((0, self.meta["feature_dim"]))
        return extract_features(
            self.encoder,
            dataset,
            self.device,
            batch_size=batch_size,
            workers=workers,
            flip=self.flip,
        )


def _best_seconds(embed: Callable[[torch.Tensor], Any], batch: torch.Tensor) -> float:
    embed(batch)  # first run: allocations, lazy initialisation
    times = []
    for _ in range(3):
        start = time.perf_counter()
        embed(batch)
        times.append(time.perf_counter() - start)
    return min(times)


def _onnx_runtime(path: Path, domain: str, embedder: Embedder, required: bool) -> Any:
    """ONNX Runtime on the model's export when required, or (auto) when it is faster here
    at batches of 1 and 8; None for PyTorch. An export or runtime failure is an error only
    when required."""
    try:
        from trainer.models.onnx_export import exported_next_to
        from trainer.onnx_embedder import OnnxEmbedder

        runtime = OnnxEmbedder.load(exported_next_to(path, domain), torch.get_num_threads())
        if required:
            return runtime
        h, w = embedder.meta["height"], embedder.meta["width"]
        torch_s = onnx_s = 0.0
        for n in (1, 8):
            batch = torch.zeros(n, 3, h, w)
            torch_s += _best_seconds(embedder.embed, batch)
            onnx_s += _best_seconds(runtime.embed, batch)
    except Exception as exc:
        if required:
            raise
        logger.warning("ONNX Runtime unavailable for %s (%s): embedding with PyTorch", path, exc)
        return None
    faster = onnx_s < torch_s
    logger.info(
        "%s: ONNX Runtime %.1f ms vs PyTorch %.1f ms (batches 1 + 8): embedding with %s",
        path.name,
        1000 * onnx_s,
        1000 * torch_s,
        "ONNX Runtime" if faster else "PyTorch",
    )
    return runtime if faster else None
