"""Readers for the usual re-identification dataset layouts.

The same readers serve the trainer CLI and the HTTP upload API, which extracts an archive and
reads whatever tree it produced. So they treat the tree as untrusted:

- they only list files and parse names and text manifests: no image is decoded here (that is
  the caller's separate, costly validation step, see ``trainer.data.images.probe_image``);
- symbolic links are never followed (a link inside an upload could point anywhere on the
  host), neither while walking directories nor when a manifest names a path through one;
- manifest paths must stay inside the root: absolute paths and ``..`` are refused;
- every file that is not used is reported as a ``Skipped`` entry with a human readable
  reason, so the user learns what was dropped and why;
- hidden and system entries (dotfiles, ``__MACOSX``, ``Thumbs.db``, ``desktop.ini``) are
  ignored silently: archives made on macOS or Windows are full of them and they never hold
  data;
- results are sorted, so the same tree always yields the same dataset.

Identity numbers (``Item.pid``) are only comparable within one dataset and, for the public
benchmarks, within the training split or within query + gallery: MSMT17 and VehicleID number
their test identities from 0 again. Use ``relabel`` to get contiguous training labels.
"""

from __future__ import annotations

import csv
import os
import re
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

__all__ = [
    "IMAGE_EXTENSIONS",
    "LAYOUTS",
    "SPLITS",
    "DatasetError",
    "DatasetTree",
    "Item",
    "Skipped",
    "detect_layout",
    "read_dataset",
    "relabel",
    "strip_labels",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})
SPLITS = ("train", "query", "gallery")
LAYOUTS = ("market1501", "msmt17", "veri", "vehicleid", "csv", "folders")

# Labels end up in int64 tensors and int32 index structures; anything larger is hostile input.
_MAX_LABEL = 2**31 - 1
# How many single-folder wrappers (``upload.zip`` -> ``Market-1501-v15.09.15/``) to look through.
_MAX_WRAPPERS = 8
_IGNORED_NAMES = frozenset({"__macosx", "thumbs.db", "desktop.ini"})
_INT_RE = re.compile(r"-?[0-9]{1,12}")
_CAM_NAME_RE = re.compile(r"(-?[0-9]+)_c([0-9]+)")
_TEST_LIST_RE = re.compile(r"test_list_([0-9]{1,9})\.txt")
_MARKET_DIRS = (
    ("bounding_box_train", "train"),
    ("query", "query"),
    ("bounding_box_test", "gallery"),
)
_VERI_DIRS = (("image_train", "train"), ("image_query", "query"), ("image_test", "gallery"))
_MSMT_EXAMPLE = "0000_000_01_0303morning_0015_0.jpg"
_MSMT_TRAIN_ROOTS = ("", "train", "mask_train_v2")
_MSMT_TEST_ROOTS = ("", "test", "mask_test_v2")
_MSMT_LISTS = (
    ("list_train.txt", "train", _MSMT_TRAIN_ROOTS),
    ("list_val.txt", "train", _MSMT_TRAIN_ROOTS),
    ("list_query.txt", "query", _MSMT_TEST_ROOTS),
    ("list_gallery.txt", "gallery", _MSMT_TEST_ROOTS),
)
_CSV_COLUMNS = ("path", "pid", "camid", "split")
_LINK_REASON = "symbolic link (not followed)"


class DatasetError(ValueError):
    """A tree that cannot be read as a dataset; the message is meant for the end user.

    ``skipped`` holds what was dropped before giving up, so an API can show the details.
    """

    def __init__(self, message: str, skipped: Iterable[Skipped] = ()) -> None:
        super().__init__(message)
        self.skipped: list[Skipped] = list(skipped)


@dataclass(frozen=True, slots=True)
class Item:
    """One image: where it is and what is known about it."""

    path: str  # relative to DatasetTree.root, POSIX separators
    pid: int | None  # identity; None when unlabeled
    camid: int | None  # 0-based camera index; None when unknown
    split: str  # "train" | "query" | "gallery"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A file (or manifest line) that was not used, and why."""

    path: str
    reason: str


