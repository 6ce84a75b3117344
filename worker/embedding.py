"""Embedding a dataset's images for an index, the same way for a build and a sync: the
model's test transform, its DSBN branch for that dataset, on the GPU when there is one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from app.core.settings import Settings
from app.core.storage import StorageLayout

__all__ = ["embed_images"]


def embed_images(
    settings: Settings,
    storage: StorageLayout,
    model_path: Path,
    domain: str,
    paths: Sequence[str],
) -> np.ndarray:
    """N × d unit rows for these image paths (relative to the images folder)."""
    import torch

    from trainer.embedder import Embedder

    device = "cuda" if torch.cuda.is_available() else "cpu"
    embedder = Embedder.load(model_path, device, domain, settings.inference_engine)
    features = embedder.features(
        storage.images_dir, list(paths), workers=settings.loader_workers or 0
    )
    return features.numpy()
