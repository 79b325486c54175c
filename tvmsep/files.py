"""Files other processes may read while we write them: checksums, atomic publishing and
append-only JSON lines."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
import tempfile
from pathlib import Path
from typing import Any, Callable

__all__ = ["file_sha256", "publish", "JsonLines"]


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def publish(path: Path, write: Callable[[str], None]) -> None:
    """Write via `write(tmp_path)` into the same directory, fsync, then rename over `path`:
    readers see the old file or the whole new one, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


class JsonLines:
    """One append-only JSON-lines file that several processes append to: whole lines in,
    whole lines out. A line is appended with one write and synced, so a writer killed
    at any moment leaves at most a partial last line, which readers stop before and
    the next writer trims."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0  # bytes already parsed

    def trim_partial_tail(self) -> None:
        """Drop a last line without its newline: a writer died in the middle of it."""
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            warnings.warn(f"{self.path}: dropping an unfinished last line ({len(data) - keep} bytes) "
                          "left by an interrupted job", stacklevel=3)
            with open(self.path, "r+b") as f:
                f.truncate(keep)

    def read_new(self) -> list[Any]:
        """Parsed lines appended since the last call; stops before a partial last line."""
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read()
        complete = data[:data.rfind(b"\n") + 1]
        self.offset += len(complete)
        rows = []
        for line in complete.splitlines():
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    warnings.warn(f"{self.path}: skipping an unreadable line", stacklevel=3)
                    rows.append(None)  # keeps line numbers (workload indices) aligned
        return rows

    def append(self, row: Any) -> None:
        line = (json.dumps(row, separators=(",", ":")) + "\n").encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
