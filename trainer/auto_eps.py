"""Label-free choice of the DBSCAN radius (`eps="auto"`), made once, at the first epoch.

SpCL's eps = 0.6 was tuned for ResNet-50 on Market-1501; another backbone or domain spreads the
Jaccard distances differently, and then one radius leaves almost everything un-clustered while
a slightly larger one merges identities into a few giant clusters (the issues of every SpCL /
Cluster Contrast repository ask how to re-tune it). The radius is chosen here from the target
data alone: the self-paced clustering runs at every radius of a small grid and the radius that
yields the most reliable multi-member clusters wins. Too small a radius leaves most images
alone; past the right one, clusters start to swallow each other and their number falls, so the
maximum marks the finest grouping the data supports (a label-free stand-in for "as many
identities as can be told apart"). Ties go to the smaller radius (purer clusters).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from trainer.cluster import self_paced_labels

__all__ = ["GRID", "EpsChoice", "choose_eps"]

GRID: tuple[float, ...] = tuple(round(0.4 + 0.025 * i, 3) for i in range(13))  # 0.40 … 0.70


@dataclass(frozen=True)
class EpsChoice:
    eps: float
    clusters: dict[float, int]  # reliable multi-member clusters at each radius tried


def choose_eps(
    dist: sp.csr_matrix, eps_gap: float = 0.02, grid: tuple[float, ...] = GRID
) -> EpsChoice:
    """The radius of ``grid`` giving the most reliable multi-member clusters on ``dist``."""
    if not grid:
        raise ValueError("the eps grid is empty")
    counts: dict[float, int] = {}
    for eps in grid:
        labels, _ = self_paced_labels(dist, eps=eps, eps_gap=eps_gap)
        counts[eps] = int((np.bincount(labels) > 1).sum())
    best = max(grid, key=lambda e: (counts[e], -e))
    return EpsChoice(best, counts)
