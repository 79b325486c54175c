"""Target families: what tvmsep does differently for a CPU (llvm) and a CUDA GPU.

Each family is one `Backend`; the rest of tvmsep asks it and never tests a
target's kind itself. A backend holds the family's hand-written schedules (and,
for the CPU, the vector width and the per-core cache they are blocked for), the
device its kernels run on, how a bundle's library is linked, the name its
tuning logs are filed under, what a bundle's manifest records about the code
and how a loader checks that record against this machine. Bundles are loaded
with the TVM runtime alone, so only what runs when compiling (`schedules`,
`arithmetic`, `manifest_fields`) may import TVM's compiler, and only when called.
"""

from __future__ import annotations

import abc
import platform
import shutil
from types import ModuleType
from typing import Any, Sequence

import tvm

__all__ = ["Backend", "CPUArchitecture", "backend_for", "backend_named", "host_architecture", "host_cpu_features",
           "ARCHITECTURES", "BACKENDS"]


class Backend(abc.ABC):
    """One target family (TVM target kind)."""

    kind: str  # TVM's target kind
    device_type: str  # the device's name for tvm.device and meta-schedule's runners

    @abc.abstractmethod
    def schedules(self) -> ModuleType:
        """The hand-written schedule module: `schedule`, `design_spaces`."""

    def device(self) -> Any:
        return tvm.device(self.device_type, 0)

    def unavailable(self, target: Any) -> str | None:
        """Why this machine cannot run kernels compiled for `target`, or None when it can."""
        return None

    def export(self, executable: Any, path: str, target: Any, compiler: str | None = None) -> None:
        """Link a compiled `executable` into the shared library at `path`: with `compiler` (a C++
        compiler's command) where given, else with TVM's default, this machine's C++ compiler,
        which links code for the machine it runs on (its CPU, and the host side of its GPU
        kernels)."""
        if compiler is None:
            executable.export_library(path)
            return
        from tvm.support import cc
        try:
            executable.export_library(path, fcompile=cc.cross_compiler(compiler))
        except RuntimeError as e:
            detail = str(e).strip().splitlines()
            raise ValueError(f"{compiler} could not link the code for {target}: "
                             f"{detail[-1] if detail else type(e).__name__}") from e

    @abc.abstractmethod
    def arithmetic(self, target: Any) -> Any:
        """The target's `compute.Arithmetic`."""

    def compute_layout(self, wl: Any, target: Any) -> str:
        """The layout `wl`'s kernel computes in on `target` (`compute.prim_func`): its own, or
        where that computes slowly, another, with its input and result transposed."""
        return wl.layout

    def pointwise_panel(self, wl: Any, target: Any) -> int:
        """Output channels per panel of the pointwise weights a prepared layer packs ahead for
        `wl` on `target` (`Workload.pointwise_panel`), or 0 where it keeps TF's layout."""
        return 0

    def splits_interior(self, target: Any) -> bool:
        """Whether the target's kernels take tests out of their interior tiles (interior.py):
        loops' kernels do (`CPU`); a GPU's tiles are threads, and its schedules were never measured split."""
        return False

    def splits_padding(self, target: Any) -> bool:
        """Whether the padding's tests are taken out too, besides the bounds tests of tiles that
        overhang (interior.py): where the FMA takes no mask, and each test costs an instruction per
        product and its mask a vector register. Where it takes one, the masks stay in mask
        registers, part of an instruction, and AVX-512's kernels split at the padding measured
        slower on most layers (benchmarks/padding.py)."""
        return not self.arithmetic(target).masked_fma

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


