"""poolserve's peer on LitServe (``bench/service.py``): the documented ``LitAPI`` JSON API, one worker.

``decode_request`` gets the parsed JSON body, ``predict`` runs ``F.avg_pool2d``, ``encode_response``
returns a dict, as LitServe's quick start does. LitServe answers on ``/predict`` (JSON only).

    python bench/peers/litserve_api.py 8002
"""

from __future__ import annotations

import sys
from typing import Any

import litserve as ls
import numpy as np
import torch
import torch.nn.functional as F


class PoolAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.device = device

    # Unannotated, as in LitServe's docs: LitServe reads this annotation to choose how it parses the body.
    def decode_request(self, request):
        x = torch.from_numpy(np.asarray(request["data"], dtype=np.float32))
        return x, int(request.get("params", {}).get("kernel_size", 2))

    def predict(self, x: tuple[torch.Tensor, int]) -> torch.Tensor:
        tensor, kernel_size = x
        with torch.inference_mode():
            return F.avg_pool2d(tensor.to(self.device), kernel_size)

    def encode_response(self, output: torch.Tensor) -> dict[str, Any]:
        return {"shape": list(output.shape), "dtype": "float32", "data": output.cpu().tolist()}


if __name__ == "__main__":
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    server = ls.LitServer(PoolAPI(), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
