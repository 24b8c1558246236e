"""torchrun itself (``torch.distributed.run``), started by ``nimbleml train --nproc N`` as
``python -m nimbleml.train.elastic <torchrun's arguments>``, so that torchrun's own record of
a failure reaches the parent as data: which rank failed, its exit code or the signal that
killed it (``ChildFailedError.failures``, one ``ProcessFailure`` per failed rank). The parent
reads ``failures.json`` from its status folder and says "rank 1 was killed by SIGKILL"
instead of the 'Connection reset by peer' the surviving process saw.

torchrun's report of the failure (its ``ChildFailedError`` text) still goes to this process's
stderr, which the parent shows under ``--debug``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

FAILURES = "failures.json"
STATUS = "NIMBLEML_TRAIN_STATUS"  # launch.STATUS: the parent's status folder


def record(failures: dict[int, Any]) -> list[dict[str, Any]]:
    """One entry per failed rank: rank, local rank, pid, exit code, signal name or None."""
    out = []
    for rank, failure in sorted(failures.items()):
        signal = failure.signal_name() if failure.exitcode < 0 else None
        out.append({"rank": int(rank), "local_rank": int(failure.local_rank),
                    "pid": int(failure.pid), "exitcode": int(failure.exitcode),
                    "signal": signal})  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> None:
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as exc:
        status = os.environ.get(STATUS)
        if status:
            (Path(status) / FAILURES).write_text(json.dumps(record(exc.failures)))
        print(exc.format_msg(), file=sys.stderr, flush=True)
        sys.exit(1)
    except SignalException as exc:  # torchrun stopped its processes with the same signal
        sys.exit(128 + int(exc.sigval))


if __name__ == "__main__":
    main()
