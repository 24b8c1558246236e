"""Every fenced block of README.md and docs/*.md runs as written, or is classified here.

How each kind of block is handled (BLOCKS lists every block, in order, per file):

- ``python``: a file's blocks run in order in one namespace, in a fresh working directory
  holding the files they name (the ``files`` fixture); the names they take from the text
  around them (a ``model``, ``X``) come from GIVEN. README.md's run in tests/test_readme.py.
- ``bash``: each ``nimbleml ...`` line runs through the venv's console script in a fresh
  directory holding those files, and must exit 0; the lines of a block run in order there, so
  one can use what an earlier one wrote. ``nimbleml serve`` runs in the background on a free
  port (the command's ``--port`` replaced, or one added) until GET /v2/health/ready answers
  200 on a real socket, then is stopped. Any other line must be in NOT_RUN, which says why.
- ``yaml``: parsed, then read by nimbleml's own reader for the file it is an example of.
- ``json``: parsed, and its keys compared with what the code writes.
- ``text`` / plain: illustrative (the table says what each shows).

Where a doc shows a value that would make this file slow (a 120 s search), SUBSTITUTIONS
replaces it, each with its reason; nothing else in a block is changed.
test_every_block_is_handled fails when a block appears, goes or changes kind without this
table saying how it is handled.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests._net import free_port

ROOT = Path(__file__).parents[1]
NIMBLEML = str(Path(sys.executable).with_name("nimbleml"))
DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]

# how a block is handled
README_PYTHON = "python: run by tests/test_readme.py"
PYTHON = "python: run here, the file's blocks in order in one namespace"
COMMANDS = "commands: nimbleml lines run, others in NOT_RUN"
SYNOPSIS = "synopsis: its options checked against the CLI, the command without them run"
SERVE_YAML = "serve --config example: read by nimbleml.serve.launch.make_spec"
ENSEMBLE_YAML = "ensemble --config example: read by nimbleml.cli.ensemble.read_config"
REPORT_JSON = "report.json example: keys compared with BenchmarkReport.to_dict()"
PACKAGE_TREE = "illustrative: the package folder (checked: it names a real package's files)"
TRAIN_OPTIONS = (
    "train command lines: every option checked against the train command (they need the "
    "reader's model module, and two machines for torchrun --nnodes 2; tests/train/test_cli.py "
    "and test_ddp.py run the same options end to end on digits)"
)
TRAIN_YAML = "train --config example: read by nimbleml.cli.train.read_config"
SERVE_JSON = "serve report example: keys compared with nimbleml.cost.serve_report(), read by cost"
TUNE_YAML = "tune --config example: read by nimbleml.cli.tune.read_config"
DEPLOY_JSON = "serve report example: read by nimbleml.deploy.capacity in tests/deploy"
DISTILL_OPTIONS = (
    "distill with a teacher module of the reader's: the same command runs in "
    "tests/search/test_distill_cli.py on a trained digits MLP"
)
TRANSFORMER_RECIPE = (
    "python: the transformer recipe, on the reader's model and Datasets: "
    "tests/distill/test_transformer_recipe.py runs it on a synthetic text task and checks that "
    "this block makes the same calls"
)

# every block of every file, in order: (language, start of its first line, how handled)
BLOCKS: dict[str, list[tuple[str, str, str]]] = {
    "README.md": [
        ("bash", "make demo", COMMANDS),
        ("python", "import numpy as np", README_PYTHON),
        ("python", "import nimbleml", README_PYTHON),
        ("python", "import nimbleml", README_PYTHON),
        ("python", "import numpy as np", README_PYTHON),
        ("python", "from nimbleml import ModelCompressor", README_PYTHON),
        ("python", "import nimbleml", README_PYTHON),
        ("bash", "nimbleml compress model.ts", COMMANDS),
    ],
    "docs/architecture.md": [],
    "docs/benchmark-report.md": [("json", "{", REPORT_JSON)],
    "docs/cli.md": [],
    "docs/cost.md": [
        ("bash", "nimbleml bench model.nimble --data val.npz --batch-size 1,32", COMMANDS),
        ("json", "{", SERVE_JSON),
        ("bash", "nimbleml cost --serve-report serve.json", COMMANDS),
        ("text", "prices: nimbleml built-in", "illustrative: that command's output, trimmed"),
        ("text", "instance,cloud,region", "illustrative: a --prices CSV (tests/cost reads such)"),
        ("python", "import nimbleml", PYTHON),
    ],
    "docs/deploy.md": [
        ("bash", "nimbleml deploy model.nimble --target docker", COMMANDS),
        ("json", '{"models": [{"name": "model"', DEPLOY_JSON),
        ("python", "import nimbleml", PYTHON),
    ],
    "docs/distill.md": [
        ("python", "import nimbleml", PYTHON),
        ("bash", "nimbleml distill --teacher mypkg.models:trained", DISTILL_OPTIONS),
        ("python", "import nimbleml", TRANSFORMER_RECIPE),
    ],
    "docs/monitor.md": [("python", "from nimbleml.monitor import", PYTHON)],
    "docs/tune.md": [("python", "import nimbleml", PYTHON), ("yaml", "study:", TUNE_YAML)],
    "docs/train.md": [
        ("python", "import nimbleml", PYTHON),
        ("bash", "nimbleml train --model mypkg.models:build", TRAIN_OPTIONS),
        ("yaml", "model:", TRAIN_YAML),
        ("bash", "nimbleml train --model mypkg.models:build", TRAIN_OPTIONS),
        ("bash", "nimbleml train --model mypkg.models:build", TRAIN_OPTIONS),  # --strategy fsdp
        ("bash", "nimbleml train --model mypkg.models:build", TRAIN_OPTIONS),  # --max-restarts
        ("bash", "nimbleml train --model mypkg.models:build", TRAIN_OPTIONS),  # --nnodes 2
        ("bash", "torchrun --nnodes 2", TRAIN_OPTIONS),
    ],
    "docs/optimize.md": [
        ("python", "result = nimbleml.optimize(", PYTHON),
        ("bash", "nimbleml optimize model.ts", COMMANDS),
    ],
    "docs/openvino.md": [("python", "import nimbleml", PYTHON)],
    "docs/package-format.md": [("", "model.nimble/", PACKAGE_TREE)],
    "docs/profile.md": [
        ("python", "import nimbleml", PYTHON),
        ("bash", "nimbleml profile model.nimble --data val.npz", COMMANDS),
    ],
    "docs/qat.md": [("python", "import nimbleml", PYTHON)],
    "docs/runtime.md": [
        ("python", "from nimbleml.runtime import", PYTHON),
        ("bash", "nimbleml ensemble a.nimble", COMMANDS),
        ("yaml", "inference:", ENSEMBLE_YAML),
    ],
    "docs/serve.md": [
        ("bash", "nimbleml serve digits=model.nimble iris.nimble [", SYNOPSIS),
        ("yaml", "models: {digits: digits.nimble", SERVE_YAML),
        ("text", "time, window_s", "illustrative: the shape of /dashboard/data's JSON"),
        ("text", "figure ", "illustrative: one run's output of benchmarks/serve.py"),
    ],
    "docs/sklearn.md": [],
}

# command lines not run here, by how they start, and why
NOT_RUN = {
    "make ": "what CI and a fresh clone run (sets up .venv; tests, or the demo); this suite "
    "is itself run by `make test`",
    "pip install": "installs from the package index, which the tests do not reach",
    "nimbleml demo": "run by tests/test_demo.py as `nimbleml demo --quick` (about a minute "
    "here; the full demo trains, searches and serves longer: about four)",
}

REDIS = "redis://127.0.0.1:6379/0"  # the Redis tier the docs show

# (as the doc says it, as run here, why): applied to python blocks and command lines
SUBSTITUTIONS = [
    ("--time-budget 120", "--time-budget 5", "a search stops at its time budget: 120 s is a "
     "real run's, 5 s exercises the same path"),
    ("time_budget_s=180", "time_budget_s=5", "as above"),
    ("--batch-size 1,32 --json", "--batch-size 1,32 --time-budget 0.2 --json", "bench's default "
     "is 3 s of timing per model and batch size: 17 s here for two models at two sizes"),
    ("--benchmark", "--benchmark --time-budget 0.3", "ensemble --benchmark times for 2 s per "
     "batch size by default: 5 s a command here instead of 2"),
    (REDIS, "{redis}", "a redis-server this test starts on a free port"),
    ("epochs=30, lr=3e-3", "epochs=2, lr=3e-3", "30 epochs of two students: 2 run the same path"),
]  # fmt: skip

# files some blocks need that another block of the docs is the example of
BLOCK_FILES = {
    "docs/runtime.md#1": {"ensemble.yaml": "docs/runtime.md#2"},
    "docs/cost.md#2": {"serve.json": "docs/cost.md#1"},
    "docs/deploy.md#0": {"serve.json": "docs/deploy.md#1", "train.yaml": "docs/train.md#2"},
}


@dataclass(frozen=True)
class Block:
    doc: str
    index: int
    lang: str
    text: str
    line: int

    @property
    def id(self) -> str:
        return f"{self.doc}#{self.index}"


def fenced_blocks(doc: str) -> list[Block]:
    """The fenced blocks of ``doc`` (a path relative to the repository), in order."""
    blocks: list[Block] = []
    lang: str | None = None
    body: list[str] = []
    start = 0
    for number, line in enumerate((ROOT / doc).read_text().splitlines(), 1):
        fence = line.strip().startswith("```")
        if lang is None and fence:
            lang, body, start = line.strip()[3:].strip(), [], number
        elif lang is not None and line.strip() == "```":
            blocks.append(Block(doc, len(blocks), lang, "\n".join(body) + "\n", start))
            lang = None
        elif lang is not None:
            body.append(line)
    assert lang is None, f"{doc}: the block opened at line {start} is never closed"
    return blocks


def handled() -> list[tuple[Block, str]]:
    """Each block whose language and first line are as BLOCKS lists them, with how."""
    out = []
    for doc, rows in BLOCKS.items():
        if not (ROOT / doc).is_file():
            continue
        for block, (lang, starts, how) in zip(fenced_blocks(doc), rows, strict=False):
            if block.lang == lang and block.text.startswith(starts):
                out.append((block, how))
    return out


HANDLED = handled()
BY_ID = {block.id: block for block, _ in HANDLED}


def of_kind(*kinds: str) -> list[Any]:
    return [pytest.param(b, id=b.id) for b, how in HANDLED if how in kinds]


def substitute(text: str, **values: str) -> str:
    for old, new, _ in SUBSTITUTIONS:
        if old in text:
            text = text.replace(old, new.format(**values))
    return text


def test_every_block_is_handled():
    problems = []
    for doc in DOCS:
        found = [
            (b.lang, b.text.splitlines()[0] if b.text.strip() else "") for b in fenced_blocks(doc)
        ]
        rows = BLOCKS.get(doc)
        if rows is None:
            problems.append(f"{doc}: not in BLOCKS; its blocks: {found}")
            continue
        for i in range(max(len(found), len(rows))):
            got = found[i] if i < len(found) else None
            want = rows[i][:2] if i < len(rows) else None
            if got is None or want is None or got[0] != want[0] or not got[1].startswith(want[1]):
                problems.append(f"{doc} block {i}: found {got}, BLOCKS expects {want}")
    assert not [d for d in BLOCKS if d not in DOCS], "BLOCKS lists a file that is gone"
    assert not problems, "blocks BLOCKS does not say how to handle:\n" + "\n".join(problems)


def test_readme_python_blocks_are_those_test_readme_runs():
    from tests.test_readme import BLOCKS as README_BLOCKS

    listed = [b.text for b, how in HANDLED if how == README_PYTHON]
    assert listed == README_BLOCKS


def command_lines(block: Block) -> list[str]:
    """The block's command lines: continuations joined, comments dropped."""
    joined = block.text.replace("\\\n", " ")
    return [
        " ".join(shlex.split(line, comments=True)) for line in joined.splitlines() if line.strip()
    ]


