"""Writing a deployment: every file is made in memory from Python values (YAML and JSON are
dumped, never filled-in text, so they are always well formed), then written at once into
the output folder with the packages copied beside them."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from .._deps import require
from ..errors import ConfigError, storage_error
from .plan import Plan


def yaml_text(docs: list[Any], comment: list[str]) -> str:
    """YAML documents (``---`` between them) under a ``#`` comment block."""
    require("yaml", "nimbleml deploy (it writes YAML)")  # or says how to install it
    import yaml

    class Dumper(yaml.SafeDumper):
        def increase_indent(self, flow: bool = False, indentless: bool = False) -> Any:
            return super().increase_indent(flow, False)  # lists indented under their key

    def block(dumper: Any, text: str) -> Any:  # multi-line strings (a run: script) as |
        style = "|" if "\n" in text else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", text, style=style)

    Dumper.add_representer(str, block)
    head = "".join(f"# {line}".rstrip() + "\n" for line in comment)
    body = "---\n".join(
        yaml.dump(doc, Dumper=Dumper, sort_keys=False, width=100, allow_unicode=True)
        for doc in docs
    )
    return head + body


def json_text(value: Any) -> str:
    return json.dumps(value, indent=2) + "\n"


def check_output(out: Path, force: bool) -> None:
    """Refuse a file, or a non-empty folder without ``force``, before anything is made."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {out} is a file; give a folder for the deployment files")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(
            f"-o {out} exists and is not empty; give --force to overwrite the files deploy "
            "writes there (others are kept), or another folder"
        )


def write(out: Path, files: dict[str, str], plan: Plan, copy_packages: bool) -> list[Path]:
    """Write ``files`` (relative path -> text) under ``out``, and the packages into
    ``out/models/NAME.nimble`` (replacing an older copy). Returns the paths written."""
    made = not out.exists()
    written: list[Path] = []
    path = out
    try:
        out.mkdir(parents=True, exist_ok=True)
        for relative, text in files.items():
            path = out / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            try:
                tmp.write_text(text)
                tmp.replace(path)
            finally:
                tmp.unlink(missing_ok=True)
            written.append(path)
        for p in plan.packages if copy_packages else []:
            path = out / "models" / f"{p.name}.nimble"
            if path.resolve() == p.path.resolve():
                continue
            if path.exists():
                shutil.rmtree(path)
            shutil.copytree(p.path, path)
            written.append(path)
    except OSError as exc:  # a full or read-only disk: named, and a folder it made removed
        if made:
            shutil.rmtree(out, ignore_errors=True)
        elif path.suffix == ".nimble":
            shutil.rmtree(path, ignore_errors=True)  # no half-copied package
        raise storage_error(path, exc) from exc
    return written
