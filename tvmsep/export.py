"""Compile named workloads into one bundle (see bundle.py for the format and the loader).

Each distinct workload becomes one function of a single IRModule, scheduled
as compiling it alone would be (the tuned record when one won, else the
hand-written schedule), so the whole bundle is one compiler run and one
library. The folder appears whole or not at all.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Sequence

import tvm

from . import build
from .backends import backend_for
from .bundle import FORMAT, LIBRARY, MANIFEST, KernelEntry, Manifest, function_name_for
from .files import file_sha256
from .spec import LayerArguments, Workload
from .target import resolve_target
from .version import __version__

__all__ = ["compile_bundle", "layers_from_file", "parse_target"]


def compile_bundle(layers: Sequence[tuple[str, Workload]], target: Any, path: str | Path,
                   progress: Callable[[str], None] = print, compiler: str | None = None) -> Manifest:
    """Write the bundle for `layers` ((name, workload) pairs) to the folder `path`; returns its manifest.
    `compiler`: the C++ compiler that links the library (default: this machine's, or for
    another CPU architecture the cross compiler named after the target's triple)."""
    target = resolve_target(target)
    path = Path(path)
    _check_replaceable(path)  # before the compile, so a wrong --out costs nothing
    _check_names(layers)
    entries, scheduled = _schedule_layers(layers, target, progress)
    backend = backend_for(target)
    progress(f"compiling {len(scheduled)} kernels for {backend.kind} in one library ...")
    executable = build.compile_scheduled(tvm.IRModule(scheduled), target)
    manifest = _write(path, lambda library: backend.export(executable, library, target, compiler),
                      lambda sha256: Manifest(
                          format=FORMAT, tvmsep=__version__, tvm=tvm.__version__, target=str(target),
                          target_kind=backend.kind, **backend.manifest_fields(target), library=LIBRARY,
                          sha256=sha256, kernels=tuple(entries)))
    progress(f"wrote {path} ({(path / LIBRARY).stat().st_size / 1e6:.1f} MB library, {len(entries)} layers)")
    return manifest


def _check_names(layers: Sequence[tuple[str, Workload]]) -> None:
    names = [name for name, _ in layers]
    if not layers:
        raise ValueError("a bundle needs at least one layer")
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be unique; repeated: {sorted({n for n in names if names.count(n) > 1})}")


def _schedule_layers(layers: Sequence[tuple[str, Workload]], target: Any,
                     progress: Callable[[str], None]) -> tuple[list[KernelEntry], dict[str, Any]]:
    """Each layer's manifest entry, and each distinct workload's scheduled function, named for
    the library: a repeated layer (MobileNetV1's 5 identical blocks) shares one function."""
    functions: dict[Workload, tuple[str, str]] = {}  # workload -> (function name, schedule)
    scheduled: dict[str, tvm.tirx.PrimFunc] = {}
    entries = []
    for i, (name, wl) in enumerate(layers, 1):
        if wl not in functions:
            trace = build.tuned_trace(wl, target)
            function = function_name_for(wl)
            functions[wl] = (function, "hand-written" if trace is None else "tuned")
            func = build.scheduled_module(wl, target, trace)["main"]
            scheduled[function] = func.with_attr("global_symbol", function)
        function, schedule = functions[wl]
        entries.append(KernelEntry(name, function, wl, schedule))
        progress(f"[{i}/{len(layers)}] scheduled {name}: {wl.describe()} ({schedule})")
    return entries, scheduled


def _write(path: Path, export: Callable[[str], None], manifest_for: Callable[[str], Manifest]) -> Manifest:
    """Write the library (`export` to a path) and its manifest (made by `manifest_for` from the
    library's sha256) into a staging folder beside `path`, then put it in place of what is
    there (`_replace`)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    except OSError as e:
        raise ValueError(f"cannot write the bundle {path}: {e}") from e
    try:
        export(str(staging / LIBRARY))
        manifest = manifest_for(file_sha256(staging / LIBRARY))
        (staging / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=1) + "\n")
        _replace(path, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return manifest


def _check_replaceable(path: Path) -> None:
    """Raise ValueError unless writing a bundle at `path` destroys nothing tvmsep did not write.

    `path` may be missing, an empty folder, or a bundle: a real folder (not a
    link) holding only a manifest tvmsep wrote and its library. Anything else
    (a project folder given by mistake, a file, a link) is the user's, and is
    refused whole rather than deleted.
    """
    if path.is_symlink():
        raise ValueError(f"--out {path} is a symbolic link; give the bundle folder itself")
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"--out {path} exists and is not a folder; give a new path or an existing bundle")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return
    foreign = sorted(set(entries) - {MANIFEST, LIBRARY})
    if foreign:
        shown = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(f"--out {path} holds files that are not part of a tvmsep bundle ({shown}); "
                         "refusing to replace it: give a new path, or remove that folder yourself")
    if not _is_manifest(path / MANIFEST):
        raise ValueError(f"--out {path} is not a tvmsep bundle (no manifest tvmsep wrote); refusing to replace "
                         "it: give a new path, or remove that folder yourself")


def _is_manifest(path: Path) -> bool:
    """Whether `path` is a regular file holding a manifest as compile_bundle writes it."""
    if path.is_symlink() or not path.is_file():
        return False
    try:
        manifest = Manifest.from_json(json.loads(path.read_text()), path.parent)
    except (OSError, ValueError, RecursionError):  # BundleError is a ValueError
        return False
    return manifest.tvmsep is not None


def _replace(path: Path, staging: Path) -> None:
    """Put the finished folder `staging` at `path`, replacing the bundle there (checked again, now that
    the compile is done): the old bundle is moved aside first and comes back if the move fails."""
    _check_replaceable(path)
    if not path.exists():
        os.rename(staging, path)
        return
    old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
    os.rename(path, old / path.name)
    try:
        os.rename(staging, path)
    except OSError:
        os.rename(old / path.name, path)
        old.rmdir()
        raise
    shutil.rmtree(old)


def layers_from_file(path: str | Path) -> list[tuple[str, Workload]]:
    """Named workloads from a JSON list of layers written with the public API's fields:

        [{"name": "block1", "op": "separable", "input_shape": [1, 112, 112, 32], "dtype": "float32",
          "filter_shape": [3, 3, 32, 1], "pointwise_shape": [1, 1, 32, 64],
          "strides": [1, 1, 1, 1], "padding": "SAME", "rate": [1, 1], "data_format": "NHWC",
          "bias": true, "activation": "relu6"}]

    `op` defaults to separable when `pointwise_shape` is given; `rate`,
    `data_format`, `dtype` (float32) and the epilogue (`bias`: whether the
    layer takes one, `activation`) are optional.
    """
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read layers from {path}: {e}") from e
    if not isinstance(rows, list) or not all(isinstance(row, dict) for row in rows):
        raise ValueError(f"{path}: expected a JSON list of layer objects")
    layers = []
    for i, row in enumerate(rows):
        name = str(row.get("name", f"layer{i}"))
        try:
            wl = LayerArguments.from_json(row).workload()
        except KeyError as e:
            raise ValueError(f"{path}, layer {name!r}: missing field {e}") from None
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}, layer {name!r}: {e}") from None
        layers.append((name, wl))
    return layers


def parse_target(text: str) -> Any:
    """A command-line target: "llvm" (this CPU), "cuda" (this GPU) or a TVM target as JSON,
    e.g. '{"kind": "cuda", "arch": "sm_90"}' or '{"kind": "llvm", "mcpu": "skylake-avx512"}'."""
    if text.lstrip().startswith("{"):
        try:
            return json.loads(text)
        except ValueError as e:
            raise ValueError(f"--target: not valid JSON: {e}") from None
    return text
