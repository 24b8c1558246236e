"""A plain FastAPI endpoint calling the same model, for the side-by-side comparison: what
a team would write by hand (one JSON route, the model called in the handler, no batching,
no cache, no queue limit). Same uvicorn (with uvloop and httptools) as nimbleml serve.
``POST /floor`` answers a constant from a bare ASGI function: what HTTP over loopback,
uvicorn and the load generator cost before any server code runs.

    python benchmarks/_plain_server.py PACKAGE --port PORT
"""

import sys

import numpy as np
import uvicorn
from fastapi import FastAPI, Request

import nimbleml

pkg = nimbleml.load(sys.argv[1])
model = pkg.model
name = model.input_names[0]
app = FastAPI()


@app.get("/health")
async def health() -> dict:
    return {"ok": True}


@app.post("/predict")
async def predict(request: Request) -> dict:
    body = await request.json()
    tensor = body["inputs"][0]
    x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
    out = model.run({name: x})
    return {"outputs": [{"data": np.asarray(out[0]).reshape(-1).tolist()}]}


FLOOR = b'{"outputs":[]}'


async def floor(scope: dict, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] == "http" and scope["path"] == "/floor":
        await receive()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"14")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": FLOOR})
        return
    await app(scope, receive, send)


uvicorn.run(floor, host="127.0.0.1", port=int(sys.argv[3]), log_level="warning")
