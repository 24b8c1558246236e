"""The shape of the code (issue 23, docs/architecture.md): imports point down the layer stack
(import-linter's contracts, which read imports inside functions too), no module over 500
lines, a long function says why, docs/architecture.md lists the contract's layers, and every
``nimbleml.…`` name the docs and the README mention resolves."""

from __future__ import annotations

import ast
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "nimbleml"
MAX_LINES = 500
MAX_BODY = 80  # a function body (its docstring aside) longer than this says why: "# long"


def layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (contract,) = [c for c in config["contracts"] if c["type"] == "layers"]
    return list(contract["layers"])


def test_the_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_the_contract_sees_an_import_inside_a_function(tmp_path):
    """grimp reads every import statement, a lazy one inside a function too: an upward import
    added inside a function of a copy of the package breaks the layers contract."""
    import shutil

    copy = tmp_path / "src"
    shutil.copytree(SRC, copy / "nimbleml", ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / "nimbleml" / "inputs.py", "a") as fh:
        fh.write("\n\ndef _probe():\n    from .serve import app  # noqa: F401\n")
    (tmp_path / "pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    lint = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([str(lint)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PYTHONPATH": str(copy), "PATH": "/usr/bin:/bin"})  # fmt: skip
    assert done.returncode != 0, done.stdout[-3000:]
    assert "nimbleml.inputs -> nimbleml.serve.app" in done.stdout, done.stdout[-3000:]


def _modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_module_is_over_500_lines():
    long = {str(p.relative_to(SRC)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}  # fmt: skip
    assert not long, f"split these (at most {MAX_LINES} lines each): {long}"


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    first = body[0]
    if isinstance(first, ast.Expr) and isinstance(getattr(first, "value", None), ast.Constant):
        body = body[1:] or body
    return (body[-1].end_lineno or 0) - body[0].lineno + 1


def test_a_long_function_says_why():
    unexplained = []
    for path in _modules():
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            if _body_lines(node) <= MAX_BODY:
                continue
            top = min([node.lineno, *(d.lineno for d in node.decorator_list)])
            if not lines[top - 2].strip().startswith("# long"):
                unexplained.append(f"{path.relative_to(SRC)}:{node.lineno} {node.name}")
    assert not unexplained, (
        f"functions over {MAX_BODY} lines without a '# long: why' comment above them: {unexplained}"
    )


def test_the_architecture_page_lists_the_contract_layers_in_order():
    page = (ROOT / "docs" / "architecture.md").read_text()
    headings = re.findall(r"^### `([^`]+)`", page, flags=re.MULTILINE)
    assert headings == layers(), "docs/architecture.md's '### `layer`' headings, top to bottom"


# -- every nimbleml.* name in the docs resolves -------------------------------------------
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FILE_SUFFIXES = ("md", "py", "json", "yaml", "toml", "png", "nimble")
DOTTED = re.compile(r"(?<![\w./-])nimbleml(?:\.[A-Za-z_]\w*)+")
NOT_PYTHON = {"nimbleml.recipes"}  # the entry-point group in pyproject.toml
FROM_IMPORT = re.compile(
    r"from (nimbleml(?:\.\w+)*) import (?:\(([^)]*)\)|([\w, ]+)$)", re.MULTILINE
)


def _resolves(name: str) -> bool:
    """``name`` as code reaches it: after ``import <its longest module prefix>``, by attributes
    from the root (so ``nimbleml.train.Trainer`` does not resolve: ``nimbleml.train`` is the
    function); or an importable module (``python -m …``)."""
    import nimbleml

    parts = name.split(".")
    for k in range(len(parts), 1, -1):
        try:
            importlib.import_module(".".join(parts[:k]))
        except ImportError:
            continue
        if k == len(parts):
            return True  # a module: python -m, import
        break
    obj: object = nimbleml
    try:
        for part in parts[1:]:
            obj = getattr(obj, part)
    except AttributeError:
        return False
    return True


def _mentions() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for match in DOTTED.finditer(text):
            name = match.group(0).rstrip(".")
            if name in NOT_PYTHON or name.split(".")[-1] in FILE_SUFFIXES:
                continue  # a file name (nimbleml.yaml), not a Python name
            found.append((doc.name, name))
        for module, grouped, names in FROM_IMPORT.findall(text):
            words = (grouped or names).replace("\n", ",").split(",")
            found += [(doc.name, f"{module}:{w.split(' as ')[0].strip()}") for w in words
                      if w.strip() and not w.strip().startswith("#")]  # fmt: skip
    return sorted(set(found))


@pytest.mark.parametrize(("doc", "name"), _mentions())
def test_every_documented_name_resolves(doc, name):
    if ":" in name:  # from module import name
        module, attr = name.split(":")
        assert hasattr(importlib.import_module(module), attr), f"{doc}: from {module} import {attr}"
        return
    assert _resolves(name), f"{doc} names {name}, which nimbleml does not have"
