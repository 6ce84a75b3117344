"""Camera-aware training terms for the target domain: a camera network always knows its cameras.

Images of one camera share lighting, background and viewpoint, so a plain feature space groups
them by camera before it groups them by identity: clusters stay within one camera and the model
never learns the cross-camera matches retrieval is about. Two remedies, each its own option:

- :func:`camera_centred` (clustering): subtract each camera's mean feature before the Jaccard
  distance, so neighbours are sought across cameras (the camera-bias removal of e.g. Zhuang et
  al., "Rethinking the Distribution Gap of Person Re-ID with Camera-based Batch Normalization",
  ECCV 2020, applied to the memory features instead of the BN statistics).
- :class:`CameraProxyLoss` (training): the inter-camera contrast of camera-aware proxies (CAP,
  Wang et al., AAAI 2021; ICE, Chen et al., ICCV 2021). A cluster has one proxy per camera it
  spans (the mean of its instance rows there); a sample is pulled towards all proxies of its
  cluster, in every camera, against the hardest proxies of other clusters.

Both are no-ops without camera ids or with a single camera.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CameraProxyLoss", "camera_centred", "camera_ids"]

# CAP/ICE settings: proxy temperature, hard negatives per sample, weight next to SpCL's loss.
PROXY_TEMP = 0.07
HARD_NEGATIVES = 50
PROXY_WEIGHT = 0.5


def camera_ids(camids: list[int | None]) -> torch.Tensor | None:
    """Camera ids as contiguous 0..C−1, or None when any is unknown or there is only one."""
    if not camids or any(c is None for c in camids):
        return None
    _, inverse = torch.unique(torch.tensor(camids), return_inverse=True)
    return inverse if int(inverse.max()) > 0 else None


def _group_means(features: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Mean row of each group 0..G−1 (``groups``: N ids)."""
    count = int(groups.max()) + 1
    sums = torch.zeros(count, features.shape[1], dtype=features.dtype, device=features.device)
    sums.index_add_(0, groups, features)
    sizes = torch.bincount(groups, minlength=count).clamp(min=1).to(features.dtype)
    return sums / sizes.unsqueeze(1)


def camera_centred(features: torch.Tensor, cams: torch.Tensor | None) -> torch.Tensor:
    """Unit rows with their camera's mean removed (``features`` itself without cameras)."""
    if cams is None:
        return features
    cams = cams.to(features.device)
    return F.normalize(features - _group_means(features, cams)[cams], dim=1)


class CameraProxyLoss:
    """Inter-camera proxy contrast over the hybrid memory's target rows.

    Proxies are recomputed from the memory rows at every call (like the memory's own cluster
    centroids), so they need no bank of their own. For a sample of cluster k with proxy set P
    (k's proxies in every camera it spans) and N its ``HARD_NEGATIVES`` most similar proxies of
    other labels, the loss is ``−mean_{p∈P} log(exp(s_p) / (Σ_P exp(s) + Σ_N exp(s)))`` with
    ``s = ⟨x, proxy⟩ / PROXY_TEMP``, averaged over the batch's clustered samples (un-clustered
    instances have no cross-camera positive) and weighted by ``PROXY_WEIGHT``.
    """

    def __init__(self, cams: torch.Tensor) -> None:
        self.cams = cams
        self.num_cams = int(cams.max()) + 1

    def __call__(
        self,
        inputs: torch.Tensor,
        rows: torch.Tensor,
        features: torch.Tensor,
        labels: torch.Tensor,
    ) -> torch.Tensor:
        """``inputs`` B × d; ``rows`` their target row ids; ``features``/``labels`` the
        memory's target rows and their pseudo-labels (0-based)."""
        with torch.no_grad():
            cams = self.cams.to(labels.device)
            keys, proxy_of_row = torch.unique(labels * self.num_cams + cams, return_inverse=True)
            proxies = F.normalize(_group_means(features, proxy_of_row), dim=1)
            proxy_label = keys // self.num_cams
            sizes = torch.bincount(labels)
            batch_labels = labels[rows]
            clustered = sizes[batch_labels] > 1
        if not bool(clustered.any()):
            return inputs.new_zeros(())
        with torch.autocast(device_type=inputs.device.type, enabled=False):
            x = inputs[clustered].float()
            own = batch_labels[clustered]
            sims = x.mm(proxies.t()) / PROXY_TEMP  # B' × P
            positive = proxy_label.unsqueeze(0) == own.unsqueeze(1)
            negatives = sims.detach().masked_fill(positive, float("-inf"))
            k = min(HARD_NEGATIVES, int((~positive).sum(dim=1).min()))
            hard = negatives.topk(k, dim=1).indices if k > 0 else negatives[:, :0].long()
            keep = positive.clone()
            keep.scatter_(1, hard, True)
            logits = sims.masked_fill(~keep, float("-inf"))
            log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            per_sample = -(log_prob.masked_fill(~positive, 0.0).sum(1) / positive.sum(1))
            return PROXY_WEIGHT * per_sample.mean()