class CPUArchitecture:
    """What differs between CPU instruction-set architectures: the width of the vector registers
    the schedules fill, the instruction-set features a bundle records (LLVM's names -> the names
    Linux gives them, the only ones a loader without LLVM can check), how this machine's
    features are read, and the Debian package of the C++ cross compiler that links for it."""

    def __init__(self, name: str, features: dict[str, tuple[str, ...]], cross_package: str) -> None:
        self.name = name  # Linux's name for it, as `uname -m` prints it
        self.features = features
        self.cross_package = cross_package

    def vector_bits(self, mcpu: str, llvm_features: set[str]) -> int:
        """The width of the target's widest vector registers."""
        raise NotImplementedError

    def vector_registers(self, vector_bits: int) -> int:
        """How many vector registers of that width the code has, which bounds a register tile."""
        raise NotImplementedError

    def masked_fma(self, vector_bits: int) -> bool:
        """Whether the FMA on vectors of that width takes a mask."""
        raise NotImplementedError

    def l1_way_bytes(self) -> int:
        """The bytes after which the L1 data cache's set index repeats (its size over its ways),
        the larger where the architecture's cores differ: addresses a multiple of it apart
        compete for one set."""
        raise NotImplementedError

    def float16_arithmetic(self, llvm_features: set[str]) -> bool:
        """Whether kernels compute in float16 vectors rather than convert to float32 (a target
        with `llvm_features` has such vectors, and tvmsep's emulated tests run their code)."""
        raise NotImplementedError

    def host_features(self) -> set[str] | None:
        """This CPU's features under Linux's names; None where they cannot be read."""
        raise NotImplementedError

    def recorded_features(self, llvm_features: set[str]) -> tuple[str, ...]:
        """The features of `llvm_features` a bundle records, under Linux's names."""
        return tuple(sorted({linux for llvm, names in self.features.items() if llvm in llvm_features
                             for linux in names}))


_AVX512_CPUS = {
    "skylake-avx512", "cascadelake", "cooperlake", "cannonlake", "icelake-client", "icelake-server",
    "tigerlake", "sapphirerapids", "emeraldrapids", "graniterapids", "graniterapids-d", "rocketlake",
    "x86-64-v4",
}


class X86_64(CPUArchitecture):
    """x86-64: 128-bit SSE, 256-bit AVX2 on any CPU a target names, 512-bit AVX-512 on those that
    have it. Linux lists the features in /proc/cpuinfo's `flags` line."""

    def vector_bits(self, mcpu: str, llvm_features: set[str]) -> int:
        if "avx512f" in llvm_features or mcpu in _AVX512_CPUS or mcpu.startswith(("znver4", "znver5")):
            return 512
        return 256 if (mcpu or "avx2" in llvm_features) else 128

    def vector_registers(self, vector_bits: int) -> int:
        return 32 if vector_bits == 512 else 16  # AVX-512 doubles the register file too

    def masked_fma(self, vector_bits: int) -> bool:
        return vector_bits == 512

    def l1_way_bytes(self) -> int:
        return 4096  # 32 KiB in 8 ways or 48 KiB in 12, on Intel's and AMD's cores alike

    def float16_arithmetic(self, llvm_features: set[str]) -> bool:
        # AVX512-FP16 (Sapphire Rapids and later) has float16 FMAs, but no emulator tvmsep's
        # tests use runs them, so x86-64 kernels convert to float32 and sum there.
        return False

    def host_features(self) -> set[str] | None:
        try:
            with open("/proc/cpuinfo") as f:
                line = next(line for line in f if line.startswith("flags"))
        except (OSError, StopIteration):
            return None
        return set(line.split(":", 1)[1].split())


# The bits of Linux's AT_HWCAP and AT_HWCAP2 on aarch64 (asm/hwcap.h) that name the features
# tvmsep's code may use, by the names /proc/cpuinfo's `Features` line gives them.
_AARCH64_HWCAP = {"fp": 0, "asimd": 1, "atomics": 8, "fphp": 9, "asimdhp": 10, "asimdrdm": 12,
                  "asimddp": 20, "sve": 22, "asimdfhm": 23}
_AARCH64_HWCAP2 = {"sve2": 1, "i8mm": 13, "bf16": 14}


