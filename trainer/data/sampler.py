"""Identity-balanced batches with SpCL's sampling semantics, reproducible per epoch.

For each (pseudo-)identity, in a shuffled order, the stream takes one random anchor image plus
num_instances − 1 images of the same identity, preferring cameras other than the anchor's (with
replacement only when there are too few); an identity with one image contributes just that
image. The stream is cut into batches and restarted with a new shuffle until the epoch holds
exactly `iters` batches. With `image_anchors`, the stream walks a shuffled order of *images*
instead: every image is an anchor once per pass, so an identity is drawn as often as it has
images (clusters far more often than un-clustered singletons), which puts more same-identity
pairs in each batch when the schedule is short.

Every index comes with a per-sample seed for its augmentation, and all randomness derives from
(seed, epoch): an epoch's batches and crops are the same whatever the number of loader workers
and whether or not the run was resumed in between.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np


class IdentityBatchSampler:
    """Yields `iters` batches of `(dataset index, augmentation seed)` pairs per epoch."""

    def __init__(
        self,
        pids: Sequence[int],
        camids: Sequence[int | None] | None,
        batch_size: int,
        num_instances: int,
        iters: int,
        seed: int = 0,
        image_anchors: bool = False,
    ) -> None:
        if batch_size < 1 or num_instances < 1 or iters < 1:
            raise ValueError(
                f"batch_size, num_instances and iters must be >= 1, got {batch_size}, "
                f"{num_instances}, {iters}"
            )
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.iters = iters
        self.seed = seed
        self.image_anchors = image_anchors
        self.epoch = 0
        self.skip = 0
        self.set_identities(pids, camids)

    def set_identities(self, pids: Sequence[int], camids: Sequence[int | None] | None) -> None:
        """Replace the (pseudo-)labels, e.g. after re-clustering; loader workers stay alive."""
        pids_arr = np.asarray(pids, dtype=np.int64)
        if len(pids_arr) == 0:
            raise ValueError("cannot sample batches from an empty set of images")
        cams = np.full(len(pids_arr), -1, np.int64)
        if camids is not None:
            cams[:] = [-1 if c is None else c for c in camids]
        order = np.argsort(pids_arr, kind="stable")
        _, starts = np.unique(pids_arr[order], return_index=True)
        self._members = np.split(order, starts[1:])  # dataset indices of each identity
        self._identity_of = np.empty(len(pids_arr), np.int64)  # image → its identity's index
        self._identity_of[order] = np.repeat(np.arange(starts.size), np.diff([*starts, order.size]))
        self._cams = cams

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the epoch whose batches the next iteration yields, less its first `skip`
        batches (a run resumed mid-epoch continues with exactly the batches it had left)."""
        self.epoch = epoch
        self.skip = skip

    def __len__(self) -> int:
        return self.iters - self.skip

    def _identity_images(
        self, rng: np.random.Generator, members: np.ndarray, anchor: int | None = None
    ) -> list[int]:
        if anchor is None:
            anchor = int(rng.choice(members))
        if len(members) == 1 or self.num_instances == 1:
            return [anchor]
        others = members[members != anchor]
        cams = self._cams[others]
        anchor_cam = self._cams[anchor]
        if anchor_cam >= 0:
            other_cams = others[(cams != anchor_cam) & (cams >= 0)]
            if other_cams.size:
                others = other_cams
        extra = rng.choice(
            others, size=self.num_instances - 1, replace=others.size < self.num_instances - 1
        )
        return [anchor, *map(int, extra)]

    def _index_stream(self, rng: np.random.Generator) -> Iterator[int]:
        while True:
            if self.image_anchors:
                for i in rng.permutation(len(self._identity_of)):
                    members = self._members[self._identity_of[i]]
                    yield from self._identity_images(rng, members, int(i))
            else:
                for k in rng.permutation(len(self._members)):
                    yield from self._identity_images(rng, self._members[k])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        stream = self._index_stream(rng)
        for k in range(self.iters):
            indices = [next(stream) for _ in range(self.batch_size)]
            seeds = rng.integers(0, 2**31 - 1, size=self.batch_size)
            if k >= self.skip:
                yield list(zip(indices, map(int, seeds), strict=True))
