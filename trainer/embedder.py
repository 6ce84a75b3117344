"""A trained model file, loaded to embed images exactly as its training evaluated them.

`reid embed`, `reid evaluate`, index builds and `/search` all need the same three things from a
model file: the encoder (in the chosen DSBN branch), its test transform, and whether embeddings
are flip-averaged. Loading them in one place keeps indexes and queries comparable.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from trainer.data.transforms import eval_transform
from trainer.features import ImageDataset, embed_batch, extract_features
from trainer.models.export import load_model

__all__ = ["Embedder"]


@dataclass
class Embedder:
    """An encoder in eval mode with its transform and embedding options."""

    encoder: torch.nn.Module
    transform: Callable[[Any], torch.Tensor]
    flip: bool
    device: torch.device
    meta: dict[str, Any]

    @classmethod
    def load(
        cls, path: str | Path, device: str | torch.device = "cpu", domain: str = "target"
    ) -> Embedder:
        """``domain``: the BN branch (``source`` only for a domain-adapted model)."""
        device = torch.device(device)
        encoder, meta = load_model(path, device, domain=domain)
        transform = eval_transform(meta["height"], meta["width"], meta["mean"], meta["std"])
        return cls(encoder, transform, meta["flip"], device, meta)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """N × 3 × H × W preprocessed images → N × d unit rows (float32, on CPU)."""
        return embed_batch(self.encoder, images.to(self.device), self.flip).cpu()

    def features(
        self, root: Path, paths: Sequence[str], *, workers: int = 0, batch_size: int = 128
    ) -> torch.Tensor:
        """Embeddings of the images at ``root / path``, in order."""
        dataset = ImageDataset(root, paths, self.transform)
        return extract_features(
            self.encoder,
            dataset,
            self.device,
            batch_size=batch_size,
            workers=workers,
            flip=self.flip,
        )
