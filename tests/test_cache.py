"""The compiled-module cache: reuse, corruption, concurrency, unsafe directories, CLI."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tvmsep import ops
from tvmsep.cache import CacheWarning, ModuleCache, cache_key
from tvmsep.cli import main as cli_main
from tvmsep.spec import depthwise_workload
from tvmsep.target import host_target

from conftest import assert_close
from tvmsep.reference import depthwise_reference


def _workload(channels):
    return depthwise_workload((1, 6, 6, channels), "float32", (3, 3, channels, 1), "float32", [1, 1, 1, 1], "SAME")


def _key(wl):
    return cache_key(wl, host_target())


def _build(wl):
    from tvmsep import build
    return lambda: build.compile_module(wl, host_target())


def _check_module(module, wl, rng=np.random.default_rng()):
    from tvmsep.runtime import Kernel
    x = rng.standard_normal(wl.input_shape).astype(np.float32)
    f = rng.standard_normal(wl.filter_shape).astype(np.float32)
    assert_close(Kernel(wl, module["main"], "test").run([x, f], None), depthwise_reference(x, f, wl), "float32")


def test_second_call_does_not_compile(rng):
    x, f = rng.standard_normal((1, 7, 7, 5)).astype(np.float32), rng.standard_normal((3, 3, 5, 1)).astype(np.float32)
    ops.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME")
    builds = ops.module_cache.builds
    for _ in range(3):
        ops.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME")
        ops.depthwise_conv2d(x.copy(), f, np.array([1, 1, 1, 1]), "SAME")  # same workload, other argument types
    assert ops.module_cache.builds == builds


def test_disk_hit_and_corrupt_file_rebuilt(tmp_path):
    wl = _workload(3)
    key = _key(wl)
    first = ModuleCache(tmp_path)
    _, how = first.get(key, _build(wl))
    assert how == "compiled" and (tmp_path / f"{key}.so").exists()
    made = tmp_path / "made" / "by the cache"
    ModuleCache(made).get(key, _build(wl))
    assert made.stat().st_mode & 0o777 == 0o700, "a cache directory tvmsep makes is private to its user"

    module, how = ModuleCache(tmp_path).get(key, _build(wl))  # a new process would see the same
    assert how == "disk"
    _check_module(module, wl)

    library = tmp_path / f"{key}.so"
    # Truncated, as a crashed writer without the rename would leave it. Replaced, not
    # rewritten in place: this process has the old file mapped, and shrinking a
    # mapped library under a running process is a SIGBUS, not a cache state.
    damaged = tmp_path / "damaged"
    damaged.write_bytes(library.read_bytes()[:1000])
    os.replace(damaged, library)
    fresh = ModuleCache(tmp_path)
    with pytest.warns(CacheWarning, match="truncated or corrupt"):
        module, how = fresh.get(key, _build(wl))
    assert how == "compiled" and fresh.builds == 1
    _check_module(module, wl)
    assert ModuleCache(tmp_path).get(key, _build(wl))[1] == "disk"  # repaired on disk


def test_unsafe_or_unwritable_directory_degrades_to_memory(tmp_path):
    wl = _workload(4)
    open_dir = tmp_path / "shared"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    cache = ModuleCache(open_dir)
    with pytest.warns(CacheWarning, match="writable by other users"):
        module, how = cache.get(_key(wl), _build(wl))
    assert how == "compiled" and not list(open_dir.iterdir())
    _check_module(module, wl)

    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.warns(CacheWarning, match="cannot create"):
        ModuleCache(blocker / "cache").get(_key(wl), _build(wl))


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only directories")
def test_read_only_directory_degrades_to_memory(tmp_path):
    wl = _workload(4)
    tmp_path.chmod(0o500)
    try:
        with pytest.warns(CacheWarning, match="not writable"):
            ModuleCache(tmp_path).get(_key(wl), _build(wl))
    finally:
        tmp_path.chmod(0o700)


def test_two_processes_compile_one_key(tmp_path):
    script = textwrap.dedent("""
        import numpy as np, sys, tvmsep
        from tvmsep import ops
        x = np.ones((1, 9, 9, 6), np.float32); f = np.ones((3, 3, 6, 1), np.float32)
        y = tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "VALID")
        assert np.allclose(y, 9.0)
        print(ops.module_cache.builds)
    """)
    env = dict(os.environ, TVMSEP_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(2)]
    builds = [int(p.communicate(timeout=300)[0].strip()) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(builds) == [0, 1]  # one compiled, the other waited on the lock and loaded the file
    assert len(list(tmp_path.glob("*.so"))) == 1 and not list(tmp_path.glob(".*"))


def test_cli_info_and_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TVMSEP_CACHE_DIR", str(tmp_path))
    wl = _workload(2)
    ModuleCache().get(_key(wl), _build(wl))
    assert cli_main(["cache", "info"]) == 0
    assert "modules:   1" in capsys.readouterr().out
    assert cli_main(["cache", "clear"]) == 0
    assert "removed 1" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_cli_clear_deletes_only_what_the_cache_wrote(tmp_path, monkeypatch, capsys):
    """A cache directory shared with the user's files: only the cache's own entries go."""
    monkeypatch.setenv("TVMSEP_CACHE_DIR", str(tmp_path))
    wl = _workload(2)
    key = _key(wl)
    ModuleCache().get(key, _build(wl))
    (tmp_path / f".{key}.so.abc123_x.so").write_bytes(b"a killed writer's temporary file")
    theirs = {".bashrc": "alias ll='ls -l'", ".env": "TOKEN=1", ".gitignore": "*.o", "libfoo.so": "ELF",
              "notes.sha256": "x", "build.lock": "held", f"{'0' * 40}.so": "no checksum beside it",
              f"{'1' * 40}.sha256": "not a checksum", f"{'2' * 40}.lock": "not empty"}
    for name, text in theirs.items():
        (tmp_path / name).write_text(text)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref: refs/heads/main")
    outside = tmp_path.parent / f"{tmp_path.name}-outside.so"
    outside.write_text("elsewhere")
    (tmp_path / f"{'3' * 40}.so").symlink_to(outside)
    (tmp_path / f"{'3' * 40}.sha256").write_text("0" * 64 + "\n")

    assert cli_main(["cache", "info"]) == 0
    assert "modules:   1" in capsys.readouterr().out
    assert cli_main(["cache", "clear"]) == 0
    out = capsys.readouterr().out
    assert "removed 1 compiled modules" in out and f"left {len(theirs) + 2} entries" in out
    assert not any(p.name.startswith((key, f".{key}")) for p in tmp_path.iterdir())
    assert all((tmp_path / name).read_text() == text for name, text in theirs.items())
    assert (tmp_path / ".git" / "HEAD").exists() and outside.read_text() == "elsewhere"
    assert (tmp_path / f"{'3' * 40}.so").is_symlink()


def test_cache_entries_given_as_links_are_never_followed(tmp_path):
    """A `<key>.so` linked to a library elsewhere (a world-writable folder) is not loaded but
    rebuilt in place of the link; a `<key>.lock` linked to a path that does not exist does not
    make the cache create a file there."""
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    elsewhere.chmod(0o777)
    wl = _workload(6)
    key = _key(wl)
    planted = elsewhere / "planted.so"
    _build(wl)().export_library(str(planted))
    from tvmsep.files import file_sha256
    (cache_dir / f"{key}.so").symlink_to(planted)
    (cache_dir / f"{key}.sha256").write_text(file_sha256(planted) + "\n")  # even with its checksum beside it
    target = tmp_path / "created-by-the-cache"
    (cache_dir / f"{key}.lock").symlink_to(target)
    cache = ModuleCache(cache_dir)
    with pytest.warns(CacheWarning):
        module, how = cache.get(key, _build(wl))
    assert how == "compiled" and cache.builds == 1
    _check_module(module, wl)
    assert not target.exists(), "the cache created a file where the lock link pointed"
    for suffix in (".so", ".lock", ".sha256"):
        entry = cache_dir / f"{key}{suffix}"
        assert not entry.is_symlink() and entry.is_file(), suffix
    assert planted.exists(), "the link's target is left alone"
    assert ModuleCache(cache_dir).get(key, _build(wl))[1] == "disk"


def test_keys_follow_the_code_not_its_docstrings():
    """Rewording a docstring or a comment in the code that generates kernels keeps every
    compiled kernel; any change to the code itself makes new keys."""
    from tvmsep.build import code_syntax
    source = 'def scale(x):\n    """Doubles x."""\n    return 2 * x  # twice\n'
    assert code_syntax(source) == code_syntax(source.replace("Doubles x.", "Twice x.").replace("# twice", "# 2x"))
    assert code_syntax(source) != code_syntax(source.replace("2 * x", "3 * x"))
