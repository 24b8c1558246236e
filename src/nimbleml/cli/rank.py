"""One process of ``nimbleml train --nproc N``: ``python -m nimbleml.cli.rank ARGS`` runs
``nimbleml train ARGS`` here, as one rank of the process group torchrun describes (RANK,
WORLD_SIZE, MASTER_ADDR...). The train verb has torchrun start it (``train.launch.relaunch``
with :data:`ENTRY`); on more machines, start it under torchrun yourself (docs/train.md,
"Distributed")::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d \\
        --rdzv-endpoint HOST:29400 --rdzv-id run1 -m nimbleml.cli.rank --model ... --data ...

What every rank does around the command (its stderr to the parent's status folder, the
threads, ending with torchrun, its exit code for the parent) is ``train.launch.run_rank``.
"""

from __future__ import annotations

import sys

from ..train.launch import run_rank

ENTRY = "nimbleml.cli.rank"  # this module, as torchrun's -m names it


def main(argv: list[str] | None = None) -> None:
    """``nimbleml train ARGS`` (``nimbleml --debug train ARGS`` when the parent was given
    --debug) in this process; exits with its code."""
    args = sys.argv[1:] if argv is None else argv

    def train(debug: bool) -> None:
        from . import app

        app(["--debug", "train", *args] if debug else ["train", *args], prog_name="nimbleml")

    run_rank(train)


if __name__ == "__main__":
    main()
