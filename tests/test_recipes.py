"""Training recipes: what each option resolves to, and what each improvement changes."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.camera import CameraProxyLoss, camera_centred, camera_ids
from trainer.config import AUTO, RECIPES, TrainConfig


def test_recipes_fill_every_unset_option() -> None:
    for name, choices in RECIPES.items():
        config = TrainConfig(recipe=name)
        assert {k: getattr(config, k) for k in choices} == choices
    assert TrainConfig().recipe == "recommended"


def test_paper_is_the_published_method() -> None:
    paper = TrainConfig(recipe="paper")
    assert (paper.pooling, paper.eps, paper.flip, paper.refresh_every) == ("avg", 0.6, False, 0)
    assert not paper.camera_contrast and not paper.camera_centring


def test_an_explicit_option_wins_over_the_recipe() -> None:
    config = TrainConfig(recipe="paper", refresh_every=3, eps=AUTO)
    assert (config.refresh_every, config.eps, config.auto_eps) == (3, AUTO, True)
    config = TrainConfig(recipe="recommended", eps=0.55, flip=False, camera_contrast=False)
    assert (config.eps, config.auto_eps, config.flip, config.camera_contrast) == (
        0.55,
        False,
        False,
        False,
    )


def test_stored_configs_from_before_recipes_resume_as_paper() -> None:
    old = TrainConfig(recipe="paper").to_dict()
    for name in ("recipe", *RECIPES["paper"]):
        old.pop(name)
    assert TrainConfig.from_stored(old) == TrainConfig(recipe="paper")
    assert TrainConfig.from_stored(TrainConfig().to_dict()) == TrainConfig()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"recipe": "fast"}, "recipe must be one of paper, recommended"),
        ({"recipe": 3}, "recipe must be one of"),
        ({"eps": "wide"}, "eps must be a number or 'auto'"),
        ({"eps": 1.2}, "eps must be 'auto' or in"),
        ({"flip": 1}, "flip must be true or false"),
        ({"camera_contrast": "yes"}, "camera_contrast must be true or false"),
        ({"epochs": 2.5}, "epochs must be an integer"),
        ({"epochs": True}, "epochs must be an integer"),
        ({"lr": "0.1"}, "lr must be a number"),
        ({"pooling": "max"}, "pooling must be one of"),
    ],
)
def test_bad_values_name_the_option(values: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(values)


# --- camera-aware terms ------------------------------------------------------------------


def test_camera_ids_need_every_camera_and_two_of_them() -> None:
    assert camera_ids([3, 7, 3]).tolist() == [0, 1, 0]
    assert camera_ids([2, 2, 2]) is None  # one camera: nothing to be aware of
    assert camera_ids([1, None, 2]) is None
    assert camera_ids([]) is None


def test_camera_centring_removes_each_cameras_mean() -> None:
    gen = torch.Generator().manual_seed(0)
    base = F.normalize(torch.randn(12, 8, generator=gen), dim=1)
    cams = torch.tensor([0] * 6 + [1] * 6)
    shifted = base.clone()
    shifted[6:] += torch.full((8,), 2.0)  # camera 1 adds a bias
    out = camera_centred(F.normalize(shifted, dim=1), cams)
    assert torch.allclose(out.norm(dim=1), torch.ones(12))
    for c in (0, 1):
        centred = out[cams == c] - out[cams == c].mean(0)  # rows are re-normalised ...
        assert out[cams == c].mean(0).norm() < 0.25 * centred.norm(dim=1).mean()  # ... ~centred
    assert camera_centred(base, None) is base


def _oracle(x, rows, features, labels, cams, negatives, temp):
    """CAP's inter-camera loss written out sample by sample."""
    num_cams = int(cams.max()) + 1
    keys = sorted({(int(lab), int(c)) for lab, c in zip(labels, cams, strict=True)})
    proxies = torch.stack(
        [F.normalize(features[(labels == k) & (cams == c)].mean(0), dim=0) for k, c in keys]
    )
    proxy_label = torch.tensor([k for k, _ in keys])
    sizes = torch.bincount(labels)
    losses = []
    for b, r in enumerate(rows.tolist()):
        k = int(labels[r])
        if sizes[k] < 2:
            continue
        s = x[b] @ proxies.t() / temp
        pos = (proxy_label == k).nonzero().flatten()
        neg = (proxy_label != k).nonzero().flatten()
        hard = neg[s[neg].argsort(descending=True)[:negatives]]
        denom = torch.logsumexp(torch.cat([s[pos], s[hard]]), 0)
        losses.append(-(s[pos] - denom).mean())
    assert num_cams >= 2
    return torch.stack(losses).mean()


def test_camera_proxy_loss_matches_its_definition(monkeypatch: pytest.MonkeyPatch) -> None:
    import trainer.camera as camera

    monkeypatch.setattr(camera, "HARD_NEGATIVES", 3)
    gen = torch.Generator().manual_seed(1)
    features = F.normalize(torch.randn(20, 6, generator=gen), dim=1)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 4, 5, 5, 5, 6, 7, 8, 8, 9, 10])
    cams = torch.tensor([0, 1, 2, 0, 0, 1, 2, 1, 1, 0, 2, 0, 1, 1, 2, 0, 1, 2, 0, 1])
    rows = torch.tensor([0, 4, 7, 9, 12, 17])  # 9: an un-clustered instance, left out
    x = F.normalize(torch.randn(6, 6, generator=gen), dim=1).requires_grad_()
    loss = CameraProxyLoss(cams)(x, rows, features, labels)
    expected = camera.PROXY_WEIGHT * _oracle(x, rows, features, labels, cams, 3, camera.PROXY_TEMP)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert x.grad is not None and x.grad[3].abs().sum() == 0  # the un-clustered sample


def test_camera_proxy_loss_is_zero_without_clusters() -> None:
    features = F.normalize(torch.randn(5, 4), dim=1)
    x = F.normalize(torch.randn(2, 4), dim=1)
    loss = CameraProxyLoss(torch.tensor([0, 1, 0, 1, 0]))(
        x, torch.tensor([0, 3]), features, torch.arange(5)
    )
    assert loss.item() == 0.0


# --- label-free eps ------------------------------------------------------------------------


def test_effective_clusters_is_exp_entropy_of_cluster_sizes() -> None:
    import numpy as np

    from trainer.auto_eps import effective_clusters

    assert effective_clusters(np.array([0, 0, 1, 1, 2, 2])) == pytest.approx(3.0)
    assert effective_clusters(np.arange(5)) == 0.0  # singletons are not clusters
    # one giant cluster and two pairs: far fewer than three "effective" clusters
    giant = np.array([0] * 20 + [1, 1, 2, 2])
    assert 1.0 < effective_clusters(giant) < 2.0


def test_auto_eps_picks_the_grid_radius_with_the_best_score() -> None:
    from trainer.auto_eps import GRID, choose_eps
    from trainer.cluster import jaccard_distance

    gen = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(12, 32, generator=gen), dim=1)
    features = F.normalize(
        centres.repeat_interleave(8, 0) + 0.35 * torch.randn(96, 32, generator=gen), dim=1
    )
    choice = choose_eps(jaccard_distance(features, k1=10, k2=3))
    assert choice.eps in GRID and set(choice.effective_clusters) == set(GRID)
    best = max(choice.effective_clusters.values())
    assert choice.effective_clusters[choice.eps] == best
    assert choice.eps == min(e for e, s in choice.effective_clusters.items() if s == best)
    assert best > 0
