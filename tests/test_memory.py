"""Behavioural tests for the SpCL hybrid memory against a slow, literal oracle."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trainer.memory import HybridMemory


def oracle_loss(
    inputs: torch.Tensor,
    features: torch.Tensor,
    labels: torch.Tensor,
    indexes: torch.Tensor,
    temp: float,
) -> torch.Tensor:
    """The definition spelled out with loops: mean of dot/temp per present label, then CE."""
    present = sorted(set(labels.tolist()))
    losses = []
    for b in range(inputs.size(0)):
        logits = []
        for k in present:
            rows = [r for r in range(features.size(0)) if int(labels[r]) == k]
            total = sum(inputs[b] @ features[r] for r in rows)
            logits.append(total / len(rows) / temp)
        logits_t = torch.stack(logits)
        target = present.index(int(labels[indexes[b]]))
        losses.append(torch.logsumexp(logits_t, dim=0) - logits_t[target])
    return torch.stack(losses).mean()


def oracle_update(
    features: torch.Tensor, inputs: torch.Tensor, indexes: torch.Tensor, momentum: float
) -> torch.Tensor:
    """Expected memory after one update, one distinct index at a time."""
    out = features.clone()
    for r in sorted(set(indexes.tolist())):
        mean = inputs[indexes == r].mean(dim=0)
        row = momentum * features[r] + (1 - momentum) * mean
        out[r] = row / row.norm()
    return out


def make_memory(
    n: int = 12,
    d: int = 8,
    labels: list[int] | None = None,
    temp: float = 0.05,
    momentum: float = 0.2,
    seed: int = 0,
    device: str = "cpu",
) -> HybridMemory:
    gen = torch.Generator().manual_seed(seed)
    mem = HybridMemory(d, n, temp=temp, momentum=momentum)
    mem.features.copy_(F.normalize(torch.randn(n, d, generator=gen), dim=1))
    if labels is None:
        # Uneven groups over labels {0, 2, 5}: labels 1, 3, 4 have no row.
        labels = [0, 0, 0, 0, 0, 2, 2, 5, 5, 5, 0, 2][:n]
    mem.labels.copy_(torch.tensor(labels, dtype=torch.long))
    return mem.to(device)


def make_batch(b: int = 6, d: int = 8, seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, d, generator=gen), dim=1)


def test_buffers_start_as_zeros() -> None:
    mem = HybridMemory(4, 7)
    assert mem.features.shape == (7, 4) and mem.features.dtype == torch.float32
    assert mem.labels.shape == (7,) and mem.labels.dtype == torch.int64
    assert not mem.features.any() and not mem.labels.any()
    assert set(mem.state_dict()) == {"features", "labels"}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("temp", [0.05, 0.5])
def test_loss_and_grad_match_oracle(seed: int, temp: float) -> None:
    mem = make_memory(temp=temp, seed=seed)
    x = make_batch(seed=seed + 10)
    idx = torch.tensor([0, 6, 9, 3, 11, 6])
    features0 = mem.features.clone()

    x_mod = x.clone().requires_grad_(True)
    loss = mem(x_mod, idx)
    x_ref = x.double().requires_grad_(True)
    ref = oracle_loss(x_ref, features0.double(), mem.labels, idx, temp)

    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-5)

    loss.backward()
    ref.backward()
    torch.testing.assert_close(x_mod.grad.double(), x_ref.grad, rtol=1e-4, atol=1e-5)


def compact_centroids(mem: HybridMemory) -> torch.Tensor:
    k = int(mem.labels.max()) + 1
    return torch.stack([mem.features[mem.labels == c].mean(dim=0) for c in range(k)])


def test_empty_labels_are_excluded_not_zero_logits() -> None:
    """Labels {0, 2, 5} must give the same loss as the compact labels {0, 1, 2}."""
    x = make_batch(b=4)
    idx = torch.tensor([0, 6, 9, 3])
    sparse = make_memory()
    compact = make_memory()
    compact.labels.copy_(torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 2, 2, 0, 1]))
    loss_sparse = sparse(x, idx)
    torch.testing.assert_close(loss_sparse, compact(x, idx))
    # Giving the 3 empty labels a logit of 0 instead would change the loss noticeably.
    logits = x @ compact_centroids(compact).t() / sparse.temp
    padded = F.cross_entropy(torch.cat([logits, torch.zeros(4, 3)], dim=1), compact.labels[idx])
    assert abs(float(padded) - float(loss_sparse)) > 1e-3


def test_update_after_backward_matches_formula_with_duplicates() -> None:
    mem = make_memory(momentum=0.3)
    features0 = mem.features.clone()
    x = make_batch(b=6, seed=5)
    idx = torch.tensor([3, 7, 3, 1, 3, 7])
    x_req = x.clone().requires_grad_(True)

    loss = mem(x_req, idx)
    torch.testing.assert_close(mem.features, features0)  # forward alone changes nothing
    loss.backward()

    expected = oracle_update(features0, x, idx, 0.3)
    torch.testing.assert_close(mem.features, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mem.features.norm(dim=1), torch.ones(12))
    untouched = [r for r in range(12) if r not in {1, 3, 7}]
    assert torch.equal(mem.features[untouched], features0[untouched])
    assert mem.features.grad is None and not mem.features.requires_grad
    assert torch.equal(mem.labels, make_memory().labels)


def test_gradient_uses_pre_update_memory() -> None:
    """The gradient must come from the centroids seen in forward, not the updated rows."""
    mem = make_memory()
    features0 = mem.features.clone()
    x = make_batch(b=4, seed=7)
    idx = torch.tensor([0, 5, 7, 7])
    x_req = x.clone().requires_grad_(True)
    mem(x_req, idx).backward()
    x_ref = x.double().requires_grad_(True)
    oracle_loss(x_ref, features0.double(), mem.labels, idx, mem.temp).backward()
    torch.testing.assert_close(x_req.grad.double(), x_ref.grad, rtol=1e-4, atol=1e-5)


def test_momentum_zero_replaces_rows_with_normalised_mean() -> None:
    mem = make_memory(momentum=0.0)
    x = make_batch(b=3, seed=3)
    idx = torch.tensor([4, 4, 8])
    mem(x.clone().requires_grad_(True), idx).backward()
    torch.testing.assert_close(mem.features[4], F.normalize(x[:2].mean(0), dim=0))
    torch.testing.assert_close(mem.features[8], x[2])


def test_no_backward_no_update() -> None:
    mem = make_memory()
    features0 = mem.features.clone()
    x = make_batch()
    idx = torch.arange(6)
    mem(x, idx)
    mem(x.clone().requires_grad_(True), idx)  # graph built but never backpropagated
    with torch.no_grad():
        mem(x.clone().requires_grad_(True), idx)
    assert torch.equal(mem.features, features0)


def test_perfect_memory_gives_near_zero_loss() -> None:
    d, n = 8, 8
    mem = HybridMemory(d, n, temp=0.05)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    mem.features.copy_(torch.eye(d)[labels])  # orthogonal, well-separated clusters
    mem.labels.copy_(labels)
    idx = torch.arange(n)
    loss = mem(mem.features.clone(), idx)
    assert float(loss) < 1e-7


def test_tiny_temperature_is_stable() -> None:
    mem = make_memory(temp=1e-4)
    x = make_batch().requires_grad_(True)
    loss = mem(x, torch.tensor([0, 6, 9, 3, 11, 6]))
    assert torch.isfinite(loss)
    assert loss.item() > 1.0  # random features: huge logits, finite and large loss
    loss.backward()
    assert torch.isfinite(x.grad).all()
    assert torch.isfinite(mem.features).all()


def test_bfloat16_autocast_gives_float32_loss() -> None:
    mem = make_memory()
    x = make_batch().to(torch.bfloat16)
    idx = torch.tensor([0, 6, 9, 3, 11, 6])
    reference = mem(x.float(), idx)
    x_req = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = mem(x_req, idx)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, reference, rtol=1e-6, atol=1e-6)
    loss.backward()
    assert x_req.grad is not None and x_req.grad.dtype == torch.bfloat16
    assert torch.isfinite(x_req.grad.float()).all()
    assert mem.features.dtype == torch.float32


def test_two_calls_summed_update_both() -> None:
    mem = make_memory()
    features0 = mem.features.clone()
    src = make_batch(b=2, seed=20)
    tgt = make_batch(b=3, seed=21)
    src_idx = torch.tensor([0, 1])
    tgt_idx = torch.tensor([8, 9, 9])
    src_req, tgt_req = src.clone().requires_grad_(True), tgt.clone().requires_grad_(True)

    loss = mem(src_req, src_idx) + mem(tgt_req, tgt_idx)
    loss.backward()

    expected = oracle_update(oracle_update(features0, src, src_idx, 0.2), tgt, tgt_idx, 0.2)
    torch.testing.assert_close(mem.features, expected, rtol=1e-6, atol=1e-6)
    assert src_req.grad is not None and tgt_req.grad is not None
    # Both gradients come from the memory as it was before either update.
    tgt_ref = tgt.double().requires_grad_(True)
    oracle_loss(tgt_ref, features0.double(), mem.labels, tgt_idx, 0.05).backward()
    torch.testing.assert_close(tgt_req.grad.double(), tgt_ref.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("inputs", "indexes", "match"),
    [
        (torch.zeros(4), torch.arange(4), "shape"),
        (torch.zeros(4, 8, 1), torch.arange(4), "shape"),
        (torch.zeros(4, 7), torch.arange(4), "shape"),
        (torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), "at least one"),
        (torch.zeros(4, 8), torch.arange(3), "indexes must have shape"),
        (torch.zeros(4, 8), torch.arange(4).view(2, 2), "indexes must have shape"),
        (torch.zeros(4, 8), torch.tensor([0, 1, 2, 12]), "range|lie in"),
        (torch.zeros(4, 8), torch.tensor([0, -1, 2, 3]), "lie in"),
        (torch.zeros(4, 8), torch.zeros(4), "integer"),
        (torch.zeros(4, 8, dtype=torch.long), torch.arange(4), "floating"),
    ],
)
def test_forward_validation(inputs: torch.Tensor, indexes: torch.Tensor, match: str) -> None:
    mem = make_memory()
    with pytest.raises(ValueError, match=match):
        mem(inputs, indexes)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temp": 0.0}, "temp"),
        ({"temp": -0.1}, "temp"),
        ({"temp": float("nan")}, "temp"),
        ({"momentum": 1.0}, "momentum"),
        ({"momentum": -0.1}, "momentum"),
        ({"momentum": float("nan")}, "momentum"),
    ],
)
def test_constructor_validation(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        HybridMemory(8, 12, **kwargs)


def test_hyperparameter_assignment_is_validated() -> None:
    mem = make_memory()
    with pytest.raises(ValueError, match="temp"):
        mem.temp = 0.0
    with pytest.raises(ValueError, match="momentum"):
        mem.momentum = 1.5
    mem.momentum = 0.0
    assert mem.momentum == 0.0


def test_negative_memory_label_rejected() -> None:
    mem = make_memory()
    mem.labels[3] = -1
    with pytest.raises(ValueError, match="non-negative"):
        mem(make_batch(b=2), torch.tensor([0, 1]))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu() -> None:
    cpu = make_memory()
    gpu = make_memory(device="cuda")
    x = make_batch(b=6, seed=30)
    idx = torch.tensor([0, 6, 9, 3, 6, 6])

    x_cpu = x.clone().requires_grad_(True)
    x_gpu = x.cuda().requires_grad_(True)
    loss_cpu = cpu(x_cpu, idx)
    loss_gpu = gpu(x_gpu, idx.cuda())
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-5, atol=1e-5)
    loss_cpu.backward()
    loss_gpu.backward()
    torch.testing.assert_close(x_gpu.grad.cpu(), x_cpu.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gpu.features.cpu(), cpu.features, rtol=1e-5, atol=1e-6)

    with torch.autocast("cuda", dtype=torch.float16):
        half = gpu(x.cuda().half(), idx.cuda())
    assert half.dtype == torch.float32 and torch.isfinite(half)
