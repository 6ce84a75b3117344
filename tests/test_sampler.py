"""IdentityBatchSampler: SpCL's identity sampling, exact epoch length, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.sampler import IdentityBatchSampler


def batches(sampler: IdentityBatchSampler) -> list[list[tuple[int, int]]]:
    return list(iter(sampler))


def test_epoch_is_exactly_iters_batches() -> None:
    pids = np.repeat(np.arange(10), 5)
    sampler = IdentityBatchSampler(pids, None, batch_size=16, num_instances=4, iters=7)
    out = batches(sampler)
    assert len(sampler) == 7 and len(out) == 7
    assert all(len(b) == 16 for b in out)
    indices = [i for b in out for i, _ in b]
    assert min(indices) >= 0 and max(indices) < 50


def test_groups_anchor_plus_other_cameras() -> None:
    # Identity p has 3 images in camera 0 and 3 in camera 1.
    pids = np.repeat(np.arange(6), 6)
    cams = np.tile([0, 0, 0, 1, 1, 1], 6)
    sampler = IdentityBatchSampler(pids, cams, batch_size=24, num_instances=4, iters=5, seed=3)
    stream = [i for b in batches(sampler) for i, _ in b]
    groups = [stream[k : k + 4] for k in range(0, len(stream), 4)]
    for group in groups:
        assert len({pids[i] for i in group}) == 1  # one identity per group of num_instances
        anchor_cam = cams[group[0]]
        # Other cameras exist for every identity, so all extra images come from them.
        assert all(cams[i] != anchor_cam for i in group[1:])
        assert group[0] not in group[1:]


def test_same_camera_fallback_and_singletons() -> None:
    pids = np.array([0, 0, 0, 1, 2, 2])
    cams = np.array([0, 0, 0, 0, 1, 1])
    sampler = IdentityBatchSampler(pids, cams, batch_size=3, num_instances=3, iters=40, seed=0)
    stream = [i for b in batches(sampler) for i, _ in b]
    # Walk the stream group by group: identity 1 is a singleton (one image), others give 3.
    k = 0
    while k < len(stream) - 3:
        pid = pids[stream[k]]
        size = 1 if pid == 1 else 3
        group = stream[k : k + size]
        assert {pids[i] for i in group} == {pid}
        assert stream[k] not in group[1:]
        k += size
    assert 3 in stream


def test_no_camera_ids_and_replacement() -> None:
    pids = np.array([0, 0, 1, 1, 1, 1, 1])
    sampler = IdentityBatchSampler(pids, None, batch_size=8, num_instances=4, iters=3)
    for batch in batches(sampler):
        groups = [batch[k : k + 4] for k in (0, 4)]
        for group in groups:
            assert len({pids[i] for i, _ in group}) == 1


def test_reproducible_per_epoch() -> None:
    pids = np.repeat(np.arange(20), 4)
    a = IdentityBatchSampler(pids, None, batch_size=16, num_instances=4, iters=5, seed=7)
    b = IdentityBatchSampler(pids, None, batch_size=16, num_instances=4, iters=5, seed=7)
    a.set_epoch(3)
    b.set_epoch(3)
    assert batches(a) == batches(b)
    b.set_epoch(4)
    assert batches(a) != batches(b)
    seeds = [s for batch in batches(a) for _, s in batch]
    assert len(set(seeds)) > len(seeds) * 0.95  # augmentation seeds differ per sample


def test_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        IdentityBatchSampler([], None, 4, 2, 1)
    with pytest.raises(ValueError, match=">= 1"):
        IdentityBatchSampler([0, 1], None, 0, 2, 1)


def test_image_anchors_draw_identities_by_their_size() -> None:
    """Every image anchors once per pass: a 10-image cluster comes up ten times as often as a
    singleton, where label-uniform batches would give it one turn per pass."""
    pids = [0] * 10 + list(range(1, 41))  # one cluster, 40 singletons
    by_label = IdentityBatchSampler(pids, None, 10, 4, 50, seed=2)
    by_image = IdentityBatchSampler(pids, None, 10, 4, 50, seed=2, image_anchors=True)
    share = {}
    for name, sampler in (("label", by_label), ("image", by_image)):
        drawn = np.array([i for batch in sampler for i, _ in batch])
        share[name] = float((drawn < 10).mean())
    # per pass: label-uniform 4 of 44 images; image-anchored 10 × 4 of 80
    assert share["label"] == pytest.approx(4 / 44, abs=0.03)
    assert share["image"] == pytest.approx(40 / 80, abs=0.05)
