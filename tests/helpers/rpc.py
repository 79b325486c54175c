"""A TVM RPC tracker and servers on 127.0.0.1 for the tests that measure over RPC, and the
cleanup that leaves none of their processes behind."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Sequence


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kill_with_its_workers(process: subprocess.Popen) -> None:
    """SIGKILL `process`, started with start_new_session=True, and every process it started:
    TVM's measuring workers outlive a killed parent, so they are found by its process group."""
    process.kill()
    process.wait()
    with contextlib.suppress(ProcessLookupError):  # none was left
        os.killpg(process.pid, signal.SIGKILL)


def start_tracker() -> tuple[subprocess.Popen, int]:
    """(the tracker's process, its port), listening on 127.0.0.1."""
    port = free_port()
    tracker = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                "--port", str(port), "--port-end", str(port + 1)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return tracker, port


def start_server(tracker_port: int, key: str, python: Sequence[str] = (sys.executable,),
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """An RPC server on 127.0.0.1 registered with the tracker under `key`, run by `python`."""
    port = free_port()
    return subprocess.Popen(
        [*python, "-m", "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{tracker_port}", "--key", key,
         "--host", "127.0.0.1", "--port", str(port), "--port-end", str(port + 50)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=env)


def wait_for_servers(tracker_port: int, key: str, count: int, timeout: float) -> None:
    """Wait until `count` servers are registered under `key`."""
    from tvm import rpc
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):  # the tracker may not be listening yet
            queue = rpc.connect_tracker("127.0.0.1", tracker_port).summary()["queue_info"]
            if queue.get(key, {}).get("free", 0) >= count:
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} RPC servers under {key!r} did not register in {timeout} s")
        time.sleep(1)
