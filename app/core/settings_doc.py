"""Documentation of the ``REID_*`` settings, generated from :class:`app.core.settings.Settings`.

``python -m app.core.settings_doc`` prints the README's configuration table (variable, default,
meaning); ``--format env`` prints every setting as a commented ``.env`` line instead. The
names, defaults and one-line meanings come from the ``Field`` definitions, so adding a setting
there documents it; ``tests/test_deploy.py`` checks that ``.env.example`` keeps up.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic_core import PydanticUndefined

from app.core.settings import Settings

__all__ = ["SettingDoc", "env_value", "main", "markdown_table", "setting_docs"]

ENV_PREFIX = "REID_"
_UNITS = (("GiB", 1024**3), ("MiB", 1024**2))


@dataclass(frozen=True)
class SettingDoc:
    """One setting: its variable, default in ``.env`` syntax, and meaning."""

    env: str  # REID_DATA_DIR
    field: str  # data_dir
    default: str  # "" when the default is unset / empty
    description: str


def env_value(value: Any) -> str:
    """``value`` written the way ``REID_X=...`` reads it back (lists comma-separated)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ",".join(env_value(v) for v in value)
    if isinstance(value, Path):
        return value.as_posix()
    return str(value)


def _default(name: str) -> Any:
    info = Settings.model_fields[name]
    if info.default_factory is not None:
        return info.default_factory()  # type: ignore[call-arg]
    return None if info.default is PydanticUndefined else info.default


def setting_docs() -> list[SettingDoc]:
    """Every field of :class:`Settings`, in definition order."""
    return [
        SettingDoc(
            env=ENV_PREFIX + name.upper(),
            field=name,
            default=env_value(_default(name)),
            description=" ".join((info.description or "").split()),
        )
        for name, info in Settings.model_fields.items()
    ]


def _readable(doc: SettingDoc) -> str:
    """The default for a reader: ``unset``, or the value with its size in GiB/MiB."""
    if doc.default == "":
        return "unset"
    text = f"`{doc.default}`"
    if doc.field.endswith("_bytes") and doc.default.isdigit():
        number = int(doc.default)
        for unit, size in _UNITS:
            if number >= size and number % size == 0:
                return f"{text} ({number // size} {unit})"
    return text


def markdown_table() -> str:
    """The configuration table of the README."""
    lines = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for doc in setting_docs():
        meaning = doc.description.replace("|", "\\|")
        lines.append(f"| `{doc.env}` | {_readable(doc)} | {meaning} |")
    return "\n".join(lines) + "\n"


def env_lines() -> str:
    """Every setting as ``# meaning`` + ``#REID_X=default``: a starting ``.env``."""
    blocks = [f"# {doc.description}\n#{doc.env}={doc.default}\n" for doc in setting_docs()]
    return "\n".join(blocks)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m app.core.settings_doc",
        description="Print the REID_* settings: a markdown table (default) or .env lines.",
    )
    parser.add_argument("--format", choices=("markdown", "env"), default="markdown")
    args = parser.parse_args(argv)
    sys.stdout.write(markdown_table() if args.format == "markdown" else env_lines())
    return 0


if __name__ == "__main__":
    sys.exit(main())
