"""Hybrid memory of SpCL (Ge et al., "Self-paced Contrastive Learning", NeurIPS 2020).

SpCL trains a re-ID encoder against a memory that holds one feature row per *source class*
(the L2-normalised centroid of that class) followed by one row per *target image*; in purely
unsupervised training every row is one image. Each row carries a label: source rows their class,
target rows the pseudo label of their cluster (un-clustered outliers get a label of their own).

The unified contrastive loss compares a batch feature with every label: the logit of label ``k``
is the mean similarity to the rows labelled ``k``, i.e. the similarity to the centroid of the
cluster's instance rows, recomputed on every call so that clusters follow the instance features
as they move. After the encoder gradient has been computed, the rows that appeared in the batch
are moved towards the new features with momentum and re-normalised; doing this inside the
backward pass means evaluation (forward only) never mutates the memory, and several losses over
the same memory (source + target) each apply their update when their sum is backpropagated.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import FunctionCtx, once_differentiable

__all__ = ["HybridMemory"]


def _momentum_update(
    features: torch.Tensor, inputs: torch.Tensor, indexes: torch.Tensor, momentum: float
) -> None:
    """Blend each distinct batch row with the batch mean of its inputs, then re-normalise.

    Vectorised with ``unique`` + ``index_add_`` so duplicates (several images of one source
    class in a batch) contribute their mean, as in the per-class update of the SpCL paper.
    """
    uniq, inverse = torch.unique(indexes, return_inverse=True)
    sums = torch.zeros(uniq.numel(), inputs.size(1), dtype=features.dtype, device=features.device)
    sums.index_add_(0, inverse, inputs.to(features.dtype))
    counts = torch.bincount(inverse, minlength=uniq.numel()).to(features.dtype)
    means = sums / counts.unsqueeze(1)
    blended = momentum * features.index_select(0, uniq) + (1.0 - momentum) * means
    features.index_copy_(0, uniq, F.normalize(blended, dim=1))


class _HybridMemoryFunction(torch.autograd.Function):
    """Similarities to fixed centroids whose backward also updates the memory rows.

    ``features`` is kept on ``ctx`` rather than via ``save_for_backward`` on purpose: it is
    modified in place, which would trip autograd's version-counter check, and the gradient only
    needs the centroid snapshot taken in forward (the pre-update memory), not the rows themselves.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        inputs: torch.Tensor,
        centroids: torch.Tensor,
        features: torch.Tensor,
        indexes: torch.Tensor,
        momentum: float,
    ) -> torch.Tensor:
        ctx.save_for_backward(inputs, centroids, indexes)
        ctx.features = features
        ctx.momentum = momentum
        return inputs.mm(centroids.t())

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inputs, centroids, indexes = ctx.saved_tensors
        # Autocast is thread-local and backward may run on another thread: pin float32 here too.
        with torch.autocast(device_type=grad_output.device.type, enabled=False):
            grad_inputs = None
            if ctx.needs_input_grad[0]:
                grad_inputs = grad_output.float().mm(centroids)
            with torch.no_grad():
                _momentum_update(ctx.features, inputs, indexes, ctx.momentum)
        return grad_inputs, None, None, None, None


