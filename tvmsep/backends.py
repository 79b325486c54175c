"""Target families: what tvmsep does differently for a CPU (llvm) and a CUDA GPU.

Each family is one `Backend`; the rest of tvmsep asks it and never tests a
target's kind itself. A backend holds the family's hand-written schedules (and,
for the CPU, the vector width and the per-core cache they are blocked for), the
device its kernels run on, how a bundle's library is linked, the name its
tuning logs are filed under, what a bundle's manifest records about the code
and how a loader checks that record against this machine. Bundles are loaded
with the TVM runtime alone, so only `schedules` and `manifest_fields` (which
run when compiling) may import TVM's compiler, and only when called.
"""

from __future__ import annotations

import abc
from types import ModuleType
from typing import Any

import tvm

__all__ = ["Backend", "backend_for", "backend_named", "BACKENDS"]


class Backend(abc.ABC):
    """One target family (TVM target kind)."""

    kind: str  # TVM's target kind
    device_type: str  # the device's name for tvm.device and meta-schedule's runners

    @abc.abstractmethod
    def schedules(self) -> ModuleType:
        """The hand-written schedule module: `schedule`, `design_spaces`."""

    def device(self) -> Any:
        return tvm.device(self.device_type, 0)

    def unavailable(self) -> str | None:
        """Why this machine cannot run the family's kernels, or None when it can."""
        return None

    def export(self, executable: Any, path: str) -> None:
        """Link a compiled `executable` into the shared library at `path`: with TVM's default,
        this machine's C++ compiler, which links code for the machine it runs on (its CPU, and
        the host side of its GPU kernels)."""
        executable.export_library(path)

    @abc.abstractmethod
    def chip(self, target: Any) -> str:
        """The processor a target names (CPU `mcpu`, GPU `arch`), "" where it names none."""

    def log_folder(self, target: Any) -> str:
        """Tuning logs of a target are filed under its kind and chip, e.g. `llvm-znver5`."""
        chip = self.chip(target)
        return f"{self.kind}-{chip}" if chip else self.kind

    @abc.abstractmethod
    def manifest_fields(self, target: Any) -> dict[str, Any]:
        """What a bundle's manifest records of the machine the code needs."""

    @abc.abstractmethod
    def bundle_refusal(self, manifest: Any) -> str | None:
        """Why a bundle with this manifest cannot run here, or None when it can."""


# LLVM's names for the instruction sets tvmsep's CPU code may use -> Linux's /proc/cpuinfo flags.
_CPU_FLAGS = {"sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma", "f16c": "f16c",
              "avx512f": "avx512f", "avx512bw": "avx512bw", "avx512dq": "avx512dq", "avx512vl": "avx512vl",
              "avx512cd": "avx512cd", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
              "avx512vnni": "avx512_vnni", "avxvnni": "avx_vnni"}


_AVX512_CPUS = {
    "skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server",
    "tigerlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d", "rocketlake",
    "x86-64-v4",
}


class CPU(Backend):
    """The host's or another CPU, through LLVM. A bundle records the instruction sets the
    target's CPU has (the code may use any of them) under /proc/cpuinfo's names, and is
    refused on a CPU that lacks one."""

    kind = "llvm"
    device_type = "cpu"

    def schedules(self) -> ModuleType:
        from tvmsep.schedules import llvm
        return llvm

    def chip(self, target: Any) -> str:
        return str(target.attrs.get("mcpu", ""))

    def vector_bits(self, target: Any) -> int:
        """The width of the target's widest vector registers, which the schedules fill."""
        mcpu = self.chip(target)
        features = " ".join(str(a) for a in target.attrs.get("mattr", []))
        if "avx512" in features or mcpu in _AVX512_CPUS or mcpu.startswith(("znver4", "znver5")):
            return 512
        return 256 if (mcpu or "avx2" in features) else 128

    def core_cache_bytes(self, target: Any) -> int:
        """The cache a core keeps its working set in, its L2: 1-2 MiB on recent x86 cores,
        so the smaller, for the schedules to fit a core's share of an intermediate in."""
        return 1 << 20

    def manifest_fields(self, target: Any) -> dict[str, Any]:
        from tvm.target import codegen
        features = {str(f) for f in codegen.llvm_get_cpu_features(target)}
        return {"mcpu": self.chip(target) or None,
                "cpu_flags": tuple(sorted(flag for feature, flag in _CPU_FLAGS.items() if feature in features))}

    def bundle_refusal(self, manifest: Any) -> str | None:
        host = host_cpu_flags()
        missing = sorted(set(manifest.cpu_flags or ()) - host) if host is not None else []
        if missing:
            return (f"the bundle is for {manifest.mcpu or 'another CPU'}, whose instructions this CPU lacks "
                    f"({', '.join(missing)}); compile it for this CPU (--target llvm)")
        return None


def host_cpu_flags() -> set[str] | None:
    """This CPU's instruction-set flags as Linux reports them; None where they cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next(line for line in f if line.startswith("flags"))
    except (OSError, StopIteration):
        return None
    return set(line.split(":", 1)[1].split())


class CUDA(Backend):
    """An NVIDIA GPU. A bundle records the GPU architecture its code was compiled for, and
    is refused on any other."""

    kind = "cuda"
    device_type = "cuda"

    def schedules(self) -> ModuleType:
        from tvmsep.schedules import cuda
        return cuda

    def unavailable(self) -> str | None:
        if not self.device().exist:
            return ("no CUDA device here to run on; to compile CUDA kernels for another machine, "
                    "use tvmsep.build.compile_module(workload, target) and export_library")
        return None

    def chip(self, target: Any) -> str:
        return str(target.attrs.get("arch", ""))

    def manifest_fields(self, target: Any) -> dict[str, Any]:
        return {"arch": self.chip(target), **({"mcpu": str(target.attrs["mcpu"])} if "mcpu" in target.attrs else {})}

    def bundle_refusal(self, manifest: Any) -> str | None:
        device = self.device()
        if not device.exist:
            return f"the bundle is for a CUDA GPU ({manifest.arch}) and this machine has none"
        arch = "sm_" + device.compute_version.replace(".", "")
        if arch != manifest.arch:
            return f"the bundle is for {manifest.arch}; this machine's GPU is {arch}"
        return None


BACKENDS: dict[str, Backend] = {backend.kind: backend for backend in (CPU(), CUDA())}


def backend_named(kind: str) -> Backend | None:
    """The backend of a target kind by name (as a bundle's manifest gives it), None if tvmsep has none."""
    return BACKENDS.get(kind)


def backend_for(target: Any) -> Backend:
    """The backend of a `tvm.target.Target`; ValueError for a kind tvmsep does not compile for."""
    backend = BACKENDS.get(target.kind.name)
    if backend is None:
        raise ValueError(f"`target`: llvm (CPU) and cuda targets are supported, got {target.kind.name!r}")
    return backend
