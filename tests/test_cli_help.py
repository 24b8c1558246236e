"""--help reads like a command line tool's: plain value names, flags without a value, one
way to show defaults, examples for every verb, --version (issue 11)."""

import re

import pytest
import typer.main
from typer.testing import CliRunner

from nimbleml import __version__
from nimbleml.cli import EXAMPLES, app

runner = CliRunner()
# the command each function is (typer names bench_train "bench-train")
VERBS = [typer.main.get_command_name(verb.__name__) for verb in EXAMPLES]


def help_of(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def test_every_verb_has_examples():
    names = {c.name for c in app.registered_commands} | {
        typer.main.get_command_name(c.callback.__name__) for c in app.registered_commands
    }
    assert set(VERBS) <= names and len(app.registered_commands) == len(VERBS)


@pytest.mark.parametrize("verb", VERBS)
def test_help_of_each_verb(verb):
    text = help_of(verb)
    assert not re.search(r"<(bool|str|float|int|path|list\[str\])>", text), text
    assert "{" not in text.split("\n", 3)[1]  # the usage line: MODEL, not {model}
    assert "(default" not in text and "default: (" not in text
    assert "Examples" in text and f"$ nimbleml {verb}" in text
    # every option says what it is for
    for line in text.splitlines():
        m = re.match(r"^[│|]\s+\*?\s*(--[a-z-]+)(\s+-[a-z])?\s+(?:[A-Z]+\s+)?[│|]\s*$", line)
        assert m is None, f"{verb}: option without help: {line}"


def test_flags_take_no_value_and_version():
    assert re.search(r"--quiet\s+-q\s+no progress display", help_of("compress"))
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.strip() == f"nimbleml {__version__}"
    top = help_of()
    assert "--version" in top and "<bool>" not in top


def test_config_defaults_are_shown_as_defaults():
    text = help_of("serve")
    assert re.search(r"--port\s+INTEGER\s+port to listen on\s+\[default: 8000\]", text), text
    assert "[8000]" not in text
