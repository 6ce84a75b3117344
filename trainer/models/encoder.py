"""Encoder architecture: torchvision backbone → global pooling → BN neck → unit embedding.

SpCL trains against a memory of features, so there is no classifier head: the L2-normalised
embedding is what the memory stores and what retrieval compares (cosine similarity), in training
and in evaluation alike. The neck is a BatchNorm1d with its bias frozen at zero (the "BNNeck" of
Luo et al.), which keeps the embedding centred before normalisation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from trainer.models.dsbn import is_dsbn

if TYPE_CHECKING:
    from trainer.models.weights import LoadReport

__all__ = [
    "ARCHS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "POOLINGS",
    "Encoder",
    "GeneralizedMeanPooling",
    "check_arch",
]

ARCHS: tuple[str, ...] = ("resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v2")
POOLINGS: tuple[str, ...] = ("avg", "gem")
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)

_FEATURE_DIMS = {
    "resnet18": 512,
    "resnet34": 512,
    "resnet50": 2048,
    "resnet101": 2048,
    "mobilenet_v2": 1280,
}
# Re-ID convention: resnets drop the last downsampling (256×128 → 16×8 map) for finer features;
# mobilenet_v2 keeps torchvision's stride (the CPU-friendly choice stays cheap) unless asked.
_DEFAULT_LAST_STRIDE = {
    "resnet18": 1,
    "resnet34": 1,
    "resnet50": 1,
    "resnet101": 1,
    "mobilenet_v2": 2,
}


def check_arch(arch: str) -> None:
    """Raise ``ValueError`` listing the supported names if ``arch`` is not one of them."""
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; supported: {', '.join(ARCHS)}")


def _set_last_stride(block: nn.Module, stride: int) -> None:
    """Set every stride-2 convolution of ``block`` (main path and shortcut) to ``stride``."""
    found = False
    for module in block.modules():
        if isinstance(module, nn.Conv2d) and module.stride == (2, 2):
            module.stride = (stride, stride)
            found = True
    if not found:
        raise RuntimeError("no stride-2 convolution found in the last downsampling block")


class _ResNetTrunk(nn.Module):
    """torchvision ResNet without avgpool/fc; attribute names keep torchvision's state-dict keys."""

    def __init__(self, arch: str, last_stride: int) -> None:
        super().__init__()
        net = getattr(torchvision.models, arch)(weights=None)
        self.conv1 = net.conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        if last_stride != 2:
            _set_last_stride(self.layer4[0], last_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class _MobileNetV2Trunk(nn.Module):
    """torchvision MobileNetV2 ``features`` (1280 channels after the final 1×1 conv)."""

    def __init__(self, last_stride: int) -> None:
        super().__init__()
        self.features = torchvision.models.mobilenet_v2(weights=None).features
        if last_stride != 2:
            downsampling = [
                block
                for block in self.features
                if any(isinstance(m, nn.Conv2d) and m.stride == (2, 2) for m in block.modules())
            ]
            _set_last_stride(downsampling[-1], last_stride)  # features[14], the 160-ch stage

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def _make_backbone(arch: str, last_stride: int) -> nn.Module:
    if arch == "mobilenet_v2":
        return _MobileNetV2Trunk(last_stride)
    return _ResNetTrunk(arch, last_stride)


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling (Radenović et al.): ``mean(x^p)^(1/p)``, p learnable; p=1 avg, p→∞ max.

    Computed in float32 because ``x^3`` of post-ReLU activations overflows float16 under AMP.
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.full((1,), float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.p.float()
        pooled = x.float().clamp(min=self.eps).pow(p).mean(dim=(-2, -1)).pow(1.0 / p)
        return pooled.to(x.dtype)

    def extra_repr(self) -> str:
        p = "?" if self.p.is_meta else f"{float(self.p.detach()[0]):.4f}"
        return f"p={p}, eps={self.eps}"


class _GlobalAvgPool(nn.Module):
    """Global average pooling to ``(N, C)``; a mean over H, W works for any memory format."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(-2, -1))


class Encoder(nn.Module):
    """Backbone → global pooling → BN neck (frozen zero bias) → L2-normalised embedding.

    ``forward`` returns unit-norm ``(N, feature_dim)`` embeddings in both train and eval mode, as
    the SpCL memory and retrieval both use cosine similarity. Weights start at torchvision's
    random init; use :func:`build_encoder` for pretrained weights and DSBN.
    """

    def __init__(
        self, arch: str = "resnet50", pooling: str = "avg", last_stride: int | None = None
    ) -> None:
        super().__init__()
        check_arch(arch)
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; supported: {', '.join(POOLINGS)}")
        if last_stride is None:
            last_stride = _DEFAULT_LAST_STRIDE[arch]
        if last_stride not in (1, 2):
            raise ValueError(f"last_stride must be 1 or 2, got {last_stride}")
        self.arch = arch
        self.pooling = pooling
        self.last_stride = int(last_stride)
        self.feature_dim = _FEATURE_DIMS[arch]
        self.backbone = _make_backbone(arch, self.last_stride)
        self.pool: nn.Module = GeneralizedMeanPooling() if pooling == "gem" else _GlobalAvgPool()
        self.neck = nn.BatchNorm1d(self.feature_dim)
        nn.init.ones_(self.neck.weight)
        nn.init.zeros_(self.neck.bias)
        self.neck.bias.requires_grad_(False)
        self.weights_report: LoadReport | None = None  # set by build_encoder

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """Backbone output ``(N, C, H, W)`` (e.g. for attention maps or stride checks)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(self.backbone(x))
        return F.normalize(self.neck(pooled), dim=1)

    @property
    def dsbn(self) -> bool:
        """Whether the encoder currently holds domain-specific BatchNorm layers."""
        return any(is_dsbn(m) for m in self.modules())

    def extra_repr(self) -> str:
        return (
            f"arch={self.arch!r}, pooling={self.pooling!r}, last_stride={self.last_stride}, "
            f"feature_dim={self.feature_dim}"
        )
