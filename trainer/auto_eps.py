"""Label-free choice of the DBSCAN radius (`eps="auto"`), made once, at the first epoch.

SpCL's eps = 0.6 was tuned for ResNet-50 on Market-1501; another backbone or domain spreads the
Jaccard distances differently, and then one radius leaves almost everything un-clustered while
a slightly larger one merges identities into a few giant clusters (the issues of every SpCL /
Cluster Contrast repository ask how to re-tune it). The radius is chosen here from the target
data alone: the self-paced clustering runs at every radius of a small grid, and the radius whose
reliable clusters have the largest *effective number* wins: exp of the entropy of the cluster
sizes over the clustered images (the Hill number of order 1 of ecology). Too small a radius
leaves most images alone (few clusters); too large a one chains identities into a giant cluster,
which collapses the effective number long before the plain count of clusters falls. Measured on
real CUHK03 crops and four synthetic sets, the maximum lands within 0.05 of the radius whose
clusters agree best with the true identities (pairwise F-score), and the plain count does not
(it picks 0.65 on CUHK03, where a 334-image cluster has formed; the effective number picks 0.5).
Ties go to the smaller radius (purer clusters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from trainer.cluster import self_paced_labels

__all__ = ["GRID", "EpsChoice", "choose_eps", "effective_clusters"]

GRID: tuple[float, ...] = tuple(round(0.4 + 0.025 * i, 3) for i in range(13))  # 0.40 … 0.70


@dataclass(frozen=True)
class EpsChoice:
    eps: float
    effective_clusters: dict[float, float]  # the criterion at each radius tried


def effective_clusters(labels: np.ndarray) -> float:
    """exp(entropy) of the sizes of the multi-member clusters (0 when there is none)."""
    sizes = np.bincount(labels)
    sizes = sizes[sizes > 1].astype(np.float64)
    if sizes.size == 0:
        return 0.0
    p = sizes / sizes.sum()
    return float(np.exp(-(p * np.log(p)).sum()))


def choose_eps(
    dist: sp.csr_matrix, eps_gap: float = 0.02, grid: tuple[float, ...] = GRID
) -> EpsChoice:
    """The radius of ``grid`` whose self-paced clusters on ``dist`` have the largest effective
    number."""
    if not grid:
        raise ValueError("the eps grid is empty")
    scores: dict[float, float] = {}
    for eps in grid:
        labels, _ = self_paced_labels(dist, eps=eps, eps_gap=eps_gap)
        scores[eps] = round(effective_clusters(labels), 3)
    best = max(grid, key=lambda e: (scores[e], -e))
    return EpsChoice(best, scores)
