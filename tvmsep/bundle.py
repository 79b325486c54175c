"""Bundles: many kernels compiled ahead of time into one library, loaded with the TVM runtime alone.

A bundle is a folder:

    manifest.json   format, versions, target, the library's sha256, and per
                    kernel: layer name, function name, workload, schedule
    kernels.so      every kernel, one exported TVM library

`export.compile_bundle` writes one (it needs the compiler); `load` reads one
and needs only the runtime: nothing here imports TVM's compiler. A library
is loaded only after its checksum, format, TVM version and target have been
checked against this process, so a damaged or foreign bundle is an error
with a reason, never a crash or a silent wrong result.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import tvm

from . import runtime
from .backends import BACKENDS, backend_named
from .dispatch import Dispatcher
from .spec import Workload, split_bias
from .version import __version__

__all__ = ["FORMAT", "MANIFEST", "LIBRARY", "BundleError", "Bundle", "Manifest", "KernelEntry", "load",
           "function_name_for"]

# Bump when the manifest's meaning changes; older readers refuse newer bundles.
# 2: a workload may carry an epilogue (bias, activation).
# 3: each function is named by its workload's hash (`function_name_for`); older bundles,
#    whose names bind nothing, are refused.
FORMAT = 3
MANIFEST = "manifest.json"
LIBRARY = "kernels.so"


class BundleError(ValueError):
    """A bundle that cannot be used here, and why."""


def function_name_for(wl: Workload) -> str:
    """The library function of a workload: named by a hash of the workload itself, so that a
    manifest whose workload was edited (pads, an activation) or a library from another bundle
    names functions the library does not hold, and the load is refused."""
    digest = hashlib.sha256(json.dumps(wl.to_json(), sort_keys=True).encode()).hexdigest()
    return f"tvmsep_{digest[:32]}"


@dataclasses.dataclass(frozen=True)
class KernelEntry:
    """One layer of a bundle: its name, the library function that computes it, its workload,
    and whether that function runs the tuned or the hand-written schedule."""

    name: str
    function: str
    workload: Workload
    schedule: str | None = None  # "tuned" or "hand-written"; for people, never read to load

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "function": self.function, "workload": self.workload.to_json(),
                "schedule": self.schedule}

    @classmethod
    def from_json(cls, row: Any, path: Path, what: str) -> KernelEntry:
        _check_fields(path, what, row, _KERNEL_FIELDS)
        try:
            workload = Workload.from_json(row["workload"])
        except Exception as e:  # a workload that does not parse
            raise BundleError(f"{path}: kernel {row['name']!r} has a workload that does not parse "
                              f"({type(e).__name__}: {e})") from e
        return cls(row["name"], row["function"], workload, row.get("schedule"))


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a bundle holds and what it needs, as `manifest.json` says.

    `architecture` (llvm) names the CPU architecture the code is for (x86_64, aarch64;
    absent from bundles of tvmsep versions that made only x86-64 ones) and `cpu_flags` the
    instruction-set features it may use, under the names Linux's /proc/cpuinfo gives them;
    `arch` (cuda) names the GPU architecture. The loader checks them against this machine
    before it loads the library."""

    format: int
    tvm: str
    target: str
    target_kind: str
    sha256: str
    kernels: tuple[KernelEntry, ...]
    tvmsep: str | None = None
    library: str = LIBRARY
    arch: str | None = None
    architecture: str | None = None
    mcpu: str | None = None
    cpu_flags: tuple[str, ...] | None = None

    def to_json(self) -> dict[str, Any]:
        optional = {"arch": self.arch, "architecture": self.architecture, "mcpu": self.mcpu,
                    "cpu_flags": None if self.cpu_flags is None else list(self.cpu_flags)}
        return {"format": self.format, "tvmsep": self.tvmsep, "tvm": self.tvm, "target": self.target,
                "target_kind": self.target_kind, **{k: v for k, v in optional.items() if v is not None},
                "library": self.library, "sha256": self.sha256, "kernels": [k.to_json() for k in self.kernels]}

    @classmethod
    def from_json(cls, row: Any, path: Path) -> Manifest:
        """The manifest in `row`, or a BundleError naming the first field that is missing or
        of another type."""
        _check_fields(path, MANIFEST, row, MANIFEST_FIELDS)
        kernels = tuple(KernelEntry.from_json(entry, path, f"kernel entry {i}")
                        for i, entry in enumerate(row["kernels"]))
        flags = row.get("cpu_flags")
        return cls(format=row["format"], tvm=row["tvm"], target=row["target"], target_kind=row["target_kind"],
                   sha256=row["sha256"], kernels=kernels, tvmsep=row.get("tvmsep"),
                   library=row.get("library", LIBRARY), arch=row.get("arch"),
                   architecture=row.get("architecture"), mcpu=row.get("mcpu"),
                   cpu_flags=None if flags is None else tuple(flags))