def not_run_reason(line: str) -> str | None:
    return next((why for start, why in NOT_RUN.items() if line.startswith(start)), None)


def test_every_command_line_is_run_or_classified():
    for block, _ in [(b, h) for b, h in HANDLED if h == COMMANDS]:
        for line in command_lines(block):
            assert line.startswith("nimbleml ") or not_run_reason(line), (
                f"{block.id}: `{line}` is neither a nimbleml command nor in NOT_RUN"
            )


def test_every_substitution_is_used():
    texts = [b.text for b, how in HANDLED if how in (PYTHON, COMMANDS)]
    for old, _, _ in SUBSTITUTIONS:
        assert any(old in text for text in texts), f"SUBSTITUTIONS: {old!r} is in no block now"


# ---------------------------------------------------------------------------- files


@pytest.fixture(scope="module")
def mlp(digits):
    """The docs' ``model``: a 64-wide MLP trained on one torch thread. With two threads on
    this 2-core machine, shared with other work, the same training took 2-27 s instead of
    0.3 s (OpenMP threads waiting on each other); the session's ``mlp`` trains with two."""
    import torch

    from nimbleml.demo import train_mlp

    Xtr, _, ytr, _ = digits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_mlp(Xtr, ytr, hidden=64, epochs=5)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def files(tmp_path_factory, mlp, digits) -> Path:
    """The files the docs' commands and examples name, made here from small models."""
    import torch
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    import nimbleml
    from nimbleml.monitor import ModelMonitor

    d = tmp_path_factory.mktemp("docs-files")
    Xtr, Xte, ytr, yte = digits
    np.savez(d / "val.npz", X=Xte, y=yte)
    np.save(d / "calib.npy", Xte[:64])
    torch.jit.save(torch.jit.trace(mlp, torch.from_numpy(Xte[:2])), str(d / "model.ts"))
    nimbleml.compress(mlp, quantize="int8", val=(Xte, yte), benchmark_time_s=0.01).save(
        d / "model.nimble"
    )
    shutil.copytree(d / "model.nimble", d / "digits.nimble")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence warnings of the short fits
        members = [LogisticRegression(C=c, max_iter=20).fit(Xtr, ytr) for c in (0.02, 0.2, 2.0)]
        Xi, yi = load_iris(return_X_y=True)
        iris = LogisticRegression(max_iter=500).fit(Xi.astype(np.float32), yi)
    for name, model in zip("abc", members, strict=True):
        pkg = nimbleml.compress(model, quantize=None, val=(Xte, yte), benchmark_time_s=0.01)
        pkg.save(d / f"{name}.nimble")
    Xi = Xi.astype(np.float32)
    nimbleml.compress(iris, quantize=None, val=(Xi, yi), benchmark_time_s=0.01).save(
        d / "iris.nimble"
    )
    monitor = ModelMonitor(
        store=f"sqlite:///{d / 'monitor.db'}", background=False, resources_interval_s=None
    )
    for i in range(200):
        monitor.record(float(1 + i % 5), prediction_id=i, model="digits", output=i % 2)
        monitor.record_ground_truth(i, 1)
    monitor.flush()
    monitor.close()
    return d


