"""Images → tensors → embeddings: the data path shared by training, evaluation and `reid embed`.

`ImageDataset` accepts either a plain index or an `(index, seed)` pair from
`IdentityBatchSampler`; with a seed, the random augmentation of that sample is drawn from its
own generator state, so a batch's pixels depend only on the sampler (seed, epoch), not on the
number of loader workers or on an interruption in between.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from trainer.data.images import load_rgb
from trainer.data.readers import Item
from trainer.evaluation import rank_metrics
from trainer.models.dsbn import dsbn_domain


class ImageDataset(Dataset):
    """Images at `root / path`, transformed; items are `(tensor, index)`."""

    def __init__(self, root: Path, paths: Sequence[str], transform: Callable) -> None:
        self.root = Path(root)
        self.paths = list(paths)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key if isinstance(key, tuple) else (key, None)
        image = load_rgb(self.root / self.paths[index])
        if seed is None:
            return self.transform(image), index
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also queue a CUDA re-seed, with
            # a captured stack trace, for every image (7% of a CPU training run's samples)
            torch.default_generator.manual_seed(seed)
            return self.transform(image), index


def loader_options(device: torch.device, workers: int) -> dict:
    """DataLoader settings: persistent workers, pinned memory on CUDA."""
    return {
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": device.type == "cuda",
    }


def embed_batch(model: torch.nn.Module, images: torch.Tensor, flip: bool = False) -> torch.Tensor:
    """Unit embeddings (float32) of a preprocessed batch, in the model's current mode.

    ``flip`` averages each image's embedding with its mirror image's: pedestrians and vehicles
    look alike mirrored, and the average is a cheap test-time gain used by the re-ID toolkits
    (fast-reid's ``TEST.FLIP``, torchreid). The sum of the two unit vectors is re-normalised.
    """
    feats = torch.nn.functional.normalize(model(images).float(), dim=1)
    if flip:
        mirrored = torch.nn.functional.normalize(model(images.flip(-1)).float(), dim=1)
        feats = torch.nn.functional.normalize(feats + mirrored, dim=1)
    return feats


@torch.no_grad()
def extract_features(
    model: torch.nn.Module,
    dataset: ImageDataset,
    device: torch.device,
    *,
    batch_size: int = 128,
    workers: int = 0,
    domain: str = "target",
    amp: bool = False,
    flip: bool = False,
    channels_last: bool | None = None,
) -> torch.Tensor:
    """L2-normalised embeddings (N × d, float32, on CPU) of every image, in dataset order.

    Runs in eval mode through the given DSBN branch (`domain`; ignored by a plain model) and
    restores the model's training mode afterwards; `flip`: see :func:`embed_batch`;
    `channels_last` (default: on CUDA only) feeds the batches in that memory layout.
    """
    if channels_last is None:
        channels_last = device.type == "cuda"
    was_training = model.training
    model.eval()
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
    )
    out = torch.empty((len(dataset), 0))
    try:
        with dsbn_domain(model, domain):
            chunks = []
            for images, _ in loader:
                images = images.to(device, non_blocking=True)
                if channels_last:
                    images = images.contiguous(memory_format=torch.channels_last)
                with torch.autocast(device.type, enabled=amp and device.type == "cuda"):
                    chunks.append(embed_batch(model, images, flip).cpu())
            if chunks:
                out = torch.cat(chunks)
    finally:
        model.train(was_training)
    return out


def class_centroids(features: torch.Tensor, labels: np.ndarray) -> torch.Tensor:
    """L2-normalised mean feature of each class 0..K−1 (rows of the hybrid memory)."""
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    k = int(labels_t.max()) + 1
    sums = torch.zeros(k, features.shape[1]).index_add_(0, labels_t, features)
    return torch.nn.functional.normalize(sums, dim=1)


def evaluate_retrieval(
    model: torch.nn.Module,
    root: Path,
    query: Sequence[Item],
    gallery: Sequence[Item],
    transform: Callable,
    device: torch.device,
    *,
    workers: int = 0,
    amp: bool = False,
    domain: str = "target",
    flip: bool = False,
    channels_last: bool | None = None,
) -> dict[str, float]:
    """mAP and CMC of `model` on a labeled query/gallery split (cosine distance).

    `domain` picks the DSBN branch: a split from the source domain is embedded through the
    source statistics (a plain model ignores it); `flip`: see :func:`embed_batch`.
    """
    items = [*query, *gallery]
    dataset = ImageDataset(root, [i.path for i in items], transform)
    feats = extract_features(
        model,
        dataset,
        device,
        workers=workers,
        amp=amp,
        domain=domain,
        flip=flip,
        channels_last=channels_last,
    )
    q, g = feats[: len(query)], feats[len(query) :]
    return rank_metrics(
        1.0 - q @ g.T,
        [i.pid for i in query],
        [i.pid for i in gallery],
        [i.camid for i in query] if all(i.camid is not None for i in items) else None,
        [i.camid for i in gallery] if all(i.camid is not None for i in items) else None,
    )