class Bundle:
    """The kernels of a loaded bundle: `depthwise_conv2d` / `separable_conv2d` as the public ops
    (matched to a kernel by their arguments), or `run(layer_name, *arrays)`."""

    def __init__(self, path: Path, manifest: Manifest, module: Any, device: Any) -> None:
        self.path = path
        self.manifest = manifest
        self.target = manifest.target
        self.module = module  # the loaded library: one function per distinct workload
        self.kernels: dict[str, runtime.Kernel] = {}  # layer name -> kernel
        self._by_workload: dict[Workload, runtime.Kernel] = {}
        for entry in manifest.kernels:
            kernel = runtime.Kernel(entry.workload, module[entry.function], "bundle", device)
            self.kernels[entry.name] = kernel
            self._by_workload.setdefault(entry.workload, kernel)
        self._call = Dispatcher(self._kernel_for, self._refuse_target)
        # `tvmsep.depthwise_conv2d` and `separable_conv2d` with this bundle's kernels (no compiling).
        self.depthwise_conv2d = self._call.depthwise_conv2d
        self.separable_conv2d = self._call.separable_conv2d

    def __repr__(self) -> str:
        return f"<tvmsep bundle {self.path}: {len(self.kernels)} kernels for {self.target}>"

    def kernel(self, name: str) -> runtime.Kernel:
        """The kernel compiled for the layer called `name`."""
        try:
            return self.kernels[name]
        except KeyError:
            raise KeyError(f"{self.path} has no layer {name!r}; it holds: {', '.join(self.kernels)}") from None

    def run(self, name: str, *arrays: Any, out: Any = None) -> Any:
        """Layer `name` on `arrays` (input, filter[, pointwise filter][, bias]): the public op's checks
        and results, with the strides, padding, rate, layout and activation the layer was compiled with."""
        wl = self.kernel(name).workload
        shapes = list(wl.arg_shapes)
        given = [tuple(getattr(a, "shape", np.shape(a))) for a in arrays]
        if given != shapes:
            raise ValueError(f"layer {name!r} ({wl.describe()}) takes arrays of shapes {shapes}, got {given}")
        strides, padding, rate, layout = wl.call_arguments()
        op = self.depthwise_conv2d if wl.op == "depthwise" else self.separable_conv2d
        inputs, bias = split_bias(wl.op, arrays)
        return op(*inputs, strides, padding, rate, data_format=layout, bias=bias, activation=wl.activation,
                  out=out)

    def function_name(self, name: str) -> str:
        """The library function that computes layer `name` (for `module.time_evaluator`)."""
        self.kernel(name)  # a clear error for an unknown name
        return next(e.function for e in self.manifest.kernels if e.name == name)

    def _refuse_target(self, target: Any) -> None:
        if target is not None:
            raise TypeError(f"{self.path}: a bundle's kernels run on the target they were compiled for "
                            f"({self.target}); its ops take no `target`")

    def _kernel_for(self, wl: Workload, target: Any) -> runtime.Kernel:
        kernel = self._by_workload.get(wl)
        if kernel is None:
            held = "\n  ".join(f"{name}: {k.workload.describe()}" for name, k in self.kernels.items())
            raise BundleError(f"{self.path} has no kernel for {wl.describe()}; it holds:\n  {held}")
        return kernel