@pytest.fixture
def workdir(files, tmp_path, monkeypatch) -> Path:
    """A fresh copy of the files, as the working directory."""
    shutil.copytree(files, tmp_path, dirs_exist_ok=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------- python


def given_monitor(digits, mlp) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    ids = [f"req-{i}" for i in range(100, 132)]
    return {"latency_ms": 1.7, "label": 3, "latencies": rng.gamma(2.0, 1.0, 32), "ids": ids,
            "labels": rng.integers(0, 10, 32), "true_label": 3}  # fmt: skip


def given_optimize(digits, mlp) -> dict[str, Any]:
    import nimbleml

    _, Xte, _, yte = digits
    return {"nimbleml": nimbleml, "model": mlp, "X": Xte, "y": yte}


def given_openvino(digits, mlp) -> dict[str, Any]:
    pytest.importorskip("openvino")  # the 'openvino' extra: the suite passes without it
    return given_optimize(digits, mlp)


def given_runtime(digits, mlp) -> dict[str, Any]:
    from nimbleml.monitor import ModelMonitor

    _, Xte, _, _ = digits
    monitor = ModelMonitor(store="sqlite:///:memory:", resources_interval_s=None)
    return {"monitor": monitor, "x": Xte[:1], "X": Xte}


def given_train(digits, mlp) -> dict[str, Any]:
    import torch

    Xtr, Xte, ytr, yte = digits
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    return {"model": model, "X_train": Xtr, "y_train": ytr, "X_val": Xte, "y_val": yte}


def given_profile(digits, mlp) -> dict[str, Any]:
    Xtr, Xte, ytr, _ = digits
    return {"model": mlp, "X": Xte, "X_train": Xtr, "y_train": ytr}


def given_qat(digits, mlp) -> dict[str, Any]:
    Xtr, Xte, ytr, yte = digits
    return {"model": mlp, "X_train": Xtr, "y_train": ytr, "X_val": Xte, "y_val": yte}


def given_distill(digits, mlp) -> dict[str, Any]:
    Xtr, Xte, ytr, yte = digits
    return {"teacher": mlp, "X_train": Xtr, "y_train": ytr, "X_val": Xte, "y_val": yte}


def given_cost(digits, mlp) -> dict[str, Any]:
    import nimbleml
    from nimbleml.bench import TimingConfig

    _, Xte, _, _ = digits
    timing = TimingConfig(time_budget_s=0.05)
    return {"report": nimbleml.benchmark([mlp], Xte, batch_sizes=(1,), timing=timing)}


# names a file's python blocks take from the text around them (the model, the data)
GIVEN = {
    "docs/cost.md": given_cost,
    "docs/distill.md": given_distill,
    "docs/train.md": given_train,
    "docs/monitor.md": given_monitor,
    "docs/openvino.md": given_openvino,
    "docs/optimize.md": given_optimize,
    "docs/profile.md": given_profile,
    "docs/qat.md": given_qat,
    "docs/runtime.md": given_runtime,
}


def close_all(namespace: dict[str, Any]) -> None:
    """Close what the blocks opened (a monitor's thread, a cache's connections), newest first."""
    for value in reversed(list(namespace.values())):
        if type(value).__module__.startswith("nimbleml.") and hasattr(value, "close"):
            value.close()


PYTHON_DOCS = sorted({b.doc for b, how in HANDLED if how == PYTHON})


@pytest.mark.parametrize("doc", PYTHON_DOCS)
def test_python_blocks_run(doc, workdir, digits, mlp):
    blocks = [b for b, how in HANDLED if b.doc == doc and how == PYTHON]
    redis = None
    if any(REDIS in b.text for b in blocks):
        from tests.runtime.conftest import RedisServer

        redis = RedisServer(free_port())
        redis.start()
    namespace: dict[str, Any] = {"__name__": "docs"}
    try:
        namespace.update(GIVEN.get(doc, lambda *_: {})(digits, mlp))
        for b in blocks:  # padded so that a traceback names the doc's own line
            code = "\n" * b.line + substitute(b.text, redis=redis.url if redis else "")
            exec(compile(code, str(ROOT / doc), "exec"), namespace)
    finally:
        close_all(namespace)
        if redis is not None:
            redis.stop()


# ---------------------------------------------------------------------------- commands


def command_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NIMBLEML_KEY_PASSPHRASE", None)  # keys in the docs' commands are unencrypted
    return env


def run_command(line: str, cwd: Path) -> None:
    argv = shlex.split(substitute(line))
    assert argv[0] == "nimbleml"
    if argv[1] == "serve":
        serve_until_ready(argv, cwd)
        return
    proc = subprocess.run(
        [NIMBLEML, *argv[1:]], cwd=cwd, capture_output=True, text=True, timeout=300,
        env=command_env(),
    )  # fmt: skip
    assert proc.returncode == 0, (
        f"`{line}` exited {proc.returncode}:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    )


def serve_until_ready(argv: list[str], cwd: Path) -> None:
    """``nimbleml serve ...`` on a free port until /v2/health/ready answers 200, then stopped
    (SIGTERM, then SIGKILL after 20 s): no process is left behind."""
    import httpx

    port = free_port()
    if "--port" in argv:
        argv[argv.index("--port") + 1] = str(port)
    else:
        argv += ["--port", str(port)]
    host = argv[argv.index("--host") + 1] if "--host" in argv else "127.0.0.1"
    log_path = cwd / "serve.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [NIMBLEML, *argv[1:]], cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
            env=command_env(),
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 90
            while True:
                try:
                    answer = httpx.get(f"http://{host}:{port}/v2/health/ready", timeout=2)
                    if answer.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"`{shlex.join(argv)}` never got ready:\n{log_path.read_text()}")
                time.sleep(0.1)
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@pytest.mark.parametrize("block", of_kind(COMMANDS))
def test_commands_run(block, request):
    lines = command_lines(block)
    if all(not_run_reason(line) for line in lines):
        why = dict.fromkeys(not_run_reason(line) for line in lines)
        pytest.skip(f"not run here: {', '.join(lines)}: {'; '.join(map(str, why))}")
    workdir = request.getfixturevalue("workdir")  # made only for a block with lines to run
    for name, source in BLOCK_FILES.get(block.id, {}).items():
        (workdir / name).write_text(BY_ID[source].text)
    for line in lines:
        if not_run_reason(line) is None:
            run_command(line, workdir)


@pytest.mark.parametrize("block", of_kind(SYNOPSIS))
def test_synopsis_options_exist_and_its_command_runs(block, workdir):
    import typer.main

    from nimbleml.cli import app

    (line,) = command_lines(block)
    verb = line.split()[1]
    command = typer.main.get_command(app).commands[verb]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    shown = set(re.findall(r"(--[a-z][a-z-]*)", line))
    assert shown and shown <= options, f"options the CLI lacks: {sorted(shown - options)}"
    bare = line
    while "[" in bare:  # optional groups, innermost first: [--api-key KEY [--public-metrics]]
        bare, n = re.subn(r"\s*\[[^\[\]]*\]", "", bare)
        assert n, f"unbalanced brackets in `{line}`"
    run_command(bare, workdir)


# ---------------------------------------------------------------------------- yaml, json, text


@pytest.mark.parametrize("block", of_kind(SERVE_YAML))
def test_serve_yaml_is_read_by_serve(block, workdir):
    import yaml

    from nimbleml.serve.launch import make_spec, model_map

    given = yaml.safe_load(block.text)
    (workdir / "serve.yaml").write_text(block.text)
    spec = make_spec({}, workdir / "serve.yaml")
    assert spec["models"] == model_map(given["models"])
    for key, value in given.items():
        if key != "models":
            assert spec[key.replace("-", "_")] == value
    # the comment's other form names the same models
    assert model_map(["digits.nimble", "iris=iris.nimble"]) == spec["models"]


@pytest.mark.parametrize("block", of_kind(ENSEMBLE_YAML))
def test_ensemble_yaml_is_read_by_ensemble(block, workdir):
    import yaml

    from nimbleml.cli.ensemble import read_config

    (workdir / "ensemble.yaml").write_text(block.text)
    settings = read_config(workdir / "ensemble.yaml")
    flat = {k: v for section in yaml.safe_load(block.text).values() for k, v in section.items()}
    assert settings == flat


@pytest.mark.parametrize("block", of_kind(TRAIN_OPTIONS))
def test_train_command_lines_use_the_train_options(block):
    import typer.main

    from nimbleml.cli import app

    command = typer.main.get_command(app).commands["train"]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    for line in command_lines(block):
        if line.startswith("torchrun "):  # torchrun's own options, then the train command's
            assert " -m nimbleml.cli.rank " in line, line
            line = line.split(" -m nimbleml.cli.rank ", 1)[1]
        else:
            assert line.startswith("nimbleml train "), line
        shown = set(re.findall(r"(?:^|\s)(--?[a-z][a-z-]*)", line))
        assert shown <= options, f"{line}: options the train command lacks: {shown - options}"


@pytest.mark.parametrize("block", of_kind(DISTILL_OPTIONS))
def test_distill_command_lines_use_the_distill_options(block):
    import typer.main

    from nimbleml.cli import app

    command = typer.main.get_command(app).commands["distill"]  # type: ignore[attr-defined]
    options = {opt for param in command.params for opt in [*param.opts, *param.secondary_opts]}
    for line in command_lines(block):
        assert line.startswith("nimbleml distill "), line
        shown = set(re.findall(r"(?:^|\s)(--?[a-z][a-z-]*)", line))
        assert shown <= options, f"{line}: options the distill command lacks: {shown - options}"


@pytest.mark.parametrize("block", of_kind(TRAIN_YAML))
def test_train_yaml_is_read_by_train(block, tmp_path):
    import yaml

    from nimbleml.cli.train import read_config

    (tmp_path / "train.yaml").write_text(block.text)
    settings = read_config(tmp_path / "train.yaml")
    flat = {k: v for section in yaml.safe_load(block.text).values() for k, v in section.items()}
    assert settings == flat


@pytest.mark.parametrize("block", of_kind(TUNE_YAML))
def test_tune_yaml_is_read_by_tune(block, tmp_path, monkeypatch, digits):
    import yaml

    from nimbleml.cli.tune import read_config

    Xtr, Xte, ytr, yte = digits
    np.savez(tmp_path / "train.npz", X=Xtr, y=ytr)
    np.savez(tmp_path / "val.npz", X=Xte, y=yte)
    (tmp_path / "mypkg").mkdir()
    (tmp_path / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "mypkg" / "models.py").write_text("def build(hidden):\n    return hidden\n")
    (tmp_path / "tune.yaml").write_text(block.text)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = read_config(tmp_path / "tune.yaml")
    written = yaml.safe_load(block.text)
    assert spec["study"] == written["study"]
    assert set(spec["space"]) == set(written["space"])
    assert spec["objective"]["model"](hidden=3) == 3 and len(spec["objective"]["train"][0]) == len(
        Xtr
    )


def key_paths(value: Any, prefix: str = "") -> set[str]:
    """Every key's path in a JSON value (a list's items at ``[]``)."""
    if isinstance(value, dict):
        out = set()
        for key, item in value.items():
            out |= {f"{prefix}.{key}"} | key_paths(item, f"{prefix}.{key}")
        return out
    if isinstance(value, list):
        return set().union(*(key_paths(item, f"{prefix}[]") for item in value))
    return set()


@pytest.mark.parametrize("block", of_kind(REPORT_JSON))
def test_report_json_has_the_keys_the_code_writes(block, digits, mlp):
    import nimbleml
    from nimbleml.bench import TimingConfig

    _, Xte, _, yte = digits
    report = nimbleml.benchmark(
        [mlp], Xte[:64], batch_sizes=(1,), names=["mlp"], val=(Xte[:64], yte[:64]),
        timing=TimingConfig(time_budget_s=0.05),
    )  # fmt: skip
    real = json.loads(report.to_json())
    shown = json.loads(block.text)
    libraries = ".machine.libraries."  # a map of library versions: the doc shows one
    real_keys = {p for p in key_paths(real) if not p.startswith(libraries)}
    shown_keys = {p for p in key_paths(shown) if not p.startswith(libraries)}
    assert shown_keys == real_keys
    assert {p for p in key_paths(shown) if p.startswith(libraries)} <= key_paths(real)


@pytest.mark.parametrize("block", of_kind(SERVE_JSON))
def test_serve_report_json_is_what_the_code_writes_and_reads(block):
    from nimbleml.cost import estimate_cost, serve_report

    shown = json.loads(block.text)
    real = serve_report(shown["models"], 25.0, "load", machine=shown["machine"])
    assert key_paths(shown) == key_paths(real)
    assert estimate_cost(serve_report=shown, clouds="aws").serving


@pytest.mark.parametrize("block", of_kind(PACKAGE_TREE))
def test_package_tree_names_a_real_packages_files(block, files):
    named = set(re.findall(r"^\s+(\S+\.\w+)\s", block.text, flags=re.M))
    held = {p.name for p in (files / "model.nimble").iterdir()}
    assert held <= named, f"files the tree does not show: {sorted(held - named)}"
