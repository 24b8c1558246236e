"""Children that take Ctrl-C: a test run in the background (``make test &``, a CI runner's
shell) inherits SIGINT ignored, and Python then keeps it ignored, so a child started from it
would never see the SIGINT a test sends. ``popen(..., preexec_fn=default_sigint)`` gives it
back."""

from __future__ import annotations

import ctypes
import signal


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def die_with_parent() -> None:
    """``preexec_fn`` for a server a fixture starts: SIGKILL when the pytest process that
    started it dies. A crashed xdist worker never runs its fixtures' teardown, and a
    redis-server rewrites its environment (its process title), so the controller's sweep
    cannot find it by the run's mark: it stayed up for hours."""
    _PRCTL(1, signal.SIGKILL)  # 1 = PR_SET_PDEATHSIG


# resolved here, not between fork and exec where importing is unsafe
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl
