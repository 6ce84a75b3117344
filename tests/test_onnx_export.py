"""``reid export``: the ONNX graph gives the PyTorch model's embeddings on real image files.

Parity is measured the way a deployment would see it: the same JPEGs through the model's own
test transform, embedded by PyTorch (:class:`Embedder`, as ``/search`` does) and by ONNX Runtime,
compared element-wise, by cosine and by the top-10 ranking of a small gallery.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import onnx
import pytest
import torch

from trainer.cli import main
from trainer.data.transforms import eval_transform
from trainer.embedder import Embedder
from trainer.features import ImageDataset
from trainer.models.dsbn import convert_dsbn, is_dsbn
from trainer.models.encoder import Encoder
from trainer.models.export import save_model
from trainer.models.onnx_export import export_onnx
from trainer.onnx_embedder import OnnxEmbedder, parity
from trainer.synth import generate_dataset

H, W = 64, 32


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("onnx-images")
    generate_dataset(root, 16, 2, "night", 5, height=H * 2, width=W * 2, images_per_camera=4)
    return root / "bounding_box_test"


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory, images: Path) -> Path:
    """A MobileNetV2 whose embeddings tell images apart (a random one maps every image to about
    the same vector, and rankings of ties say nothing): its BN statistics are calibrated on the
    images, as adaptation would; then DSBN with a shifted source branch, and flip on."""
    torch.manual_seed(3)
    encoder = Encoder("mobilenet_v2")
    for module in encoder.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = None  # a plain average over the calibration batch
    with torch.no_grad():
        encoder.train()(_batch(Embedder(encoder, eval_transform(H, W), False, "cpu", {}), images))
    convert_dsbn(encoder.eval())
    for module in encoder.modules():
        if is_dsbn(module):
            module.source.running_mean.add_(0.05 * module.source.running_var.sqrt())
    path = tmp_path_factory.mktemp("onnx-model") / "model.pt"
    save_model(path, encoder, height=H, width=W, flip=True)
    return path


def _batch(embedder: Embedder, folder: Path) -> torch.Tensor:
    paths = sorted(p.name for p in folder.iterdir() if p.suffix == ".jpg")
    dataset = ImageDataset(folder, paths, embedder.transform)
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


@pytest.mark.parametrize("domain", ["target", "source"])
def test_onnx_embeddings_match_pytorch_on_real_images(
    model_file: Path, images: Path, tmp_path: Path, domain: str
) -> None:
    exported = export_onnx(model_file, tmp_path / "model.onnx", domain=domain)
    reference = Embedder.load(model_file, domain=domain)
    batch = _batch(reference, images)
    assert len(batch) >= 30
    torch_emb, onnx_emb = reference.embed(batch), OnnxEmbedder.load(exported.path).embed(batch)
    check = parity(torch_emb, onnx_emb)
    assert check.max_abs < 1e-4 and check.min_cosine > 0.99999, check
    assert torch.allclose(onnx_emb.norm(dim=1), torch.ones(len(batch)), atol=1e-5)
    query, gallery = slice(0, 5), slice(5, None)  # the same top-10 for every query
    top = [(e[query] @ e[gallery].T).topk(10, dim=1).indices for e in (torch_emb, onnx_emb)]
    assert torch.equal(top[0], top[1])


def test_onnx_contract_names_shapes_and_metadata(model_file: Path, tmp_path: Path) -> None:
    exported = export_onnx(model_file, tmp_path / "m.onnx", opset=13)
    proto = onnx.load(exported.path)
    (graph_in,), (graph_out,) = proto.graph.input, proto.graph.output
    assert graph_in.name == "images" and graph_out.name == "embeddings"
    assert graph_in.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    dims = graph_in.type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, H, W]  # dynamic batch
    assert graph_out.type.tensor_type.shape.dim[1].dim_value == 1280
    assert proto.opset_import[0].version == 13
    meta = OnnxEmbedder.load(exported.path).meta
    assert (meta["height"], meta["width"], meta["feature_dim"], meta["arch"]) == (
        H,
        W,
        1280,
        "mobilenet_v2",
    )
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and len(meta["std"]) == 3
    assert meta["flip"] is True
    assert meta["source_sha256"] == hashlib.sha256(model_file.read_bytes()).hexdigest()
    embedder = OnnxEmbedder.load(exported.path)
    for n in (1, 7):  # any batch size
        assert embedder.embed(torch.randn(n, 3, H, W)).shape == (n, 1280)


def test_fp16_export_keeps_float32_io_and_stays_close(
    model_file: Path, images: Path, tmp_path: Path
) -> None:
    full = export_onnx(model_file, tmp_path / "fp32.onnx")
    half = export_onnx(model_file, tmp_path / "fp16.onnx", fp16=True)
    assert half.size_bytes < 0.6 * full.size_bytes and half.metadata["precision"] == "fp16"
    proto = onnx.load(half.path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert proto.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    reference = Embedder.load(model_file)
    batch = _batch(reference, images)
    check = parity(reference.embed(batch), OnnxEmbedder.load(half.path).embed(batch))
    # half precision is an approximation (a trained model gives about 0.999; this calibrated
    # random one has a wider activation range): close, not equal
    assert check.min_cosine > 0.97, check


def test_export_refuses_bad_input_and_leaves_nothing(model_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "never.onnx"
    with pytest.raises(ValueError, match="opset must be >= 11"):
        export_onnx(model_file, out, opset=9)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="corrupt or not a model"):
        export_onnx(junk, out)
    assert list(tmp_path.iterdir()) == [junk]  # no output, no temp file left


def test_reid_export_cli(
    model_file: Path, images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "cli.onnx"
    argv = ["export", "--model", str(model_file), "--format", "onnx", "--out", str(out)]
    assert main([*argv, "--opset", "17", "--check-images", str(images)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "opset 17, fp32, 1280-d" in printed
    assert "images of" in printed and "min cosine 1.0000" in printed
    assert main([*argv, "--fp16"]) == 0 and "fp16" in capsys.readouterr().out
    for bad, message in (
        (["--model", str(tmp_path / "missing.pt")], "does not exist"),
        (["--opset", "9"], "opset must be >= 11"),
    ):
        with pytest.raises(SystemExit) as exit_info:
            main([*argv, *bad])
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err


def test_the_onnx_engine_embeds_a_folder_like_pytorch(model_file: Path, images: Path) -> None:
    paths = sorted(p.name for p in images.iterdir() if p.suffix == ".jpg")
    reference = Embedder.load(model_file).features(images, paths, batch_size=8)
    onnx = Embedder.load(model_file, engine="onnx")
    assert onnx.engine == "onnx" and model_file.with_suffix(".onnx").is_file()
    ours = onnx.features(images, paths, batch_size=8)
    assert parity(reference, ours).max_abs < 1e-4
    top = [(e[:5] @ e[5:].T).topk(10, dim=1).indices for e in (reference, ours)]
    assert torch.equal(top[0], top[1])
    assert Embedder.load(model_file, engine="auto").engine in ("torch", "onnx")  # timed here
    source = Embedder.load(model_file, domain="source", engine="onnx")
    assert source.runtime.meta["domain"] == "source"  # its own export: model.source.onnx
    assert model_file.with_suffix(".source.onnx").is_file()


def test_engine_errors(model_file: Path) -> None:
    with pytest.raises(ValueError, match="engine must be one of"):
        Embedder.load(model_file, engine="tensorrt")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="runs on the CPU"):
        Embedder.load(model_file, "cuda", engine="onnx")


def test_an_export_follows_a_newer_model_file(model_file: Path, tmp_path: Path) -> None:
    import os

    from trainer.models.onnx_export import exported_next_to

    model = tmp_path / "model.pt"
    model.write_bytes(model_file.read_bytes())
    first = exported_next_to(model)
    before = OnnxEmbedder.load(first).meta["source_sha256"]
    assert exported_next_to(model).stat().st_mtime_ns == first.stat().st_mtime_ns  # reused
    torch.manual_seed(9)
    save_model(model, Encoder("mobilenet_v2").eval(), height=H, width=W)
    os.utime(model, (first.stat().st_mtime + 5,) * 2)
    assert OnnxEmbedder.load(exported_next_to(model)).meta["source_sha256"] != before