def load(path: str | Path) -> Bundle:
    """Check and load the bundle at `path` (a folder written by `tvmsep compile`)."""
    path = Path(path)
    manifest = _read_manifest(path)
    device = _device_for(manifest)
    library = path / LIBRARY
    if library.is_symlink() and not library.resolve().is_relative_to(path.resolve()):
        raise BundleError(f"{library} is a link to {library.resolve()}, outside the bundle; refusing to load it")
    try:
        data = library.read_bytes()
    except OSError as e:
        raise BundleError(f"{path}: cannot read {LIBRARY}: {e}") from e
    if hashlib.sha256(data).hexdigest() != manifest.sha256:
        raise BundleError(f"{library} does not match its manifest's checksum: it is truncated, "
                          "damaged or was changed after compiling; compile the bundle again")
    for entry in manifest.kernels:
        if entry.function != function_name_for(entry.workload):
            raise BundleError(f"{path}: kernel {entry.name!r} names function {entry.function!r}, not the "
                              f"one its workload compiles to; the manifest was edited: compile the bundle again")
    module = _load_exactly(data)
    try:
        return Bundle(path, manifest, module, device)
    except BundleError:
        raise
    except Exception as e:  # a function the library lacks
        raise BundleError(f"{path}: its manifest does not match its library: {type(e).__name__}: {e}") from e


# What a manifest must hold, and of what type (export.py also tells a bundle by it); each
# kernel entry likewise.
MANIFEST_FIELDS = {"format": int, "tvm": str, "target": str, "target_kind": str, "sha256": str, "kernels": list}
_KERNEL_FIELDS = {"name": str, "function": str, "workload": dict}


def _load_exactly(data: bytes) -> Any:
    """Load the library whose bytes were checked, from a private file of its own: loading the
    bundle's path would hand back a library this process already loaded from that path (the
    dynamic loader keeps one per file), the old code of a bundle compiled again in place, and
    the file could change between the check and the load."""
    with tempfile.TemporaryDirectory(prefix="tvmsep-bundle-") as private:  # made 0700
        copy = os.path.join(private, LIBRARY)
        with open(copy, "wb") as f:
            f.write(data)
        return tvm.runtime.load_module(copy)  # stays mapped once the file is gone


def _read_manifest(path: Path) -> Manifest:
    try:
        manifest = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: JSON nested too deep
        raise BundleError(f"{path} is not a tvmsep bundle: cannot read {MANIFEST} ({type(e).__name__}: "
                          f"{str(e)[:200]})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("format"), int):
        raise BundleError(f"{path} is not a tvmsep bundle: {MANIFEST} has no format number")
    fmt = manifest["format"]
    if fmt < FORMAT:
        raise BundleError(f"{path} has bundle format {fmt}, from an older tvmsep whose function names do not "
                          f"bind each kernel to its workload (format {FORMAT}); compile the bundle again")
    if fmt > FORMAT:
        raise BundleError(f"{path} has bundle format {fmt!r}, newer than this tvmsep {__version__} reads "
                          f"(up to {FORMAT}); upgrade tvmsep or compile the bundle with this version")
    if manifest.get("tvm") != tvm.__version__:
        raise BundleError(f"{path} was compiled with TVM {manifest.get('tvm')}; this process has TVM "
                          f"{tvm.__version__}, whose runtime ABI may differ: compile the bundle with it")
    return Manifest.from_json(manifest, path)


def _check_fields(path: Path, what: str, value: Any, fields: dict[str, type]) -> None:
    if not isinstance(value, dict):
        raise BundleError(f"{path}: {what} is not a JSON object; compile the bundle again")
    for field, kind in fields.items():
        if not isinstance(value.get(field), kind):
            raise BundleError(f"{path}: {what} lacks `{field}` (a {kind.__name__}) or it has another type; "
                              "compile the bundle again")


def _device_for(manifest: Manifest) -> Any:
    """The device the bundle's kernels run on here, or why there is none."""
    backend = backend_named(manifest.target_kind)
    if backend is None:
        raise BundleError(f"the bundle's target kind {manifest.target_kind!r} is not one tvmsep runs "
                          f"({', '.join(BACKENDS)})")
    refusal = backend.bundle_refusal(manifest)
    if refusal:
        raise BundleError(refusal)
    return backend.device()