class HybridMemory(nn.Module):
    """Memory of source-class centroids and target instance features with a contrastive loss.

    ``features`` (``num_samples × num_features``, float32) and ``labels`` (``num_samples``,
    int64) are buffers that the caller fills; they start as zeros. Labels must be non-negative;
    labels with no row (gaps after re-clustering) simply take no part in the softmax.
    """

    features: torch.Tensor
    labels: torch.Tensor

    def __init__(
        self, num_features: int, num_samples: int, temp: float = 0.05, momentum: float = 0.2
    ) -> None:
        super().__init__()
        if num_features <= 0 or num_samples <= 0:
            raise ValueError(
                f"num_features and num_samples must be positive, got {num_features} and "
                f"{num_samples}"
            )
        self.num_features = int(num_features)
        self.num_samples = int(num_samples)
        self.temp = temp
        self.momentum = momentum
        self.register_buffer("features", torch.zeros(num_samples, num_features))
        self.register_buffer("labels", torch.zeros(num_samples, dtype=torch.long))

    @property
    def temp(self) -> float:
        """Softmax temperature; validated on assignment so a bad schedule fails loudly."""
        return self._temp

    @temp.setter
    def temp(self, value: float) -> None:
        if not value > 0:  # also rejects NaN
            raise ValueError(f"temp must be > 0, got {value}")
        self._temp = float(value)

    @property
    def momentum(self) -> float:
        """Weight of the old row in the update; 1 would freeze the memory, so it is excluded."""
        return self._momentum

    @momentum.setter
    def momentum(self, value: float) -> None:
        if not 0.0 <= value < 1.0:  # also rejects NaN
            raise ValueError(f"momentum must be in [0, 1), got {value}")
        self._momentum = float(value)

    def extra_repr(self) -> str:
        return (
            f"num_features={self.num_features}, num_samples={self.num_samples}, "
            f"temp={self.temp}, momentum={self.momentum}"
        )

    def _check(self, inputs: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
        """Validate the batch and return ``indexes`` as int64 on the memory's device."""
        if inputs.dim() != 2 or inputs.size(1) != self.num_features:
            raise ValueError(
                f"inputs must have shape (B, {self.num_features}), got {tuple(inputs.shape)}"
            )
        if inputs.size(0) == 0:
            raise ValueError("inputs must hold at least one sample")
        if not inputs.is_floating_point():
            raise ValueError(f"inputs must be floating point, got {inputs.dtype}")
        if inputs.device != self.features.device:
            raise ValueError(
                f"inputs are on {inputs.device} but the memory is on {self.features.device}"
            )
        if not isinstance(indexes, torch.Tensor):
            raise ValueError(f"indexes must be a tensor, got {type(indexes).__name__}")
        if indexes.dim() != 1 or indexes.size(0) != inputs.size(0):
            raise ValueError(
                f"indexes must have shape ({inputs.size(0)},), got {tuple(indexes.shape)}"
            )
        if indexes.is_floating_point() or indexes.is_complex() or indexes.dtype == torch.bool:
            raise ValueError(f"indexes must be an integer tensor, got {indexes.dtype}")
        indexes = indexes.to(device=self.features.device, dtype=torch.long)
        lo, hi = int(indexes.min()), int(indexes.max())
        if lo < 0 or hi >= self.num_samples:
            raise ValueError(
                f"indexes must lie in [0, {self.num_samples}), got values in [{lo}, {hi}]"
            )
        return indexes

    def forward(self, inputs: torch.Tensor, indexes: torch.Tensor) -> torch.Tensor:
        """Mean cross-entropy of each sample against the cluster centroids of the memory.

        ``inputs`` (B × d, L2-normalised, any float dtype) keep their dtype for the gradient,
        but the loss is computed in float32 with autocast disabled: at temp 0.05 the logits reach
        ±20 and half precision would lose the small differences the softmax depends on.
        """
        indexes = self._check(inputs, indexes)
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            x = inputs.float()
            features = self.features
            with torch.no_grad():
                # Compacting the labels that actually occur drops empty labels from the softmax
                # altogether (equivalent to masking them out) and keeps K small when labels are
                # sparse. The centroid of a label turns its mean row similarity into one matmul.
                present, label_pos = torch.unique(self.labels, return_inverse=True)
                if int(present[0]) < 0:
                    raise ValueError("memory labels must be non-negative")
                centroids = torch.zeros(
                    present.numel(), self.num_features, dtype=features.dtype, device=features.device
                )
                centroids.index_add_(0, label_pos, features)
                counts = torch.bincount(label_pos, minlength=present.numel()).to(features.dtype)
                centroids /= counts.unsqueeze(1)
                targets = label_pos.index_select(0, indexes)
            sims = _HybridMemoryFunction.apply(x, centroids, features, indexes, self.momentum)
            # log_softmax subtracts the row maximum, so tiny temps cannot overflow.
            return F.cross_entropy(sims / self.temp, targets)