class AArch64(CPUArchitecture):
    """64-bit ARM: 32 NEON registers of 128 bits. SVE's registers may be wider, but LLVM fills
    them only through scalable vectors, which tvmsep's fixed-width schedules do not emit, and
    the SVE cores boards use (Neoverse N2, Cortex-A710 and later) have 128-bit ones anyway.
    The kernel reports features in the auxiliary vector (AT_HWCAP, AT_HWCAP2), which is read
    rather than /proc/cpuinfo: an emulator such as qemu-user emulates the one and not the other."""

    def vector_bits(self, mcpu: str, llvm_features: set[str]) -> int:
        return 128

    def vector_registers(self, vector_bits: int) -> int:
        return 32

    def masked_fma(self, vector_bits: int) -> bool:
        return False  # NEON's; SVE's takes a predicate, but tvmsep's code is NEON

    def l1_way_bytes(self) -> int:
        return 16384  # 64 KiB in 4 ways (Cortex-A76, Neoverse N1), 32 KiB in 2 (Cortex-A72)

    def float16_arithmetic(self, llvm_features: set[str]) -> bool:
        return "fullfp16" in llvm_features  # Armv8.2's FP16: Cortex-A55, A76 (Pi 5), Neoverse N1

    def host_features(self) -> set[str] | None:
        import ctypes
        try:
            getauxval = ctypes.CDLL(None).getauxval
        except (OSError, AttributeError):
            return None
        getauxval.restype = ctypes.c_ulong
        getauxval.argtypes = [ctypes.c_ulong]
        hwcap, hwcap2 = getauxval(16), getauxval(26)  # AT_HWCAP, AT_HWCAP2
        return ({name for name, bit in _AARCH64_HWCAP.items() if hwcap >> bit & 1}
                | {name for name, bit in _AARCH64_HWCAP2.items() if hwcap2 >> bit & 1})


ARCHITECTURES: dict[str, CPUArchitecture] = {arch.name: arch for arch in (
    X86_64("x86_64", {"sse4.1": ("sse4_1",), "sse4.2": ("sse4_2",), "avx": ("avx",), "avx2": ("avx2",),
                      "fma": ("fma",), "f16c": ("f16c",), "avx512f": ("avx512f",), "avx512bw": ("avx512bw",),
                      "avx512dq": ("avx512dq",), "avx512vl": ("avx512vl",), "avx512cd": ("avx512cd",),
                      "avx512bf16": ("avx512_bf16",), "avx512fp16": ("avx512_fp16",),
                      "avx512vnni": ("avx512_vnni",), "avxvnni": ("avx_vnni",)},
           "g++-x86-64-linux-gnu"),
    AArch64("aarch64", {"fp-armv8": ("fp",), "neon": ("asimd",), "lse": ("atomics",),
                        "fullfp16": ("fphp", "asimdhp"), "rdm": ("asimdrdm",), "dotprod": ("asimddp",),
                        "sve": ("sve",), "fp16fml": ("asimdfhm",), "sve2": ("sve2",), "i8mm": ("i8mm",),
                        "bf16": ("bf16",)},
            "g++-aarch64-linux-gnu"),
)}
# Other spellings of the architectures, in target triples and `uname -m`.
_ARCHITECTURE_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "arm64": "aarch64"}


def _cross_compiler(target: Any, arch: CPUArchitecture) -> str:
    """The C++ cross compiler on PATH that links for `target`: `<its triple>-g++`, or Debian's
    `<architecture>-linux-gnu-g++`; ValueError naming the package that installs it when none is."""
    names = dict.fromkeys((f"{target.attrs['mtriple']}-g++", f"{arch.name}-linux-gnu-g++"))
    found = next((name for name in names if shutil.which(name)), None)
    if found is None:
        raise ValueError(f"linking code for {arch.name} needs a C++ compiler for it, and none of "
                         f"{', '.join(names)} is on PATH: install one (Debian, Ubuntu: apt-get install "
                         f"{arch.cross_package}) or name one with --cc")
    return found


