"""The browser libraries the UI ships, pinned, and the script that vendors them.

The service needs no internet and no Node at run time: the files below live in
``app/ui/static/vendor/<package>/`` (committed, each with its license). To vendor them again
or move a version: edit :data:`PACKAGES` (version and the registry's ``dist.integrity``, from
``npm view NAME@VERSION dist.integrity``), then run ``python -m app.ui.vendor`` (it needs the
``npm`` client only to download the tarballs; the integrity is checked before anything is
written).
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PACKAGES", "VENDOR_DIR", "Package", "vendor"]

VENDOR_DIR = Path(__file__).parent / "static" / "vendor"


@dataclass(frozen=True)
class Package:
    """One npm package: the files of its tarball the UI uses (``package/`` stripped)."""

    name: str
    version: str
    integrity: str  # the registry's sha512, base64
    folder: str  # under static/vendor/
    files: tuple[str, ...]

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"


PACKAGES: tuple[Package, ...] = (
    Package(  # charts: small, fast canvas time series (the job page and the demo report)
        name="uplot",
        version="1.6.32",
        integrity="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNu"
        "GGzQm/ep3tOkyTxpiQIw==",
        folder="uplot",
        files=("dist/uPlot.esm.js", "dist/uPlot.min.css", "LICENSE"),
    ),
    Package(  # server-sent events over fetch(): EventSource cannot send the API key header
        name="@microsoft/fetch-event-source",
        version="2.0.1",
        integrity="sha512-W6CLUJ2eBMw3Rec70qrsEW0jOm/3twwJv21mrmj2yORiaVmVYGS4sSS5yUwvQc1ZlD"
        "LYGPnClVWmUUMagKNsfA==",
        folder="fetch-event-source",
        files=("lib/esm/fetch.js", "lib/esm/parse.js", "LICENSE"),
    ),
)


def _check_integrity(tarball: Path, integrity: str) -> None:
    algorithm, _, expected = integrity.partition("-")
    digest = base64.b64encode(hashlib.new(algorithm, tarball.read_bytes()).digest()).decode()
    if digest != expected:
        raise RuntimeError(f"{tarball.name}: integrity mismatch ({integrity} expected)")


def vendor(package: Package, into: Path = VENDOR_DIR) -> list[Path]:
    """Download ``package`` with ``npm pack``, check it, copy its files flat into its folder."""
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(
            ["npm", "pack", "--silent", package.spec, "--pack-destination", tmp],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        (tarball,) = Path(tmp).glob("*.tgz")
        _check_integrity(tarball, package.integrity)
        target = into / package.folder
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        written = []
        with tarfile.open(tarball) as tar:
            for name in package.files:
                member = tar.extractfile(f"package/{name}")
                if member is None:
                    raise RuntimeError(f"{package.spec} has no file {name}")
                out = target / Path(name).name
                out.write_bytes(member.read())
                written.append(out)
        (target / "VERSION").write_text(f"{package.spec} {package.integrity}\n")
        return written


def main() -> int:
    for package in PACKAGES:
        for path in vendor(package):
            print(path.relative_to(VENDOR_DIR.parent.parent))
    return 0


if __name__ == "__main__":
    sys.exit(main())
