"""Tests for trainer.data.readers (layouts, detection, hostile trees) and trainer.data.images."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainer.data import (
    LAYOUTS,
    DatasetError,
    DatasetTree,
    ImageError,
    Item,
    detect_layout,
    load_rgb,
    probe_image,
    read_dataset,
    relabel,
    strip_labels,
)


def _encode(fmt: str, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (8, 16), "red" if mode == "RGB" else None).save(buf, fmt)
    return buf.getvalue()


PNG = _encode("PNG")
JPEG = _encode("JPEG")


def put(root: Path, rel: str, data: bytes = PNG) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def put_text(root: Path, rel: str, text: str) -> None:
    put(root, rel, text.encode())


def by_path(ds: DatasetTree) -> dict[tuple[str, str], Item]:
    return {(it.path, it.split): it for it in ds.items}


def labels(ds: DatasetTree) -> dict[str, tuple[int | None, int | None, str]]:
    return {it.path: (it.pid, it.camid, it.split) for it in ds.items}


def reasons(ds: DatasetTree | DatasetError) -> dict[str, str]:
    return {s.path: s.reason for s in ds.skipped}


# --------------------------------------------------------------------------- market1501


@pytest.fixture
def market(tmp_path: Path) -> Path:
    root = tmp_path / "market"
    for rel in (
        "bounding_box_train/0002_c1s1_000451_03.jpg",
        "bounding_box_train/0007_c12s3_000001_01.JPG",  # PersonX-style camera 12, upper case
        "bounding_box_train/0000_c1s1_000001_00.jpg",  # distractor outside the gallery
        "bounding_box_train/-1_c1s1_000001_00.jpg",  # junk
        "bounding_box_train/garbage.jpg",
        "query/0002_c2s1_000001_00.jpg",
        "query/0000_c2s1_000002_00.jpg",
        "bounding_box_test/0000_c3s1_000001_00.jpg",  # distractor kept in the gallery
        "bounding_box_test/-1_c3s1_000002_00.jpg",
        "bounding_box_test/0002_c3_f0046182.jpg",  # DukeMTMC name
        "bounding_box_test/0005_c0s1_000001_00.jpg",
        "gt_bbox/0002_c1s1_000451_03.jpg",
    ):
        put(root, rel)
    put_text(root, "bounding_box_train/notes.txt", "hello")
    put(root, "bounding_box_train/Thumbs.db", b"junk")
    put(root, "bounding_box_train/.DS_Store", b"junk")
    outside = put(tmp_path, "secret.jpg")
    os.symlink(outside, root / "bounding_box_test" / "0009_c1s1_000001_00.jpg")
    return root


def test_market1501(market: Path) -> None:
    assert detect_layout(market) == "market1501"
    ds = read_dataset(market)
    assert ds.layout == "market1501" and ds.root == market
    assert labels(ds) == {
        "bounding_box_train/0002_c1s1_000451_03.jpg": (2, 0, "train"),
        "bounding_box_train/0007_c12s3_000001_01.JPG": (7, 11, "train"),
        "query/0002_c2s1_000001_00.jpg": (2, 1, "query"),
        "bounding_box_test/0000_c3s1_000001_00.jpg": (0, 2, "gallery"),
        "bounding_box_test/0002_c3_f0046182.jpg": (2, 2, "gallery"),
    }
    assert reasons(ds) == {
        "bounding_box_train/-1_c1s1_000001_00.jpg": "junk identity -1",
        "bounding_box_train/0000_c1s1_000001_00.jpg": (
            "distractor identity 0 (kept in the gallery only)"
        ),
        "bounding_box_train/garbage.jpg": (
            "unparsable file name (expected e.g. 0002_c1s1_000451_03.jpg)"
        ),
        "bounding_box_train/notes.txt": "not an image (.txt)",
        "query/0000_c2s1_000002_00.jpg": "distractor identity 0 (kept in the gallery only)",
        "bounding_box_test/-1_c3s1_000002_00.jpg": "junk identity -1",
        "bounding_box_test/0005_c0s1_000001_00.jpg": (
            "camera number 0 (cameras are numbered from 1)"
        ),
        "bounding_box_test/0009_c1s1_000001_00.jpg": "symbolic link (not followed)",
    }
    assert ds.notes == ["ignored top-level entries not used by the market1501 layout: gt_bbox"]
    assert [it.split for it in ds.items] == ["train", "train", "query", "gallery", "gallery"]
    assert ds.split("train") == sorted(ds.split("train"), key=lambda it: it.path)
    assert ds.num_identities("train") == 2 and ds.num_identities() == 3
    assert ds.num_cameras() == 4 and ds.num_images("gallery") == 2
    assert ds.is_labeled() and ds.num_unlabeled() == 0
    summary = ds.summary()
    assert summary["splits"]["query"] == {
        "images": 1,
        "identities": 1,
        "cameras": 1,
        "unlabeled": 0,
    }
    assert summary["skipped"] == 8


def test_market_partial_and_wrapped(tmp_path: Path) -> None:
    put(tmp_path, "upload/Market-1501/bounding_box_train/0001_c1s1_000001_00.jpg")
    ds = read_dataset(tmp_path / "upload")
    assert ds.root == tmp_path / "upload" / "Market-1501"
    assert [it.path for it in ds.items] == ["bounding_box_train/0001_c1s1_000001_00.jpg"]
    assert ds.notes[0] == "dataset found in sub-folder Market-1501/"
    assert ds.splits == ("train",)


# --------------------------------------------------------------------------- msmt17


def test_msmt17(tmp_path: Path) -> None:
    root = tmp_path / "MSMT17_V1"
    a = "0000/0000_000_01_0303morning_0015_0.jpg"
    b = "0000/0000_001_15_0303morning_0016_1.jpg"
    c = "0001/0001_000_07_0303noon_0001_0.jpg"
    q = "0005/0005_000_03_0303noon_0003_0.jpg"
    g = "0005/0005_001_04_0303noon_0004_0.jpg"
    for rel in (a, b, "0001/badname.jpg"):
        put(root, f"train/{rel}")
    put(root, f"train/{c}")
    put(root, f"mask_test_v2/{q}")  # V2 folder names
    put(root, f"mask_test_v2/{g}")
    put(root, "train/0002/0002_000_01_0303morning_0001_0.jpg")  # not listed
    put_text(
        root,
        "list_train.txt",
        f"{a} 0\n{b} 0\n\n0001/badname.jpg 1\n0003/missing_000_01_x_0_0.jpg 3\n"
        f"{a} 0\nonlyonefield\n../escape.jpg 4\n{c} x\n",
    )
    put_text(root, "list_val.txt", f"{c} 1\n")
    put_text(root, "list_query.txt", f"{q} 5\n")
    put_text(root, "list_gallery.txt", f"{g} 5\n")
    assert detect_layout(root) == "msmt17"
    ds = read_dataset(root)
    assert labels(ds) == {
        f"train/{a}": (0, 0, "train"),
        f"train/{b}": (0, 14, "train"),
        f"train/{c}": (1, 6, "train"),
        f"mask_test_v2/{q}": (5, 2, "query"),
        f"mask_test_v2/{g}": (5, 3, "gallery"),
    }
    got = reasons(ds)
    assert got["train/0001/badname.jpg"].startswith("unparsable camera in file name")
    assert got["0003/missing_000_01_x_0_0.jpg"] == "missing file (list_train.txt line 5)"
    assert got[f"train/{a}"] == "duplicate entry (list_train.txt line 6)"
    assert got["list_train.txt:7"] == "expected 'path label' (list_train.txt line 7)"
    assert got["../escape.jpg"] == "path escapes the dataset root (..) (list_train.txt line 8)"
    assert got[f"train/{c}"] == "identity 'x' is not an integer (list_train.txt line 9)"
    assert any("1 image file(s) not named" in note for note in ds.notes)


# --------------------------------------------------------------------------- veri


def test_veri(tmp_path: Path) -> None:
    root = tmp_path / "VeRi"
    put(root, "image_train/0001_c001_00016450_0.jpg")
    put(root, "image_train/0001_c013_00016460_0.jpg")
    put(root, "image_query/0002_c002_00030600_0.jpg")
    put(root, "image_test/0002_c003_00030610_1.jpg")
    put(root, "image_test/0000_c003_00030610_1.jpg")  # 0 is an ordinary id in VeRi
    put(root, "image_test/bad_name.jpg")
    put_text(root, "name_train.txt", "0001_c001_00016450_0.jpg\n")
    assert detect_layout(root) == "veri"
    ds = read_dataset(root)
    assert labels(ds) == {
        "image_train/0001_c001_00016450_0.jpg": (1, 0, "train"),
        "image_train/0001_c013_00016460_0.jpg": (1, 12, "train"),
        "image_query/0002_c002_00030600_0.jpg": (2, 1, "query"),
        "image_test/0000_c003_00030610_1.jpg": (0, 2, "gallery"),
        "image_test/0002_c003_00030610_1.jpg": (2, 2, "gallery"),
    }
    assert "unparsable file name" in reasons(ds)["image_test/bad_name.jpg"]
    assert any("name_train.txt" in note for note in ds.notes)


# --------------------------------------------------------------------------- vehicleid


def test_vehicleid(tmp_path: Path) -> None:
    root = tmp_path / "VehicleID_V1.0"
    for name in ("0000001", "0000002", "0000010", "0000011", "0000012", "0000020", "0000030"):
        put(root, f"image/{name}.jpg")
    split = "train_test_split"
    put_text(root, f"{split}/train_list.txt", "0000001 1\n0000002 1\n0000099 2\n0000001 1\n")
    put_text(root, f"{split}/test_list_800.txt", "0000012 10\n0000010 10\n0000011 10\n0000020 11\n")
    put_text(root, f"{split}/test_list_1600.txt", "0000030 12\n")
    assert detect_layout(root) == "vehicleid"
    ds = read_dataset(root)
    assert labels(ds) == {
        "image/0000001.jpg": (1, None, "train"),
        "image/0000002.jpg": (1, None, "train"),
        "image/0000010.jpg": (10, None, "gallery"),  # first of vehicle 10 in sorted order
        "image/0000011.jpg": (10, None, "query"),
        "image/0000012.jpg": (10, None, "query"),
        "image/0000020.jpg": (11, None, "gallery"),  # single image: gallery only
    }
    assert reasons(ds) == {
        "image/0000099.jpg": "missing file (train_list.txt line 3)",
        "image/0000001.jpg": "duplicate entry (train_list.txt line 4)",
    }
    assert any("test_list_800.txt" in n and "test_list_1600.txt" in n for n in ds.notes)
    assert ds.num_cameras() == 0


def test_vehicleid_falls_back_to_smallest_test_list(tmp_path: Path) -> None:
    put(tmp_path, "image/a.jpg")
    put(tmp_path, "image/b.jpg")
    put_text(tmp_path, "train_test_split/test_list_2400.txt", "a 1\n")
    put_text(tmp_path, "train_test_split/test_list_1600.txt", "b 2\n")
    ds = read_dataset(tmp_path, "vehicleid")
    assert labels(ds) == {"image/b.jpg": (2, None, "gallery")}


# --------------------------------------------------------------------------- csv


def test_csv_manifest(tmp_path: Path) -> None:
    root = tmp_path / "csvset"
    for name in ("a.jpg", "b.png", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "unlisted.jpg"):
        rel = f"img/{name}"
        put(root, rel)
    put_text(root, "img/readme.txt", "x")
    put(tmp_path, "x.jpg")
    os.symlink(tmp_path / "x.jpg", root / "img" / "link.jpg")
    os.symlink(tmp_path, root / "linkdir")
    put_text(
        root,
        "manifest.csv",
        "\n".join(
            [
                "path,pid,camid,split,comment",
                "img/a.jpg,3,0,train,ok",  # line 2
                "img/b.png,,,,unlabeled",
                "img/c.jpg,4,1,query,",
                "img/d.jpg,abc,1,train,",  # line 5
                "img/e.jpg,5,1,val,",
                "../x.jpg,1,0,train,",
                "/etc/passwd,1,0,train,",
                "img/missing.jpg,1,0,train,",
                "img/readme.txt,1,0,train,",  # line 10
                "img/link.jpg,1,0,train,",
                "linkdir/x.jpg,1,0,train,",
                "img/f.jpg,1",
                "img/a.jpg,3,0,train,again",
                "img/f.jpg,-1,0,train,",  # line 15
                "img/f.jpg,6,-2,gallery,",
                ",,,,",
                "img\\c.jpg,4,1,Gallery,windows separators",
            ]
        )
        + "\n",
    )
    assert detect_layout(root) == "csv"
    ds = read_dataset(root)
    assert set(by_path(ds)) == {
        ("img/a.jpg", "train"),
        ("img/b.png", "train"),
        ("img/c.jpg", "query"),
        ("img/c.jpg", "gallery"),
    }
    assert by_path(ds)[("img/b.png", "train")].pid is None
    assert by_path(ds)[("img/c.jpg", "gallery")] == Item("img/c.jpg", 4, 1, "gallery")
    skipped = [(s.path, s.reason) for s in ds.skipped]
    assert skipped == [
        ("img/d.jpg", "identity 'abc' is not an integer (manifest.csv line 5)"),
        (
            "img/e.jpg",
            "unknown split 'val' (expected train, query or gallery) (manifest.csv line 6)",
        ),
        ("../x.jpg", "path escapes the dataset root (..) (manifest.csv line 7)"),
        ("/etc/passwd", "absolute path not allowed (manifest.csv line 8)"),
        ("img/missing.jpg", "missing file (manifest.csv line 9)"),
        ("img/readme.txt", "not an image (.txt) (manifest.csv line 10)"),
        ("img/link.jpg", "symbolic link (not followed) (manifest.csv line 11)"),
        (
            "linkdir/x.jpg",
            "inside 'linkdir': symbolic link (not followed) (manifest.csv line 12)",
        ),
        ("manifest.csv:13", "row has 2 fields, the header has 5 (manifest.csv line 13)"),
        ("img/a.jpg", "duplicate entry (manifest.csv line 14)"),
        ("img/f.jpg", "junk identity -1 (manifest.csv line 15)"),
        ("img/f.jpg", "negative camera id -2 (manifest.csv line 16)"),
    ]
    assert "ignored columns of manifest.csv: comment" in ds.notes
    assert "1 image file(s) not named by manifest.csv were ignored" in ds.notes


def test_csv_other_name_and_errors(tmp_path: Path) -> None:
    put(tmp_path, "a.jpg")
    put_text(tmp_path, "labels.csv", "\ufeffPath , PID\na.jpg,7\n")  # BOM, spacing, case
    put_text(tmp_path, "other.csv", "x,y\n1,2\n")  # not a manifest: no path column
    assert detect_layout(tmp_path) == "csv"
    assert labels(read_dataset(tmp_path)) == {"a.jpg": (7, None, "train")}

    put_text(tmp_path, "more.csv", "path\na.jpg\n")
    with pytest.raises(DatasetError, match="several CSV manifests"):
        read_dataset(tmp_path)

    put(tmp_path, "manifest.csv", b"path,pid\n\xff\xfe.jpg,1\n")
    with pytest.raises(DatasetError, match="not UTF-8"):
        read_dataset(tmp_path)
    put_text(tmp_path, "manifest.csv", "file,pid\na.jpg,1\n")
    with pytest.raises(DatasetError, match="no 'path' column"):
        read_dataset(tmp_path, "csv")


# --------------------------------------------------------------------------- folders


def test_folders_identities(tmp_path: Path) -> None:
    root = tmp_path / "people"
    put(root, "bob/1.jpg")
    put(root, "bob/cam2/2.webp")  # deeper levels belong to the top identity folder
    put(root, "alice/1.jpeg")
    put(root, "alice/notes.txt")
    put(root, "loose.jpg")
    (root / "empty").mkdir()
    assert detect_layout(root) == "folders"
    ds = read_dataset(root)
    assert ds.identity_names == ["alice", "bob"]
    assert labels(ds) == {
        "alice/1.jpeg": (0, None, "train"),
        "bob/1.jpg": (1, None, "train"),
        "bob/cam2/2.webp": (1, None, "train"),
    }
    assert reasons(ds) == {
        "alice/notes.txt": "not an image (.txt)",
        "loose.jpg": "image outside the identity folders",
    }


def test_folders_splits_share_identity_names(tmp_path: Path) -> None:
    put(tmp_path, "train/p1/a.jpg")
    put(tmp_path, "train/p2/a.jpg")
    put(tmp_path, "query/p3/q.jpg")
    put(tmp_path, "gallery/p3/g.jpg")
    put(tmp_path, "gallery/p1/g.jpg")
    put(tmp_path, "extra/p9/x.jpg")
    ds = read_dataset(tmp_path)
    assert ds.identity_names == ["p1", "p2", "p3"]
    assert labels(ds)["query/p3/q.jpg"] == (2, None, "query")
    assert labels(ds)["gallery/p3/g.jpg"] == (2, None, "gallery")
    assert labels(ds)["gallery/p1/g.jpg"] == (0, None, "gallery")
    assert reasons(ds) == {"extra/": "outside the train/, query/ and gallery/ folders"}


def test_folders_unlabeled_and_hostile(tmp_path: Path) -> None:
    root = tmp_path / "crops"
    put(root, "b.png")
    put(root, "a.bmp")
    put(root, "c.txt")
    put(root, "__MACOSX/._a.bmp")
    put(tmp_path, "outside/evil.jpg")
    os.symlink(tmp_path / "outside", root / "dirlink")
    os.mkfifo(root / "pipe.jpg")
    bad = os.fsencode(root) + b"/bad\xff.jpg"
    with open(bad, "wb") as fh:
        fh.write(PNG)
    put(root, "ctrl\nname.jpg")
    ds = read_dataset(root)
    assert ds.identity_names is None
    assert labels(ds) == {"a.bmp": (None, None, "train"), "b.png": (None, None, "train")}
    assert reasons(ds) == {
        "bad\ufffd.jpg": "file name is not valid UTF-8",
        "ctrl\\x0aname.jpg": "file name contains control characters",
        "c.txt": "not an image (.txt)",
        "dirlink": "symbolic link (not followed)",
        "pipe.jpg": "not a regular file",
    }
    assert not ds.is_labeled() and ds.num_unlabeled("train") == 2
    assert any("unlabeled" in note for note in ds.notes)


def test_lone_split_folder_is_not_a_wrapper(tmp_path: Path) -> None:
    put(tmp_path, "query/p1/a.jpg")
    ds = read_dataset(tmp_path)
    assert labels(ds) == {"query/p1/a.jpg": (0, None, "query")}


# --------------------------------------------------------------------------- errors


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="does not exist"):
        read_dataset(tmp_path / "nope")
    put(tmp_path, "file.jpg")
    with pytest.raises(DatasetError, match="is not a directory"):
        read_dataset(tmp_path / "file.jpg")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="is empty"):
        read_dataset(tmp_path / "empty")
    put(tmp_path, "hidden/.DS_Store")
    with pytest.raises(DatasetError, match="only hidden or system files"):
        detect_layout(tmp_path / "hidden")
    with pytest.raises(DatasetError, match="unknown layout 'coco'"):
        read_dataset(tmp_path, "coco")
    put_text(tmp_path, "junk/a.txt", "x")
    put_text(tmp_path, "junk/b.doc", "x")
    with pytest.raises(DatasetError, match=r"2 entries skipped.*a.txt: not an image") as err:
        read_dataset(tmp_path / "junk")
    assert len(err.value.skipped) == 2
    with pytest.raises(DatasetError, match="not a market1501 tree"):
        read_dataset(tmp_path / "junk", "market1501")
    put(tmp_path, "m/bounding_box_train/-1_c1s1_000001_00.jpg")
    with pytest.raises(DatasetError, match="junk identity -1"):
        read_dataset(tmp_path / "m")


def test_every_named_layout_rejects_a_foreign_tree(tmp_path: Path) -> None:
    put(tmp_path, "p1/a.jpg")
    for layout in LAYOUTS[:-1]:
        with pytest.raises(DatasetError):
            read_dataset(tmp_path, layout)
    assert read_dataset(tmp_path, "folders").num_images() == 1


def test_label_helpers(market: Path) -> None:
    ds = read_dataset(market)
    train = ds.split("train")
    stripped = strip_labels(train)
    assert [it.pid for it in stripped] == [None, None]
    assert [it.camid for it in stripped] == [it.camid for it in train]
    assert all(it.camid is None for it in strip_labels(train, keep_camid=False))
    assert [it.pid for it in relabel(ds.items)] == [1, 2, 1, 0, 1]
    with pytest.raises(ValueError, match="unknown split"):
        ds.split("test")


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("mode", ["L", "1", "RGBA", "LA", "P", "I;16"])
def test_load_rgb_png_modes(tmp_path: Path, mode: str) -> None:
    path = put(tmp_path, f"{mode.replace(';', '')}.png", _encode("PNG", mode))
    img = load_rgb(path)
    assert img.mode == "RGB" and img.size == (8, 16)


def test_load_rgb_values(tmp_path: Path) -> None:
    transparent = Image.new("RGBA", (8, 16), (0, 0, 0, 0))
    transparent.putpixel((0, 0), (0, 0, 255, 255))
    path = tmp_path / "t.png"
    transparent.save(path)
    img = load_rgb(path)
    assert img.getpixel((1, 1)) == (255, 255, 255)  # composited on white
    assert img.getpixel((0, 0)) == (0, 0, 255)
    assert load_rgb(path, background=(0, 0, 0)).getpixel((1, 1)) == (0, 0, 0)

    gray16 = tmp_path / "g16.png"
    Image.fromarray(np.full((16, 8), 60000, np.uint16)).save(gray16)
    assert load_rgb(gray16).getpixel((0, 0)) == (234, 234, 234)  # scaled, not clipped

    cmyk = put(tmp_path, "c.jpg", _encode("JPEG", "CMYK"))
    assert load_rgb(cmyk).mode == "RGB"
    assert load_rgb(io.BytesIO(JPEG)).getpixel((4, 8))[0] > 200


def test_probe_image(tmp_path: Path) -> None:
    assert probe_image(put(tmp_path, "a.jpg", JPEG)) == (8, 16)
    assert probe_image(put(tmp_path, "a.webp", _encode("WEBP"))) == (8, 16)
    assert probe_image(put(tmp_path, "png_named.jpg", PNG)) == (8, 16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90°: stored 8 x 16, shown 16 x 8
    rotated = tmp_path / "rot.jpg"
    Image.new("RGB", (8, 16)).save(rotated, exif=exif)
    assert probe_image(rotated) == (16, 8)


def test_image_errors(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"corrupt\.jpg: not a recognised image"):
        load_rgb(put(tmp_path, "corrupt.jpg", b"\x00not an image" * 10))
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "JPEG")
    truncated = put(tmp_path, "trunc.jpg", buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"trunc\.jpg: cannot decode image"):
        probe_image(truncated)
    with pytest.raises(ImageError, match="not a recognised image"):
        load_rgb(put(tmp_path, "anim.gif", _encode("GIF")))  # GIF is not accepted
    with pytest.raises(ImageError, match="too large"):
        probe_image(put(tmp_path, "big.png", PNG), max_pixels=100)
    with pytest.raises(ImageError, match="file not found"):
        load_rgb(tmp_path / "missing.jpg")
    assert issubclass(ImageError, ValueError)
