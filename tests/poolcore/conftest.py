"""poolcore's test plumbing: torch.compile's on-disk caches, on for every test here.

Compile, export and ONNX tests take most of this directory's time, and most of that is inductor
generating and compiling C++ for a graph. Inductor's FX graph cache and AOTAutograd's cache store each
compiled graph on disk, keyed by the graph, its guards and the configuration, so a graph that an earlier
test or an earlier run compiled is loaded, not compiled again; a changed operator changes the key, so a
stale entry is never used. The cache lives in ``TORCHINDUCTOR_CACHE_DIR`` when set, else in torch's
default, ``/tmp/torchinductor_<user>``, which outlives a checkout: a fresh clone on a machine that ran the
tests before starts warm.
"""

from __future__ import annotations

import os

import torch._functorch.config
import torch._inductor.config

# On by default in the torch we pin; set here so that a release that changes the default does not make the
# suite several times slower unnoticed. An explicit choice in the environment still wins.
if "TORCHINDUCTOR_FX_GRAPH_CACHE" not in os.environ:
    torch._inductor.config.fx_graph_cache = True
if "TORCHINDUCTOR_AUTOGRAD_CACHE" not in os.environ:
    torch._functorch.config.enable_autograd_cache = True