@dataclass
class DatasetTree:
    """A dataset folder as read: its usable items plus everything that was dropped (the name
    keeps it apart from the service's ``Dataset`` row).

    ``root`` is the directory the item paths are relative to; it can be a sub-folder of the
    directory given to ``read_dataset`` when that only wrapped the dataset (see ``notes``).
    ``identity_names[pid]`` is the folder name of an identity (``folders`` layout only).
    """

    root: Path
    layout: str
    items: list[Item]
    skipped: list[Skipped] = field(default_factory=list)
    identity_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Item]:
        """Items of one split, sorted by path."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {', '.join(SPLITS)}")
        return [item for item in self.items if item.split == name]

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits that hold at least one item, in train, query, gallery order."""
        present = {item.split for item in self.items}
        return tuple(name for name in SPLITS if name in present)

    def _select(self, split: str | None) -> list[Item]:
        return self.items if split is None else self.split(split)

    def num_images(self, split: str | None = None) -> int:
        return len(self._select(split))

    def num_identities(self, split: str | None = None) -> int:
        """Distinct labelled identities (unlabeled items do not count)."""
        return len({item.pid for item in self._select(split) if item.pid is not None})

    def num_cameras(self, split: str | None = None) -> int:
        """Distinct known cameras (items without a camera do not count)."""
        return len({item.camid for item in self._select(split) if item.camid is not None})

    def num_unlabeled(self, split: str | None = None) -> int:
        return sum(item.pid is None for item in self._select(split))

    def is_labeled(self, split: str | None = None) -> bool:
        """True when the selection is non-empty and every item has an identity."""
        items = self._select(split)
        return bool(items) and all(item.pid is not None for item in items)

    def summary(self) -> dict[str, Any]:
        """JSON-ready counts for logs, the CLI and the API."""
        return {
            "root": str(self.root),
            "layout": self.layout,
            "images": len(self.items),
            "splits": {
                name: {
                    "images": self.num_images(name),
                    "identities": self.num_identities(name),
                    "cameras": self.num_cameras(name),
                    "unlabeled": self.num_unlabeled(name),
                }
                for name in self.splits
            },
            "skipped": len(self.skipped),
            "notes": list(self.notes),
        }


def strip_labels(items: Iterable[Item], *, keep_camid: bool = True) -> list[Item]:
    """The items with their identities removed: how a labelled set is used as a target.

    Camera ids are not identity labels and are kept unless ``keep_camid`` is False.
    """
    return [replace(item, pid=None, camid=item.camid if keep_camid else None) for item in items]


def relabel(items: Iterable[Item]) -> list[Item]:
    """The items with identities renumbered 0..K-1 in increasing order (None stays None).

    Classifiers and memory banks index classes by label, so the sparse benchmark numbers
    (Market-1501 training ids run from 2 to 1500 with gaps) must be made contiguous.
    """
    items = list(items)
    pids = sorted({it.pid for it in items if it.pid is not None})
    mapping = {pid: i for i, pid in enumerate(pids)}
    return [it if it.pid is None else replace(it, pid=mapping[it.pid]) for it in items]


# --------------------------------------------------------------------------- tree walking


