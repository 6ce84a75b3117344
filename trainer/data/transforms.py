"""Image transforms of SpCL: augmentation for training, plain resize for embedding.

The test transform is also what the exported model file describes (input size and
normalisation), so the service can preprocess query images exactly as training saw them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torchvision.transforms as T
from torchvision.transforms import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(
    height: int,
    width: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Bicubic resize, random flip, pad 10 + random crop, normalise, random erasing (p = 0.5).

    Erased patches are filled with the mean values, as SpCL does; area 2–40 %, aspect 0.3–3.3.
    """
    return T.Compose(
        [
            T.Resize((height, width), interpolation=InterpolationMode.BICUBIC),
            T.RandomHorizontalFlip(p=0.5),
            T.Pad(10),
            T.RandomCrop((height, width)),
            T.ToTensor(),
            T.Normalize(mean=mean, std=std),
            T.RandomErasing(p=0.5, scale=(0.02, 0.4), ratio=(0.3, 3.3), value=list(mean)),
        ]
    )


def eval_transform(
    height: int,
    width: int,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> T.Compose:
    """Bicubic resize and normalise: the deterministic view used for features and queries."""
    return T.Compose(
        [
            T.Resize((height, width), interpolation=InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(mean=mean, std=std),
        ]
    )
