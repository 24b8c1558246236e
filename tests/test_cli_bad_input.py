"""Every CLI verb fed careless input: one `error: ...` line naming the problem, exit code 2,
no traceback, nothing written (issue 11, "Make it systematic")."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import typer.main
from typer.testing import CliRunner

from nimbleml.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def f(tmp_path_factory, mlp, digits):
    d = tmp_path_factory.mktemp("bad")
    _, Xte, _, yte = digits
    torch.jit.save(torch.jit.trace(mlp, torch.from_numpy(Xte[:2])), str(d / "m.ts"))
    np.savez(d / "val.npz", X=Xte, y=yte)
    np.savez(d / "narrow.npz", X=Xte[:, :63], y=yte)
    np.savez(d / "nan.npz", X=np.where(np.eye(len(Xte), 64) > 0, np.nan, Xte), y=yte)
    np.savez(d / "huge.npz", X=Xte.astype(np.float64) * 1e300, y=yte)
    np.savez(d / "empty.npz", X=Xte[:0], y=yte[:0])
    np.savez(d / "xonly.npz", X=Xte)
    import nimbleml

    nimbleml.compress(mlp, quantize=None, val=(Xte, yte), benchmark_time_s=0.01).save(
        d / "pkg.nimble"
    )
    np.savez(d / "flat.npz", X=Xte[0], y=yte[:1])
    (d / "garbage.npz").write_bytes(b"this is not a zip file")
    (d / "garbage.ts").write_bytes(b"\x00\x01 not torchscript")
    (d / "text.csv").write_text("a,b\nx,y\n")
    (d / "bad.yaml").write_text("max-batch-size: lots\n")
    (d / "nas.yaml").write_text("search: {n_trials: lots}\n")
    (d / "list.yaml").write_text("- 1\n- 2\n")
    (d / "ens.yaml").write_text("ensemble:\n  fusion_method: magic\n")
    (d / "store.db").write_bytes(b"not sqlite at all")
    (d / "serve.json").write_text(  # a serve report (benchmarks/serve.py --json) for `cost`
        '{"schema": 1, "kind": "nimbleml-serve-capacity", "target_p99_ms": 25, "machine": '
        '{"cpu": "x", "logical_cores": 2}, "models": [{"name": "iris", "capacity_rps": 900, '
        '"p99_ms": 18.0, "max_batch_size": 32}]}'
    )
    return d


# each case: argv with {d} for the fixture folder, and words the error line must hold
CASES = {
    "compress": [
        ("compress {d}/missing.ts -o {d}/o1", "not found"),
        ("compress {d}/garbage.ts -o {d}/o1", "garbage.ts"),
        ("compress {d}/m.ts --val {d}/garbage.npz -o {d}/o1", "garbage.npz"),
        ("compress {d}/m.ts --val {d}/narrow.npz -o {d}/o1", "takes 64 features"),
        ("compress {d}/m.ts --val {d}/nan.npz -o {d}/o1", "NaN"),
        ("compress {d}/m.ts --val {d}/huge.npz -o {d}/o1", "range of float32"),
        ("compress {d}/m.ts --val {d}/empty.npz -o {d}/o1", "no rows"),
        ("compress {d}/m.ts --val {d}/text.csv -o {d}/o1", "numbers only"),
        ("compress {d}/m.ts --quantize int3 -o {d}/o1", "not a valid quantization"),
        ("compress {d}/m.ts --prune 1.5 --val {d}/val.npz -o {d}/o1", "between 0 and 1"),
        ("compress {d}/m.ts --metric bogus --val {d}/val.npz -o {d}/o1", "unknown metric"),
        ("compress {d}/m.ts --max-drop -1 --val {d}/val.npz -o {d}/o1", "--max-drop must be >= 0"),
        ("compress {d}/m.ts --max-drop 0.1 -o {d}/o1", "--max-drop needs --val"),
        ("compress {d}/m.ts --val {d}/val.npz -o {d}/val.npz", "exists and is a file"),
        ("compress {d}/m.ts --val {d}/val.npz -o /proc/nope.nimble", "cannot write"),
    ],
    "bench": [
        ("bench {d}/m.ts --data {d}/missing.npz", "not found"),
        ("bench {d}/m.ts --data {d}/garbage.npz", "garbage.npz"),
        ("bench {d}/m.ts --data {d}/narrow.npz --time-budget 0.1", "64 features"),
        ("bench {d}/m.ts --data {d}/val.npz --batch-size 0", "positive integers"),
        ("bench {d}/m.ts --data {d}/val.npz --batch-size x", "comma-separated integers"),
        ("bench {d}/m.ts --data {d}/val.npz --time-budget -1", "--time-budget must be > 0"),
        ("bench {d}/m.ts --data {d}/val.npz --metric mse --time-budget 0.1", "mse"),
        ("bench {d}/m.ts --data {d}/val.npz --json /proc/x.json", "cannot write"),
        ("bench {d}/m.ts --data {d}/huge.npz --time-budget 0.1", "range of float32"),
    ],
    "inspect": [
        ("inspect {d}/missing.nimble", "missing.nimble"),
        ("inspect {d}", "manifest"),
        ("inspect {d}/val.npz", "val.npz"),
    ],
    "optimize": [
        ("optimize {d}/m.ts --val {d}/narrow.npz -o {d}/o2", "64 features"),
        ("optimize {d}/m.ts --val {d}/nan.npz -o {d}/o2", "NaN"),
        ("optimize {d}/m.ts --val {d}/val.npz --objective speed -o {d}/o2", "objective"),
        ("optimize {d}/m.ts --val {d}/val.npz --time-budget -5 -o {d}/o2", "time"),
        ("optimize {d}/m.ts --val {d}/val.npz -o {d}/o2 --report /proc/r", "cannot write"),
        (
            "optimize {d}/m.ts --val {d}/val.npz --train-data {d}/xonly.npz -o {d}/o2",
            "needs labels",
        ),
        (
            "optimize {d}/m.ts --val {d}/val.npz --train-data {d}/val.npz --qat-epochs 0 -o {d}/o2",
            "epochs",
        ),
    ],
    "report": [
        ("report --monitor {d}/none.db -o {d}/r1", "not found"),
        ("report --monitor {d}/store.db -o {d}/r1", "store.db"),
        ("report --monitor postgres://nope -o {d}/r1", "postgres"),
    ],
    "serve": [
        ("serve {d}/missing.nimble", "not a .nimble package"),
        ("serve {d}/val.npz --port 99999", "not a .nimble package"),
        ("serve --config {d}/bad.yaml", "max_batch_size must be an integer"),
        ("serve --config {d}/list.yaml", "must hold a mapping"),
        ("serve --config {d}/nothing.yaml", "does not exist"),
        ("serve", "no packages"),
    ],
    "ensemble": [
        ("ensemble {d}/missing.nimble --data {d}/val.npz", "missing.nimble"),
        ("ensemble --config {d}/ens.yaml --data {d}/val.npz", "fusion_method"),
        ("ensemble {d}/m.ts {d}/m.ts --data {d}/garbage.npz", "garbage.npz"),
        ("ensemble {d}/m.ts {d}/m.ts --data {d}/narrow.npz", "64 features"),
        ("ensemble {d}/m.ts {d}/m.ts --data {d}/val.npz -o /proc/p.npz", "cannot write"),
        ("ensemble {d}/m.ts {d}/m.ts --data {d}/val.npz --fusion magic", "fusion"),
    ],
    "sign": [
        ("sign {d}/missing.nimble --key {d}/missing.pem", "missing"),
        ("verify {d}/missing.nimble --key {d}/val.npz", "missing.nimble"),
        ("keygen {d}/val.npz", "val.npz"),
    ],
    "train": [
        ("train --model nope_mod:build --data {d}/val.npz", "no module named 'nope_mod'"),
        ("train --model nope_mod:build --data {d}/missing.npz", "not found"),
        ("train --model nope_mod:build --data {d}/val.npz --batch-size 0", "--batch-size"),
        ("train --model nope_mod:build --data {d}/val.npz --precision fp8", "fp8"),
        ("train --model nope_mod:build --data {d}/val.npz --config {d}/ens.yaml", "ensemble"),
        ("train --model nope_mod:build --data {d}/empty.npz", "no rows"),
        ("train --model nope_mod:build --data {d}/val.npz --save-model /proc/w.pt", "cannot write"),
    ],
    "distill": [
        (
            "distill --teacher nope_mod:build --data {d}/val.npz --val {d}/val.npz",
            "no module named",
        ),
        (
            "distill --teacher nimbleml.demo:digits --data {d}/missing.npz --val {d}/val.npz",
            "not found",
        ),
        (
            "distill --teacher x:y --data {d}/val.npz --val {d}/val.npz --cache-teacher yes",
            "--cache-teacher",
        ),
        (
            "distill --teacher x:y --data {d}/val.npz --val {d}/val.npz -o /proc/s.nimble",
            "cannot write",
        ),
    ],
    "nas": [
        ("nas --family rnn --data {d}/val.npz --val {d}/val.npz -o {d}/front", "family must be"),
        ("nas --data {d}/val.npz --val {d}/val.npz --n-trials 0 -o {d}/front", "--n-trials"),
        ("nas --data {d}/missing.npz --val {d}/val.npz -o {d}/front", "not found"),
        ("nas --data {d}/val.npz --val {d}/val.npz -o /proc/front", "cannot write"),
        ("nas --val {d}/val.npz -o {d}/front", "no train: give --data"),
        ("nas --config {d}/bad.yaml -o {d}/front", "unknown section"),
        (
            "nas --config {d}/nas.yaml --data {d}/val.npz --val {d}/val.npz -o {d}/front",
            "search.n_trials must be a whole number",
        ),
        ("nas --config {d}/val.npz", "is not a text file"),
    ],
    "predict": [
        ("predict {d}/missing.nimble --data {d}/val.npz --out {d}/p.csv", "missing.nimble"),
        ("predict {d}/pkg.nimble --data {d}/missing.csv --out {d}/p.csv", "not found"),
        ("predict {d}/pkg.nimble --data {d}/val.npz --out {d}/p.json", "writes .csv, .parquet"),
        ("predict {d}/pkg.nimble --data {d}/narrow.npz --out {d}/p.csv", "takes 64 features"),
        ("predict {d}/pkg.nimble --data {d}/val.npz --out {d}/p.csv --batch-size 0", "batch_size"),
        (
            "predict {d}/pkg.nimble --data {d}/val.npz --out {d}/p.csv --ray auto",
            "on Ray, predict reads",
        ),
        (
            "predict {d}/pkg.nimble --data {d}/text.csv --out {d}/p.csv --ray auto --workers 0",
            "workers must be",
        ),
        ("predict {d}/pkg.nimble --data {d}/text.csv --out {d}/p.csv --ray auto", "2 columns"),
    ],
    "deploy": [
        ("deploy {d}/missing.nimble --target docker -o {d}/dep", "does not exist"),
        ("deploy {d}/val.npz --target docker -o {d}/dep", "not a .nimble package"),
        ("deploy {d}/pkg.nimble --target helm -o {d}/dep", "choose one of: docker, compose"),
        ("deploy {d}/pkg.nimble pkg={d}/pkg.nimble -t k8s -o {d}/dep", "two packages are named"),
        ("deploy {d}/pkg.nimble --target docker -o {d}", "not empty; give --force"),
        ("deploy {d}/pkg.nimble --target docker -o {d}/val.npz", "exists and is a file"),
        (
            "deploy {d}/pkg.nimble -t kserve -o {d}/dep --serve-report {d}/val.npz",
            "not a JSON report",
        ),
    ],
    "tune": [
        ("tune --config {d}/missing.yaml", "does not exist"),
        ("tune --config {d}/val.npz", "is not a text file"),  # a binary file (was a crash)
    ],
    "cost": [
        ("cost --cloud aws", "nothing to estimate from"),
        ("cost --report {d}/missing.json", "not found"),
        ("cost --report {d}/garbage.npz", "not a JSON report"),
        ("cost --report {d}/serve.json", "is a serve report: pass it as --serve-report"),
        ("cost --serve-report {d}/serve.json --cloud aws,ibm", "choose from aws, azure, gcp"),
        ("cost --serve-report {d}/serve.json --prices {d}/text.csv", "needs: instance, cloud"),
        ("cost --serve-report {d}/serve.json --rps -5", "(--rps) must be a number > 0"),
        ("cost --serve-report {d}/serve.json --sla-p99-ms -1", "must be a number > 0"),
        ("cost --serve-report {d}/serve.json --sla-p99-ms 5", "meets the p99 SLA of 5 ms"),
        ("cost --serve-report {d}/serve.json --measured-on c9.huge", "not in the price catalog"),
        ("cost --serve-report {d}/serve.json --json /proc/c.json", "cannot write"),
    ],
    "profile": [
        ("profile {d}/missing.nimble --data {d}/val.npz", "model not found"),
        ("profile {d}/pkg.nimble --data {d}/missing.npz", "not found"),
        ("profile {d}/pkg.nimble --data {d}/narrow.npz", "dimension 1 must be 64"),
        ("profile {d}/pkg.nimble --data {d}/val.npz --batch-size 0,8", "positive integers"),
        ("profile {d}/pkg.nimble --data {d}/val.npz --runs 0", "--runs must be"),
        ("profile {d}/pkg.nimble --data {d}/val.npz --loss mse", "add --train"),
        ("profile {d}/pkg.nimble --train --data {d}/val.npz", "on a PyTorch model"),
        ("profile {d}/m.ts --train --data {d}/xonly.npz", "no labels"),
        ("profile {d}/pkg.nimble --data {d}/val.npz -o /proc/prof", "cannot write"),
    ],
    "bench-train": [
        ("bench-train --model nope_mod:build --data {d}/val.npz -o {d}/bt", "no module named"),
        ("bench-train --model nimbleml.demo:digits --data {d}/missing.npz -o {d}/bt", "not found"),
        ("bench-train --model nimbleml.demo:digits --data {d}/val.npz --epochs 0", "--epochs"),
        ("bench-train --model nimbleml.demo:digits --data {d}/val.npz --device tpu", "--device"),
        ("bench-train --model nimbleml.demo:digits --data {d}/val.npz --full-suite --lr 0", "--lr"),
        ("bench-train --model nimbleml.demo:digits --data {d}/val.npz -o /proc/b", "cannot write"),
    ],
}
FLAT = [(verb, argv, words) for verb, cases in CASES.items() for argv, words in cases]


def test_every_verb_has_bad_input_cases():
    from nimbleml.cli import EXAMPLES

    covered = {argv.split()[0] for _, argv, _ in FLAT}
    verbs = {typer.main.get_command_name(verb.__name__) for verb in EXAMPLES}
    assert verbs - {"demo"} <= covered


@pytest.mark.parametrize(
    "verb, argv, words", FLAT, ids=[f"{v}-{i}" for i, (v, _, _) in enumerate(FLAT)]
)
def test_bad_input_is_one_error_line(f, verb, argv, words):
    before = sorted(p.name for p in f.iterdir())
    res = runner.invoke(app, argv.format(d=f).split())
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert res.exit_code == 2, res.output
    assert isinstance(res.exception, SystemExit), res.exception
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and words in errors[0], res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in f.iterdir()) == before  # nothing written
