"""``poolserve`` itself in a subprocess, with what the connection and logging tests need beyond
:func:`.support.live_server_process`: both output streams in files, extra arguments, and a function run in
the child before it starts (a file limit, say)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .support import ROOT, wait_ready

__all__ = ["Poolserve", "poolserve", "rss_bytes"]


@dataclass(frozen=True)
class Poolserve:
    url: str
    process: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def lines(self, stream: str = "stderr") -> list[str]:
        return (self.stdout if stream == "stdout" else self.stderr).read_text(errors="replace").splitlines()


@contextmanager
def poolserve(
    tmp: Path,
    env: Mapping[str, str] | None = None,
    *,
    args: tuple[str, ...] = (),
    preexec_fn: Callable[[], None] | None = None,
    timeout: float = 180.0,
) -> Iterator[Poolserve]:
    """``python -m service --fd N`` on a free loopback port (bound here, so no other process can take
    it), on the CPU; its stdout and stderr go to files in ``tmp``. Stopped (SIGTERM) at the end."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    port = sock.getsockname()[1]
    full_env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(tmp / "gradio"),  # its own page cache (support.live_server_process)
        "POOLSERVE_DEVICE": "cpu",
        **(env or {}),
    }
    out, err = tmp / "stdout.log", tmp / "stderr.log"
    command = [sys.executable, "-m", "service", "--fd", str(sock.fileno()), *args]
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = subprocess.Popen(
            command,
            cwd=ROOT,
            env=full_env,
            pass_fds=(sock.fileno(),),
            stdout=out_file,
            stderr=err_file,
            preexec_fn=preexec_fn,
        )
    sock.close()  # the child holds its own copy
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, proc, timeout, "poolserve", lambda: f": {err.read_text()[-2000:]}")
        yield Poolserve(base, proc, out, err)
    finally:
        if proc.poll() is None:
            proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def rss_bytes(pid: int) -> int:
    """The process's resident set (VmRSS), as the issue measures memory."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for process {pid}")
