"""The README's Python examples run as written."""

import re
from pathlib import Path

import pytest

README = Path(__file__).parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    assert text.index("make demo") < text.index("make test") < 200


# the quick start compresses without data on purpose: its one warning says so
@pytest.mark.filterwarnings("ignore::nimbleml.errors.SyntheticInputsWarning")
@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = code.replace("/tmp/", f"{tmp_path}/")
    exec(compile(code, str(README), "exec"), {"__name__": "readme"})