def _show(text: str, limit: int = 80) -> str:
    """A printable, bounded rendering of a file name or manifest value for messages."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[: limit + 1])
    return text if len(text) <= limit else text[:limit] + "…"


def _is_ignored(name: str) -> bool:
    return name.startswith(".") or name.lower() in _IGNORED_NAMES


def _bad_name(name: str) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        return "file name contains control characters"
    return None


def _kind(entry: os.DirEntry[str]) -> str:
    """'dir', 'file', 'link' or 'other', without following links."""
    if entry.is_symlink():
        return "link"
    if entry.is_dir(follow_symlinks=False):
        return "dir"
    if entry.is_file(follow_symlinks=False):
        return "file"
    return "other"


def _kind_reason(kind: str) -> str:
    return _LINK_REASON if kind == "link" else "not a regular file"


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base else name


def _image_reason(rel: str) -> str | None:
    ext = os.path.splitext(rel.rsplit("/", 1)[-1])[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return None
    return f"not an image ({ext})" if ext else "not an image (no extension)"


class _Scan:
    """Everything below one directory of the root, found without following links."""

    def __init__(self) -> None:
        self.files: list[str] = []  # regular files, any extension
        self.problems: dict[str, str] = {}  # rel path -> why it cannot be used
        self.ignored: set[str] = set()  # hidden / system entries
        self.named: set[str] = set()  # files that a lookup found (manifest layouts)
        self._fileset: set[str] | None = None

    def lookup(self, rel: str) -> str | None:
        """Why ``rel`` (a cleaned relative path) is not a usable file, or None if it is."""
        if self._fileset is None:
            self._fileset = set(self.files)
        if rel in self._fileset:
            self.named.add(rel)
            return None
        if "." in self.problems:
            return self.problems["."]
        parts = rel.split("/")
        for i in range(1, len(parts) + 1):
            prefix = "/".join(parts[:i])
            if prefix in self.ignored:
                return "hidden or system file (ignored)"
            reason = self.problems.get(prefix)
            if reason is not None:
                return reason if i == len(parts) else f"inside {prefix!r}: {reason}"
        return "missing file"

    def has(self, rel: str) -> bool:
        return self.lookup(rel) is None


def _scan(root: Path, start: str = "") -> _Scan:
    """Walk ``root/start`` iteratively (no recursion limit), never following links."""
    out = _Scan()
    stack = [start]
    while stack:
        rel_dir = stack.pop()
        try:
            with os.scandir(root / rel_dir if rel_dir else root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            out.problems[rel_dir or "."] = f"unreadable directory ({err.strerror or err})"
            continue
        subdirs = []
        for entry in entries:
            rel = _join(rel_dir, entry.name)
            if _is_ignored(entry.name):
                out.ignored.add(rel)
                continue
            bad = _bad_name(entry.name)
            if bad is not None:
                out.problems[_show(rel, 300)] = bad
                continue
            try:
                kind = _kind(entry)
            except OSError as err:
                out.problems[rel] = f"unreadable entry ({err.strerror or err})"
                continue
            if kind == "dir":
                subdirs.append(rel)
            elif kind == "file":
                out.files.append(rel)
            else:
                out.problems[rel] = _kind_reason(kind)
        stack.extend(reversed(subdirs))
    out.files.sort()
    return out


def _list_top(root: Path) -> tuple[dict[str, str], int]:
    """Kinds of the visible entries directly in ``root`` and the number of ignored ones."""
    kinds: dict[str, str] = {}
    ignored = 0
    try:
        with os.scandir(root) as it:
            for entry in it:
                if _is_ignored(entry.name):
                    ignored += 1
                elif _bad_name(entry.name) is not None:
                    kinds[entry.name] = "bad"
                else:
                    try:
                        kinds[entry.name] = _kind(entry)
                    except OSError:
                        kinds[entry.name] = "other"
    except OSError as err:
        raise DatasetError(f"cannot read directory {root}: {err.strerror or err}") from err
    return dict(sorted(kinds.items())), ignored


def _clean_rel(value: str) -> tuple[str | None, str]:
    """A manifest path made safe: (relative POSIX path, "") or (None, why not)."""
    text = value.strip().replace("\\", "/")
    if not text:
        return None, "empty path"
    if any(ord(c) < 32 or ord(c) == 127 for c in text):
        return None, "path contains control characters"
    if text.startswith("/") or re.match(r"[A-Za-z]:", text):
        return None, "absolute path not allowed"
    parts = [part for part in text.split("/") if part not in ("", ".")]
    if ".." in parts:
        return None, "path escapes the dataset root (..)"
    if not parts:
        return None, "empty path"
    return "/".join(parts), ""


def _parse_int(text: str) -> int | None:
    """ASCII decimal integers only (``int`` would also take '1_000', '+3' or Arabic digits)."""
    return int(text) if _INT_RE.fullmatch(text) else None


def _read_text_lines(path: Path, name: str) -> list[str]:
    try:
        with open(path, encoding="utf-8-sig") as fh:
            return fh.read().splitlines()
    except UnicodeDecodeError as err:
        raise DatasetError(f"{name} is not UTF-8 text") from err
    except OSError as err:
        raise DatasetError(f"cannot read {name}: {err.strerror or err}") from err


# --------------------------------------------------------------------------- readers


class _Builder:
    def __init__(self) -> None:
        self.items: list[Item] = []
        self.skipped: list[Skipped] = []
        self.notes: list[str] = []
        self.identity_names: list[str] | None = None

    def skip(self, path: str, reason: str) -> None:
        self.skipped.append(Skipped(_show(path, 300), reason))

    def add(self, path: str, pid: int | None, camid: int | None, split: str) -> None:
        self.items.append(Item(path, pid, camid, split))

    def take_problems(self, scan: _Scan) -> None:
        for path, reason in scan.problems.items():
            self.skipped.append(Skipped(path, reason))

    def note_unused(self, top: Mapping[str, str], used: Iterable[str], layout: str) -> None:
        used = set(used)
        unused = [name for name in top if name not in used]
        if unused:
            shown = ", ".join(_show(n, 60) for n in unused[:10])
            more = f" (+{len(unused) - 10} more)" if len(unused) > 10 else ""
            self.notes.append(
                f"ignored top-level entries not used by the {layout} layout: {shown}{more}"
            )

    def note_unlisted(self, scan: _Scan, manifest: str) -> None:
        count = sum(_image_reason(f) is None and f not in scan.named for f in scan.files)
        if count:
            self.notes.append(f"{count} image file(s) not named by {manifest} were ignored")


def _read_camera_dirs(
    root: Path,
    top: Mapping[str, str],
    dirs: tuple[tuple[str, str], ...],
    layout: str,
    example: str,
    distractor_zero: bool,
) -> _Builder:
    """Market-1501 / DukeMTMC / PersonX / VehicleX / VeRi: ``PID_cCAM...`` names per split dir."""
    b = _Builder()
    present = [(d, split) for d, split in dirs if top.get(d) == "dir"]
    for d, _ in dirs:
        if top.get(d) in ("link", "other"):
            b.skip(d, _kind_reason(top[d]))
    if not present:
        wanted = ", ".join(f"{d}/" for d, _ in dirs)
        raise DatasetError(f"not a {layout} tree: none of {wanted} found in {root}", b.skipped)
    for d, split in present:
        scan = _scan(root, d)
        b.take_problems(scan)
        for rel in scan.files:
            why = _image_reason(rel)
            match = _CAM_NAME_RE.match(rel.rsplit("/", 1)[-1])
            if why is None and match is None:
                why = f"unparsable file name (expected e.g. {example})"
            if why is not None:
                b.skip(rel, why)
                continue
            assert match is not None
            pid_text, cam_text = match.groups()
            if len(pid_text) > 10 or len(cam_text) > 10:
                b.skip(rel, "identity or camera number out of range")
                continue
            pid, cam = int(pid_text), int(cam_text)
            if pid < 0:
                b.skip(rel, f"junk identity {pid}")
            elif pid > _MAX_LABEL or cam > _MAX_LABEL:
                b.skip(rel, "identity or camera number out of range")
            elif cam == 0:
                b.skip(rel, "camera number 0 (cameras are numbered from 1)")
            elif distractor_zero and pid == 0 and split != "gallery":
                b.skip(rel, "distractor identity 0 (kept in the gallery only)")
            else:
                b.add(rel, pid, cam - 1, split)
    b.note_unused(top, (d for d, _ in present), layout)
    return b


def _read_market(root: Path, top: Mapping[str, str]) -> _Builder:
    return _read_camera_dirs(
        root, top, _MARKET_DIRS, "market1501", "0002_c1s1_000451_03.jpg", distractor_zero=True
    )


def _read_veri(root: Path, top: Mapping[str, str]) -> _Builder:
    return _read_camera_dirs(
        root, top, _VERI_DIRS, "veri", "0001_c001_00016450_0.jpg", distractor_zero=False
    )


def _list_lines(
    root: Path,
    rel: str,
    b: _Builder,
) -> Iterable[tuple[str, str, str, str]]:
    """``path label`` lines of a text list: yields (raw path, raw label, where, location)."""
    name = rel.rsplit("/", 1)[-1]
    for lineno, line in enumerate(_read_text_lines(root / rel, rel), 1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        where = f"{name} line {lineno}"
        fields = text.rsplit(None, 1)
        if len(fields) != 2:
            b.skip(f"{name}:{lineno}", f"expected 'path label' ({where})")
            continue
        yield fields[0], fields[1], where, f"{name}:{lineno}"


def _check_label(text: str, what: str) -> tuple[int | None, str]:
    """A non-negative label from manifest text: (value, "") or (None, why not)."""
    value = _parse_int(text)
    if value is None:
        return None, f"{what} {_show(text, 40)!r} is not an integer"
    if value < 0:
        return None, f"junk {what} {value}" if what == "identity" else f"negative {what} {value}"
    if value > _MAX_LABEL:
        return None, f"{what} {value} out of range"
    return value, ""


def _msmt_camid(rel: str) -> int | None:
    """MSMT17 names are PID_INDEX_CAM_..., e.g. 0000_000_01_0303morning_0015_0.jpg."""
    fields = rel.rsplit("/", 1)[-1].split("_")
    cam = _parse_int(fields[2]) if len(fields) > 2 else None
    return cam - 1 if cam is not None and 1 <= cam <= _MAX_LABEL else None


def _read_msmt(root: Path, top: Mapping[str, str]) -> _Builder:
    """MSMT17 V1/V2: ``list_*.txt`` with ``relative/path.jpg pid`` lines."""
    b = _Builder()
    lists = [spec for spec in _MSMT_LISTS if top.get(spec[0]) == "file"]
    if not lists:
        names = ", ".join(spec[0] for spec in _MSMT_LISTS)
        raise DatasetError(f"not an msmt17 tree: none of {names} found in {root}")
    scan = _scan(root)
    seen: set[tuple[str, str]] = set()
    for list_name, split, prefixes in lists:
        for raw_path, raw_pid, where, location in _list_lines(root, list_name, b):
            rel, why = _clean_rel(raw_path)
            if rel is None:
                b.skip(raw_path or location, f"{why} ({where})")
                continue
            candidates = [_join(prefix, rel) for prefix in prefixes]
            found = next((c for c in candidates if scan.has(c)), None)
            if found is None:
                reasons = [scan.lookup(c) for c in candidates]
                reason = next((r for r in reasons if r != "missing file"), "missing file")
                b.skip(rel, f"{reason} ({where})")
                continue
            pid, why = _check_label(raw_pid, "identity")
            camid = _msmt_camid(found)
            if why == "":
                why = _image_reason(found) or ""
            if why == "" and camid is None:
                why = f"unparsable camera in file name (expected e.g. {_MSMT_EXAMPLE})"
            if why == "" and (found, split) in seen:
                why = "duplicate entry"
            if why:
                b.skip(found, f"{why} ({where})")
                continue
            seen.add((found, split))
            b.add(found, pid, camid, split)
    b.note_unlisted(scan, "the list files")
    return b


def _vehicleid_test_list(split_top: Mapping[str, str], b: _Builder) -> str | None:
    """The test list to read: test_list_800.txt (the usual protocol), else the smallest."""
    numbered = sorted(
        (int(m[1]), name)
        for name, kind in split_top.items()
        if kind == "file" and (m := _TEST_LIST_RE.fullmatch(name))
    )
    if not numbered:
        return None
    chosen = next((name for size, name in numbered if size == 800), numbered[0][1])
    others = [name for _, name in numbered if name != chosen]
    if others:
        also = ", ".join(others)
        b.notes.append(f"vehicleid test split read from {chosen} (also present: {also})")
    return chosen


def _read_vehicleid(root: Path, top: Mapping[str, str]) -> _Builder:
    """VehicleID: ``train_test_split/*.txt`` lists of ``IMAGE_NAME VEHICLE_ID`` lines.

    No camera ids exist. In the test list the standard protocol draws one image per vehicle
    as the gallery and uses the rest as queries; we take the first image per vehicle in
    sorted order instead of a random one, so results are reproducible.
    """
    b = _Builder()
    if top.get("train_test_split") != "dir" or top.get("image") != "dir":
        raise DatasetError(f"not a vehicleid tree: train_test_split/ and image/ needed in {root}")
    split_top, _ = _list_top(root / "train_test_split")
    test_list = _vehicleid_test_list(split_top, b)
    lists = [name for name in ("train_list.txt",) if split_top.get(name) == "file"]
    if test_list:
        lists.append(test_list)
    if not lists:
        raise DatasetError(f"vehicleid tree without train_list.txt or test_list_*.txt in {root}")
    scan = _scan(root, "image")
    for list_name in lists:
        entries: dict[str, int] = {}
        rows = _list_lines(root, f"train_test_split/{list_name}", b)
        for raw_name, raw_vid, where, location in rows:
            name, why = _clean_rel(raw_name)
            if name is None:
                b.skip(raw_name or location, f"{why} ({where})")
                continue
            stem = f"image/{name}"
            if _image_reason(name) is None:
                candidates = [stem]
            else:
                candidates = [stem + ext for ext in (".jpg", ".jpeg", ".png", ".bmp", ".webp")]
            found = next((c for c in candidates if scan.has(c)), None)
            if found is None:
                b.skip(candidates[0], f"{scan.lookup(candidates[0])} ({where})")
                continue
            vid, why = _check_label(raw_vid, "identity")
            if vid is None or found in entries:
                b.skip(found, f"{why or 'duplicate entry'} ({where})")
                continue
            entries[found] = vid
        if list_name == "train_list.txt":
            for path, vid in entries.items():
                b.add(path, vid, None, "train")
            continue
        by_vehicle: dict[int, list[str]] = defaultdict(list)
        for path, vid in entries.items():
            by_vehicle[vid].append(path)
        for vid, paths in by_vehicle.items():
            first, *rest = sorted(paths)
            b.add(first, vid, None, "gallery")
            for path in rest:
                b.add(path, vid, None, "query")
    b.note_unlisted(scan, "the vehicleid lists")
    return b


def _csv_header(path: Path) -> list[str] | None:
    """The normalised header of a CSV file if it looks like a manifest (has a path column)."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            line = fh.readline(65536)
        header = next(csv.reader([line]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return None
    header = [cell.strip().lower() for cell in header]
    return header if "path" in header else None


def _csv_candidates(root: Path, top: Mapping[str, str]) -> list[str]:
    if top.get("manifest.csv") == "file":
        return ["manifest.csv"]
    return [
        name
        for name, kind in top.items()
        if kind == "file" and name.lower().endswith(".csv") and _csv_header(root / name)
    ]


def _read_csv(root: Path, top: Mapping[str, str]) -> _Builder:
    """A ``path,pid,camid[,split]`` manifest; empty pid / camid cells mean unknown."""
    b = _Builder()
    candidates = _csv_candidates(root, top)
    if not candidates:
        raise DatasetError(f"no CSV manifest (manifest.csv with a 'path' column) in {root}")
    if len(candidates) > 1:
        raise DatasetError(
            f"several CSV manifests in {root} ({', '.join(candidates)}); "
            "name the one to use manifest.csv"
        )
    name = candidates[0]
    scan = _scan(root)
    seen: set[tuple[str, str]] = set()
    reader = None
    try:
        with open(root / name, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh)
            header = [cell.strip().lower() for cell in next(reader, [])]
            if "path" not in header:
                raise DatasetError(
                    f"{name} has no 'path' column in its header (expected {','.join(_CSV_COLUMNS)})"
                )
            if len(set(header)) != len(header):
                raise DatasetError(f"{name} repeats a column name in its header")
            extra = [col for col in header if col not in _CSV_COLUMNS]
            if extra:
                shown = ", ".join(_show(col, 40) for col in extra)
                b.notes.append(f"ignored columns of {name}: {shown}")
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                where = f"{name} line {reader.line_num}"
                if len(row) != len(header):
                    b.skip(
                        f"{name}:{reader.line_num}",
                        f"row has {len(row)} fields, the header has {len(header)} ({where})",
                    )
                    continue
                values = {col: cell.strip() for col, cell in zip(header, row, strict=True)}
                why = _csv_row(values, scan, seen, b, where)
                if why is not None:
                    b.skip(values["path"] or f"{name}:{reader.line_num}", f"{why} ({where})")
    except UnicodeDecodeError as err:
        raise DatasetError(f"{name} is not UTF-8 text") from err
    except csv.Error as err:
        line = reader.line_num if reader is not None else 0
        raise DatasetError(f"{name} is not a readable CSV file (line {line}: {err})") from err
    except OSError as err:
        raise DatasetError(f"cannot read {name}: {err.strerror or err}") from err
    b.note_unlisted(scan, name)
    return b


def _csv_row(
    values: dict[str, str],
    scan: _Scan,
    seen: set[tuple[str, str]],
    b: _Builder,
    where: str,
) -> str | None:
    """Validate one manifest row and add it; returns why it was rejected, if it was."""
    rel, why = _clean_rel(values["path"])
    if rel is None:
        return why
    missing = scan.lookup(rel)
    if missing is not None:
        return missing
    not_image = _image_reason(rel)
    if not_image is not None:
        return not_image
    pid: int | None = None
    camid: int | None = None
    if values.get("pid"):
        pid, why = _check_label(values["pid"], "identity")
        if pid is None:
            return why
    if values.get("camid"):
        camid, why = _check_label(values["camid"], "camera id")
        if camid is None:
            return why
    split = (values.get("split") or "train").lower()
    if split not in SPLITS:
        return f"unknown split {_show(split, 40)!r} (expected train, query or gallery)"
    if (rel, split) in seen:
        return "duplicate entry"
    seen.add((rel, split))
    b.add(rel, pid, camid, split)
    return None


def _read_folders(root: Path, top: Mapping[str, str]) -> _Builder:
    """One folder per identity, optionally under train/ query/ gallery/; loose files = unlabeled."""
    b = _Builder()
    pending: list[tuple[str, str | None, str]] = []  # (path, identity folder name, split)
    split_dirs = [name for name in SPLITS if top.get(name) == "dir"]
    if split_dirs:
        for name, kind in top.items():
            if name in split_dirs:
                continue
            if kind in ("link", "other"):
                b.skip(name, _kind_reason(kind))
            else:
                shown = f"{name}/" if kind == "dir" else name
                b.skip(shown, "outside the train/, query/ and gallery/ folders")
        for split in split_dirs:
            _read_collection(root, split, split, b, pending)
    else:
        _read_collection(root, "", "train", b, pending)
    names = sorted({name for _, name, _ in pending if name is not None})
    index = {name: i for i, name in enumerate(names)}
    for path, name, split in pending:
        b.add(path, None if name is None else index[name], None, split)
    b.identity_names = names or None
    return b


def _read_collection(
    root: Path,
    base: str,
    split: str,
    b: _Builder,
    pending: list[tuple[str, str | None, str]],
) -> None:
    """Identity sub-folders of ``base``; if there are none, its files form an unlabeled set."""
    scan = _scan(root, base)
    b.take_problems(scan)
    offset = len(base) + 1 if base else 0
    labeled = any("/" in rel[offset:] for rel in scan.files)
    for rel in scan.files:
        why = _image_reason(rel)
        inner = rel[offset:]
        if why is None and labeled and "/" not in inner:
            why = "image outside the identity folders"
        if why is not None:
            b.skip(rel, why)
            continue
        pending.append((rel, inner.split("/", 1)[0] if labeled else None, split))
    if not labeled and scan.files:
        where = f"{base}/" if base else "the root"
        b.notes.append(f"images directly in {where} without identity folders: read as unlabeled")


_READERS: dict[str, Callable[[Path, Mapping[str, str]], _Builder]] = {
    "market1501": _read_market,
    "msmt17": _read_msmt,
    "veri": _read_veri,
    "vehicleid": _read_vehicleid,
    "csv": _read_csv,
    "folders": _read_folders,
}


# --------------------------------------------------------------------------- entry points


def _detect_here(root: Path, top: Mapping[str, str]) -> str | None:
    """The first layout (other than the catch-all ``folders``) whose markers are in ``root``."""
    dirs = {name for name, kind in top.items() if kind == "dir"}
    files = {name for name, kind in top.items() if kind == "file"}
    # A lone query/ is not enough: it is also a split folder of the folders layout.
    if dirs & {"bounding_box_train", "bounding_box_test"}:
        return "market1501"
    if files & {spec[0] for spec in _MSMT_LISTS}:
        return "msmt17"
    if dirs & {d for d, _ in _VERI_DIRS}:
        return "veri"
    if {"train_test_split", "image"} <= dirs:
        return "vehicleid"
    if _csv_candidates(root, top):
        return "csv"
    return None


def _locate(root: str | os.PathLike[str]) -> tuple[Path, str | None, dict[str, str], list[str]]:
    """Find the dataset in ``root``, looking through single-folder archive wrappers.

    Returns (dataset root, detected layout or None, its top-level entries, notes).
    A lone ``train/``, ``query/`` or ``gallery/`` folder is a split, not a wrapper.
    """
    base = Path(root)
    try:
        if not base.is_dir():
            problem = "is not a directory" if base.exists() else "does not exist"
            raise DatasetError(f"dataset directory {base} {problem}")
    except OSError as err:
        why = err.strerror or err
        raise DatasetError(f"cannot access dataset directory {base}: {why}") from err
    current, depth = base, 0
    while True:
        top, ignored = _list_top(current)
        if not top:
            extra = " (only hidden or system files)" if ignored else ""
            raise DatasetError(f"dataset directory {current} is empty{extra}")
        found = _detect_here(current, top)
        if found is not None or depth == _MAX_WRAPPERS:
            break
        (name, kind), *others = top.items()
        if others or kind != "dir" or name in SPLITS:
            break
        current, depth = current / name, depth + 1
    notes = []
    if current != base:
        notes.append(f"dataset found in sub-folder {current.relative_to(base).as_posix()}/")
    return current, found, top, notes


def detect_layout(root: str | os.PathLike[str]) -> str:
    """The layout ``read_dataset(root)`` would use; ``folders`` when nothing else matches."""
    _, found, _, _ = _locate(root)
    return found or "folders"


def read_dataset(root: str | os.PathLike[str], layout: str = "auto") -> DatasetTree:
    """List the usable images of a dataset tree, with what was skipped and why.

    ``layout`` is one of ``LAYOUTS`` or ``"auto"`` (detection in the ``LAYOUTS`` order).
    Raises ``DatasetError`` for a missing, empty or unreadable tree, an unknown layout, an
    unreadable manifest, or a tree where nothing is usable (the message names a few reasons).
    """
    if layout != "auto" and layout not in LAYOUTS:
        known = ", ".join(LAYOUTS)
        raise DatasetError(f"unknown layout {layout!r}; expected auto or one of {known}")
    data_root, found, top, notes = _locate(root)
    chosen = (found or "folders") if layout == "auto" else layout
    built = _READERS[chosen](data_root, top)
    if not built.items:
        if built.skipped:
            examples = "; ".join(f"{_show(s.path, 100)}: {s.reason}" for s in built.skipped[:3])
            count = len(built.skipped)
            message = (
                f"no usable images in {data_root} ({chosen} layout): "
                f"{count} {'entry' if count == 1 else 'entries'} skipped, e.g. {examples}"
            )
        else:
            message = f"no images found in {data_root} ({chosen} layout)"
        raise DatasetError(message, built.skipped)
    order = {name: i for i, name in enumerate(SPLITS)}
    items = sorted(built.items, key=lambda it: (order[it.split], it.path))
    return DatasetTree(
        root=data_root,
        layout=chosen,
        items=items,
        skipped=built.skipped,
        identity_names=built.identity_names,
        notes=notes + built.notes,
    )
