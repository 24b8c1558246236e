"""The launcher's flags of `nimbleml train` (issue 24): `--max-restarts` (torchrun's elastic
agent), `--nnodes` / `--node-rank` / `--rdzv-endpoint` passed to torchrun for a run on many
machines, and the flags that do not go together: one line, exit 2, nothing written, no
process started. The restart itself, with a rank killed by SIGKILL, is in test_fsdp.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from nimbleml.cli import app
from nimbleml.cli.rank import ENTRY
from nimbleml.train import launch
from nimbleml.train.launch import Group


def test_the_torchrun_command_of_a_group():
    cmd = launch.command(ENTRY, ["--data", "x.npz"], Group(2, max_restarts=3), 29555, "/tmp/l")
    assert cmd[1:] == ["-m", "nimbleml.train.elastic", "--nproc_per_node", "2", "--max_restarts",
                       "3", "--master_addr", "127.0.0.1", "--master_port", "29555", "--log-dir",
                       "/tmp/l", "-m", "nimbleml.cli.rank", "--data", "x.npz"]  # fmt: skip
    # machines with fixed numbers: torchrun's static rendezvous (rank 0 always on node 0)
    static = Group(4, max_restarts=1, nnodes=2, node_rank=1, rdzv_endpoint="head:29400")
    assert static.torchrun_args(1) == [
        "--nproc_per_node", "4", "--max_restarts", "1", "--nnodes", "2", "--rdzv_endpoint",
        "head:29400", "--rdzv_id", "nimbleml-train", "--rdzv_backend", "static", "--node_rank", "1",
    ]  # fmt: skip
    # without --node-rank: c10d's rendezvous numbers them as they join
    assert Group(4, nnodes=2, rdzv_endpoint="head:29400").torchrun_args(1)[-2:] == [
        "--rdzv_backend", "c10d"]  # fmt: skip


def test_torchrun_takes_the_arguments_nimbleml_gives_it():
    """The arguments parse with this torch's own torchrun parser, as nimbleml.train.elastic
    reads them."""
    from torch.distributed.run import parse_args

    group = Group(4, max_restarts=2, nnodes=2, node_rank=1, rdzv_endpoint="head:29400")
    args = parse_args(launch.command(ENTRY, ["--data", "x.npz"], group, 1, "/tmp/l")[3:])
    assert (args.nproc_per_node, args.max_restarts, args.nnodes, args.node_rank) == ("4", 2, "2", 1)
    assert (args.rdzv_backend, args.rdzv_endpoint, args.rdzv_id) == ("static", "head:29400",
                                                                    "nimbleml-train")  # fmt: skip
    assert args.module and args.training_script == ENTRY


M = "--model m:build --data train.npz --device cpu"


@pytest.mark.parametrize(("args", "said"), [
    (f"{M} --max-restarts 2 --checkpoint-dir run",
     "--max-restarts 2 restarts the processes torchrun starts, and this run is one process: give "
     "--nproc N (N >= 2), or leave --max-restarts out"),
    (f"{M} --nproc 2 --max-restarts 1",
     "--max-restarts 1 resumes the restarted processes from the last checkpoint: give "
     "--checkpoint-dir DIR"),
    (f"{M} --nproc 2 --max-restarts -1 --checkpoint-dir run", "--max-restarts must be >= 0, got -1"),
    (f"{M} --strategy fsdp --checkpoint-dir run",
     "--strategy fsdp shards the model over several processes, and this run is one: give --nproc "
     "N (N >= 2), or leave --strategy out"),
    (f"{M} --nproc 2 --strategy zero3 --checkpoint-dir run",
     "--strategy 'zero3' is not one of ddp, fsdp"),
    (f"{M} --nproc 2 --fsdp-blocks 0 --checkpoint-dir run",
     "fsdp_blocks names the blocks FSDP shards, and strategy is 'ddp': add strategy='fsdp' "
     "(--strategy fsdp), or leave fsdp_blocks out"),
    (f"{M} --nproc 2 --strategy fsdp --fsdp-blocks , --checkpoint-dir run",
     "--fsdp-blocks takes submodule names separated by commas, got ','"),
    (f"{M} --nproc 2 --nnodes 2 --checkpoint-dir run",
     "--nnodes 2 needs --rdzv-endpoint HOST:PORT, where the machines meet (the same on each; "
     "HOST runs node 0)"),
    (f"{M} --nproc 2 --node-rank 1 --checkpoint-dir run",
     "--node-rank is for a run on several machines: give --nnodes N (N >= 2) on each, or leave "
     "it out"),
    (f"{M} --nproc 2 --nnodes 2 --node-rank 2 --rdzv-endpoint h:1 --checkpoint-dir run",
     "--node-rank must be 0 to 1 (--nnodes 2), got 2"),
])  # fmt: skip
def test_launcher_flags_that_do_not_go_together(tmp_path, monkeypatch, args, said):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    res = CliRunner().invoke(app, ["train", *args.split()])
    assert res.exit_code == 2, res.output
    assert res.output.strip() == f"error: {said}", res.output
    assert list(tmp_path.iterdir()) == []  # nothing written (and no process started)


def test_the_rank_processes_get_the_training_flags_not_the_launchers(monkeypatch, tmp_path):
    """Each process torchrun starts gets the command's own flags (--strategy ...), not the
    launcher's (--nproc, --max-restarts, --nnodes ...): it would launch again, or refuse."""
    seen: dict[str, object] = {}

    def relaunch(entry: str, args: list[str], group: Group, **kw: object) -> int:
        seen.update(entry=entry, args=args, group=group)
        return 0

    monkeypatch.setattr(launch, "relaunch", relaunch)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.py").write_text("def build(): ...\n")
    (tmp_path / "train.npz").write_bytes(b"")
    monkeypatch.syspath_prepend(str(tmp_path))
    res = CliRunner().invoke(app, ["train", "--model", "m:build", "--data", "train.npz",
                                   "--nproc", "2", "--strategy", "fsdp", "--max-restarts", "2",
                                   "--checkpoint-dir", "run", "--nnodes", "2", "--node-rank",
                                   "0", "--rdzv-endpoint", "head:29400"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert seen["args"] == ["--model", "m:build", "--data", "train.npz", "--checkpoint-dir",
                            "run", "--strategy", "fsdp"]  # fmt: skip
    assert seen["group"] == Group(2, 2, 2, 0, "head:29400")


def test_a_restarted_process_sets_the_failed_attempts_log_aside(tmp_path):
    """The parent reads the last attempt's errors only: the failed attempt's rank-R.log (the
    lost-connection error of a survivor) moves to rank-R.log.0, its rank-R.exit goes (the
    parent's relay follows the new log: test_fsdp.py's restart shows its lines)."""
    (tmp_path / "rank-0.log").write_text("error: process 0: lost contact\n")
    (tmp_path / "rank-0.exit").write_text("1")
    launch._set_aside(tmp_path, "0", 1)
    assert (tmp_path / "rank-0.log.0").read_text() == "error: process 0: lost contact\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank-0.log.0"]
    assert list(tmp_path.glob("rank-*.log")) == []  # not an error of this attempt's


def test_no_restart_flag_reaches_a_single_process(tmp_path: Path, monkeypatch):
    """Without --nproc, --nnodes or --max-restarts the command trains here (no torchrun)."""
    from nimbleml.cli.train import _group

    spec = {"nproc": 1, "checkpoint_dir": None, "strategy": "ddp"}
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert _group(spec, None, None, None, None) is None
    assert _group({**spec, "nproc": 2}, 0, None, None, None) == Group(2)


def test_processes_that_do_not_meet_are_a_lost_peer_not_a_bug(monkeypatch):
    """A process group that cannot form because another process is gone (gloo's words,
    seen here before restarted processes kept their keys apart) is the lost-peer error the
    launcher reads as a consequence, not 'a bug in nimbleml'."""
    import numpy as np
    import torch

    from nimbleml.errors import PeerLostError
    from nimbleml.train import loop

    def no_group(device: str, strategy: str = "ddp") -> None:
        raise RuntimeError("Gloo connectFullMesh failed with [pair.cc:152] timed out "
                           "connecting: SO_ERROR: Connection refused, remote=[127.0.0.1]:9136")  # fmt: skip

    monkeypatch.setattr(loop.Distributed, "from_env", staticmethod(no_group))
    monkeypatch.setenv("RANK", "1")
    X, y = np.zeros((8, 4), dtype=np.float32), np.zeros(8, dtype=np.int64)
    with pytest.raises(PeerLostError, match=r"^process 1: lost contact with the other training "
                       r"processes \(RuntimeError\) while the processes met"):  # fmt: skip
        loop.train(torch.nn.Linear(4, 2), (X, y), epochs=1, device="cpu")
