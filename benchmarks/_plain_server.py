"""A plain FastAPI endpoint calling the same model, for the side-by-side comparison."""

import sys

import numpy as np
import uvicorn
from fastapi import FastAPI, Request

import nimbleml

pkg = nimbleml.load(sys.argv[1])
model = pkg.model
name = model.input_names[0]
app = FastAPI()


@app.post("/predict")
async def predict(request: Request) -> dict:
    body = await request.json()
    x = np.asarray(body["inputs"][0]["data"], dtype=np.float32).reshape(body["inputs"][0]["shape"])
    out = model.run({name: x})
    return {"outputs": [{"data": np.asarray(out[0]).reshape(-1).tolist()}]}


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
