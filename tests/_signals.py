"""Children that take Ctrl-C: a test run in the background (``make test &``, a CI runner's
shell) inherits SIGINT ignored, and Python then keeps it ignored, so a child started from it
would never see the SIGINT a test sends. ``popen(..., preexec_fn=default_sigint)`` gives it
back."""

from __future__ import annotations

import signal


def default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