def host_cpu_features() -> set[str] | None:
    """This CPU's instruction-set features under Linux's names; None where they cannot be read."""
    arch = ARCHITECTURES.get(host_architecture())
    return None if arch is None else arch.host_features()


def host_architecture() -> str:
    """This machine's instruction-set architecture, under Linux's name (x86_64, aarch64)."""
    machine = platform.machine().lower()
    return _ARCHITECTURE_ALIASES.get(machine, machine)


class CPU(Backend):
    """The host's or another CPU, through LLVM: x86-64 or aarch64, which the target's triple
    (`mtriple`) names and which is this machine's where it names none. A bundle records its
    architecture and the instruction-set features its CPU has (the code may use any of them)
    under Linux's names, and is refused on another architecture or a CPU that lacks one."""

    kind = "llvm"
    device_type = "cpu"

    def __init__(self) -> None:
        self._refusals: dict[str, str | None] = {}  # str(target) -> `unavailable`
        self._llvm_features: dict[str, set[str]] = {}  # str(target) -> its LLVM features

    def schedules(self) -> ModuleType:
        from tvmsep.schedules import llvm
        return llvm

    def compute_layout(self, wl: Any, target: Any) -> str:
        return self.schedules().compute_layout(wl, target)

    def pointwise_panel(self, wl: Any, target: Any) -> int:
        return self.schedules().pointwise_panel(wl, target)

    def splits_interior(self, target: Any) -> bool:
        """Always, for the bounds tests: a tile that overhangs branches around each of its
        products, which keeps its accumulators out of registers on any CPU (interior.py)."""
        return True

    def chip(self, target: Any) -> str:
        return str(target.attrs.get("mcpu", ""))

    def architecture_name(self, target: Any) -> str:
        """The architecture a target's code is for: its triple's first part, else this machine's."""
        triple = str(target.attrs.get("mtriple", ""))
        if not triple:
            return host_architecture()
        arch = triple.split("-", 1)[0].lower()
        return _ARCHITECTURE_ALIASES.get(arch, arch)

    def architecture(self, target: Any) -> CPUArchitecture:
        name = self.architecture_name(target)
        if name not in ARCHITECTURES:
            raise ValueError(f"`target`: tvmsep compiles CPU code for {' and '.join(ARCHITECTURES)}; "
                             f"{str(target.attrs.get('mtriple'))!r} is for {name}")
        return ARCHITECTURES[name]

    def vector_bits(self, target: Any) -> int:
        """The width of the target's widest vector registers, which the schedules fill."""
        features = {str(a).lstrip("+") for a in target.attrs.get("mattr", [])}
        return self.architecture(target).vector_bits(self.chip(target), features)

    def vector_registers(self, target: Any) -> int:
        """How many of those registers there are: 16 on x86-64 below AVX-512, else 32."""
        return self.architecture(target).vector_registers(self.vector_bits(target))

    def l1_way_bytes(self, target: Any) -> int:
        """`CPUArchitecture.l1_way_bytes` of the target's architecture."""
        return self.architecture(target).l1_way_bytes()

    def arithmetic(self, target: Any) -> Any:
        """Masked FMAs with AVX-512 only; float16 sums in float16 where the target has float16
        vector arithmetic (`CPUArchitecture.float16_arithmetic`), as TF's CPU kernel's do."""
        from .compute import Arithmetic
        arch = self.architecture(target)
        return Arithmetic(masked_fma=arch.masked_fma(self.vector_bits(target)),
                          native_float16=arch.float16_arithmetic(self.llvm_features(target)))

    def llvm_features(self, target: Any) -> set[str]:
        """The instruction-set features LLVM gives the target's CPU (its `mcpu` and `mattr`)."""
        key = str(target)
        if key not in self._llvm_features:  # reading them takes LLVM a while
            from tvm.target import codegen
            self._llvm_features[key] = {str(f) for f in codegen.llvm_get_cpu_features(target)}
        return self._llvm_features[key]

    def export(self, executable: Any, path: str, target: Any, compiler: str | None = None) -> None:
        """Code for this machine's architecture is linked as any backend's; code for another needs
        a C++ cross compiler, `compiler` where given, else the one named after the target's triple
        (Debian's g++-aarch64-linux-gnu installs aarch64-linux-gnu-g++)."""
        arch = self.architecture(target)
        if compiler is None and arch.name != host_architecture():
            compiler = _cross_compiler(target, arch)
        elif compiler is not None and shutil.which(compiler) is None:
            raise ValueError(f"--cc {compiler}: no such command on PATH")
        super().export(executable, path, target, compiler)

    def l1_bytes(self, target: Any) -> int:
        """A core's L1 data cache: 32-64 KiB on recent x86 and ARM cores, so the smallest, for the
        schedules to keep what a loop re-reads there."""
        return 32 << 10

    def core_cache_bytes(self, target: Any) -> int:
        """The cache a core keeps its working set in, its L2: 1-2 MiB on recent x86 cores,
        so the smaller, for the schedules to fit a core's share of an intermediate in."""
        return 1 << 20

    def unavailable(self, target: Any) -> str | None:
        """A target for another architecture, or for features this CPU lacks, compiles code that
        cannot run here."""
        key = str(target)
        if key not in self._refusals:
            fields = self.manifest_fields(target)
            refusal = self._refusal(fields["architecture"], fields["mcpu"], fields["cpu_flags"])
            self._refusals[key] = refusal and f"its code would be {refusal}"
        return self._refusals[key]

    def log_folder(self, target: Any) -> str:
        """Tuning logs are filed under kind, architecture and CPU, e.g. `llvm-aarch64-neoverse-n1`;
        x86-64's folders, which came first, leave out the architecture, e.g. `llvm-znver5`."""
        arch = self.architecture_name(target)
        return "-".join(part for part in (self.kind, "" if arch == "x86_64" else arch, self.chip(target)) if part)

    def manifest_fields(self, target: Any) -> dict[str, Any]:
        return {"architecture": self.architecture_name(target), "mcpu": self.chip(target) or None,
                "cpu_flags": self.architecture(target).recorded_features(self.llvm_features(target))}

    def bundle_refusal(self, manifest: Any) -> str | None:
        refusal = self._refusal(manifest.architecture, manifest.mcpu, manifest.cpu_flags or ())
        return refusal and f"the bundle is {refusal}; compile it for this CPU (--target llvm)"

    def _refusal(self, architecture: str | None, mcpu: str | None, features: Sequence[str]) -> str | None:
        """Why code for `architecture` (None: not recorded) using `features` cannot run on this
        CPU, or None."""
        host = host_architecture()
        if architecture is not None and architecture != host:
            return f"for {architecture} ({mcpu or 'any CPU'}), and this machine is {host}"
        present = host_cpu_features()
        missing = sorted(set(features) - present) if present is not None else []
        if missing:
            return f"for {mcpu or 'another CPU'}, whose instructions this CPU lacks ({', '.join(missing)})"
        return None


class CUDA(Backend):
    """An NVIDIA GPU. A bundle records the GPU architecture its code was compiled for, and
    is refused on any other."""

    kind = "cuda"
    device_type = "cuda"

    def schedules(self) -> ModuleType:
        from tvmsep.schedules import cuda
        return cuda

    def unavailable(self, target: Any) -> str | None:
        if not self.device().exist:
            return "there is no CUDA device here to run its code on"
        return None

    def arithmetic(self, target: Any) -> Any:
        """A thread's instructions take a predicate; TF's GPU kernel sums float16 in float32."""
        from .compute import Arithmetic
        return Arithmetic(masked_fma=True, native_float16=False)

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
