"""Network helpers for tests and benchmarks: servers listen on 127.0.0.1 only."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def v2_body(x, **extra) -> dict:  # type: ignore[no-untyped-def]
    """An Open Inference Protocol request for one input named 'input': FP32, or FP64 for a
    float64 array."""
    return {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP64" if x.dtype == "float64" else "FP32",
                "data": x.reshape(-1).tolist(),
            }
        ],
        **extra,
    }
