"""Compiled modules on disk.

Disk layout, one entry per key (a sha256 of everything that changes the
generated code):

    <dir>/<key>.so       the exported library
    <dir>/<key>.sha256   its checksum, written after the library

Writers hold `<key>.lock` (flock) and publish each file by rename, so other
processes never see a half-written library and never compile the same key
twice at once. A library whose checksum does not match is never loaded:
it is rebuilt, with a warning. Entries are never followed through a link: a
linked library is rebuilt in place of the link, and a linked lock replaced. A
cache directory that cannot be created or written, or that other users can
write to, turns the disk cache off (with a warning): kernels are then
compiled in each process, and kept in its memory by the ops.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import stat
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import tvm

from . import build as build_steps
from .files import file_sha256, publish
from .spec import Workload
from .version import __version__

__all__ = ["CacheWarning", "cache_dir", "cache_key", "ModuleCache"]

# Bump when the on-disk layout or the compiled-function convention changes.
FORMAT_VERSION = 1


class CacheWarning(UserWarning):
    """The disk cache was skipped or repaired; results are unaffected."""


def cache_dir() -> Path:
    """`TVMSEP_CACHE_DIR`, else `~/.cache/tvmsep`."""
    env = os.environ.get("TVMSEP_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tvmsep"


def cache_key(wl: Workload, target: tvm.target.Target, trace: Any = None) -> str:
    """Hash of workload, target, the code that generates the kernel (`build.code_fingerprint`),
    the tuned trace if any, TVM and tvmsep versions and the cache format."""
    payload = {
        "format": FORMAT_VERSION,
        "workload": wl.to_json(),
        "target": str(target),
        "code": build_steps.code_fingerprint(target),
        "trace": trace,
        "tvm": tvm.__version__,
        "tvmsep": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:40]


class ModuleCache:
    """Loads compiled modules by key from disk, or `build()`s and stores them. It keeps no
    module in memory: the ops keep each kernel they found (`ops._KernelMemo`)."""

    def __init__(self, directory: Path | None = None) -> None:
        self._directory = directory
        self.builds = 0  # modules compiled by this process (tests read it)

    @property
    def directory(self) -> Path:
        return self._directory if self._directory is not None else cache_dir()

    def get(self, key: str, build: Callable[[], tvm.runtime.Module]) -> tuple[tvm.runtime.Module, str]:
        """(module, how): how is "disk" or "compiled". Processes and threads wait on the
        entry's lock, so one of them compiles and the others load what it wrote."""
        directory = self._usable_directory()
        if directory is None:
            return self._compile(build).jit(), "compiled"
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(self._file_lock(directory / f"{key}.lock"))
            except OSError as e:
                warnings.warn(f"tvmsep: cannot lock the cache entry {key} in {directory} ({e}); "
                              "compiling in memory only", CacheWarning, stacklevel=4)
                return self._compile(build).jit(), "compiled"
            library, checksum = directory / f"{key}.so", directory / f"{key}.sha256"
            if library.exists() or library.is_symlink():
                if _written_by_cache(library) and checksum.read_text().strip() == file_sha256(library):
                    return tvm.runtime.load_module(str(library)), "disk"
                warnings.warn(f"tvmsep: cached module {library} is truncated or corrupt, or a link the "
                              "cache did not write; rebuilding it", CacheWarning, stacklevel=4)
                for entry in (library, checksum):
                    if entry.is_symlink():
                        entry.unlink()  # the link itself, never what it points to
            executable = self._compile(build)
            try:
                publish(library, executable.export_library)
                publish(checksum, lambda tmp: Path(tmp).write_text(file_sha256(library) + "\n"))
            except OSError as e:
                warnings.warn(f"tvmsep: could not write the cache entry {library} ({e}); "
                              "using the module from memory only", CacheWarning, stacklevel=4)
            return executable.jit(), "compiled"

    def _compile(self, build: Callable[[], tvm.runtime.Module]):
        self.builds += 1
        return build()

    @contextlib.contextmanager
    def _file_lock(self, path: Path) -> Iterator[None]:
        """flock on `path`, opened without following a link: a link planted as a lock
        would make the cache create or truncate a file wherever it points. Such a link
        is removed (the link alone) and the lock made afresh."""
        if path.is_symlink():
            warnings.warn(f"tvmsep: cache lock {path} is a link; replacing the link with a lock file",
                          CacheWarning, stacklevel=5)
            path.unlink()
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _usable_directory(self) -> Path | None:
        """The cache directory if it is safe and writable, else None (with a warning)."""
        directory = self.directory
        try:
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            info = directory.stat()
        except OSError as e:
            return self._memory_only(f"cannot create {directory} ({e})")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) or info.st_uid != os.getuid():
            return self._memory_only(f"{directory} is writable by other users or not owned by you; "
                                     "refusing to load code from it")
        if not os.access(directory, os.W_OK | os.X_OK):
            return self._memory_only(f"{directory} is not writable")
        return directory

    def _memory_only(self, reason: str) -> None:
        warnings.warn(f"tvmsep: disk cache disabled: {reason}; compiled modules are kept in memory only",
                      CacheWarning, stacklevel=5)
        return None

    def disk_entries(self) -> list[Path]:
        """The compiled libraries this cache wrote (see `_written_by_cache`)."""
        directory = self.directory
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if _is_library(p) and _written_by_cache(p))

    def clear_disk(self) -> tuple[int, list[Path]]:
        """Remove every file this cache wrote, and nothing else: the directory may be one the user
        shares with other files (`TVMSEP_CACHE_DIR=~`). Returns how many libraries were removed and
        what was left because the cache did not write it."""
        directory = self.directory
        if not directory.is_dir():
            return 0, []
        entries = sorted(directory.iterdir())
        ours = {p for p in entries if _written_by_cache(p)}  # all judged before any goes: a library is
        for path in ours:                                     # judged by the checksum file beside it
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        return sum(map(_is_library, ours)), [p for p in entries if p not in ours]


# What the cache writes: <key>.so, <key>.sha256, <key>.lock, and publish()'s temporary files
# (.<key>.so.<random>.so, .<key>.sha256.<random>.sha256) that a killed writer leaves behind.
_ENTRY = re.compile(r"(?P<key>[0-9a-f]{40})\.(?P<kind>so|sha256|lock)")
_TEMPORARY = re.compile(r"\.[0-9a-f]{40}\.(so|sha256)\.[a-z0-9_]+\.(so|sha256)")
_CHECKSUM = re.compile(r"[0-9a-f]{64}\n?")


def _is_library(path: Path) -> bool:
    entry = _ENTRY.fullmatch(path.name)
    return entry is not None and entry["kind"] == "so"


def _written_by_cache(path: Path) -> bool:
    """Whether `path` is a file this cache wrote, judged by its name and, for the files that matter, by
    content: a library counts only with its checksum file beside it, a checksum file only if it holds a
    sha256, a lock only if it is empty. Links and folders never count: the cache writes neither."""
    try:
        info = path.lstat()
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    if _TEMPORARY.fullmatch(path.name):
        return True
    entry = _ENTRY.fullmatch(path.name)
    if entry is None:
        return False
    if entry["kind"] == "lock":
        return info.st_size == 0
    checksum = path if entry["kind"] == "sha256" else path.with_suffix(".sha256")
    try:
        if checksum.is_symlink() or checksum.stat().st_size > 65:
            return False
        return _CHECKSUM.fullmatch(checksum.read_text()) is not None
    except (OSError, UnicodeDecodeError):
        return False
