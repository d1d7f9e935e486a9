"""The plain FastAPI endpoint a user writes in ten minutes: the peer ``bench/service.py`` measures
poolserve against.

Written the way FastAPI's docs show, on purpose without poolserve's machinery: an ``async def`` route,
``await request.body()``, orjson + ``np.asarray`` for JSON and ``np.load`` for npy, ``F.avg_pool2d``
inline on the event loop, ``orjson`` (``OPT_SERIALIZE_NUMPY``) or ``np.save`` back. It checks nothing,
so it is an upper bound on speed, not a safe server.

    uvicorn bench.peers.plain_fastapi:app --port 8001
"""

from __future__ import annotations

import io

import numpy as np
import orjson
import torch
import torch.nn.functional as F
from fastapi import FastAPI, Request, Response

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.post("/pool/avg")
async def pool_avg(request: Request, kernel_size: int = 2) -> Response:
    body = await request.body()
    if request.headers.get("content-type", "").startswith("application/x-npy"):
        x = np.load(io.BytesIO(body), allow_pickle=False)
        with torch.inference_mode():
            y = F.avg_pool2d(torch.from_numpy(x), kernel_size)
        out = io.BytesIO()
        np.save(out, y.numpy())
        return Response(out.getvalue(), media_type="application/x-npy")
    doc = orjson.loads(body)
    x = np.asarray(doc["data"], dtype=np.float32)
    with torch.inference_mode():
        y = F.avg_pool2d(torch.from_numpy(x), doc.get("params", {}).get("kernel_size", kernel_size))
    answer = {"shape": list(y.shape), "dtype": "float32", "data": y.numpy()}
    return Response(orjson.dumps(answer, option=orjson.OPT_SERIALIZE_NUMPY), media_type="application/json")
