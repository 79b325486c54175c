"""The callable kernel: take the caller's arrays where they live, launch, hand results back.

Arrays cross into TVM through DLPack without copies. A CPU kernel takes
numpy arrays and CPU DLPack producers (torch, JAX, ...). A CUDA kernel takes
the same, copied to its GPU and the result copied back as numpy, or DLPack
tensors already on its GPU (torch CUDA tensors): those are used in place,
the launch goes on torch's current stream, and the result is a tensor of the
caller's library on the same device.

Compiled CPU code assumes only element alignment (`compute._element_aligned`);
CUDA code loads VECTOR_BYTES at a time, so a device tensor that is not aligned
to that (a view into another tensor) is copied to one that is.

A new result on the host starts on a cache line (`_PlacedResults`). numpy
allocates on 16 bytes, so a vector a line wide (AVX-512) at any such address
straddles two lines: a depthwise kernel's stores would, one per handful of loads,
and so would every load of a depthwise kernel that reads the result as its input,
which in a network is the next layer. Those loads cost most: the kernels that run
from L1 and L2 take much longer on an input off a line
(benchmarks/alignment.py). Finding an array's address from Python costs about a
microsecond, and numpy places one result in four on a line by chance, so results
too small for the straddling to outweigh that are left as numpy allocates them
(`PLACED_RESULT_MIN_BYTES`). The larger ones spare that microsecond on most
calls: a kernel keeps the memory of its last result and writes the next one there
when nothing refers to it any more, as in a network, where the next layer has read
it and let it go.

Such a result also starts at a chosen place in its 4 KiB page: two lines before the
place of the kernel's input (`_placed_memory`). A CPU checks each load against the
stores still in flight by the low 12 bits of their addresses, the offset in a page,
and a load that matches one waits for it although the addresses differ ("4K
aliasing"). A depthwise kernel stores a tile of pixels at one channel vector, and the
next tiles load the input at the channel vectors that follow. Where a pixel's channels
take a multiple of 1 KiB (256 float32 channels and up), the page offsets of pixels
differ by whole KiB, so a result that starts from 0 to a few lines past the input's
place, or past a KiB beyond it, makes those loads wait, and numpy puts a new array
anywhere in a page (benchmarks/results/page-offset-*.md). A result that starts before
the input's place matches only loads made before its stores; one line before still
slowed some layers, two lines none. The place is chosen for the input of the call that
makes the memory and kept with the memory: in a network, and in a loop over one input,
the same input comes back.

This module needs only the TVM runtime, never the compiler.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from typing import Any, Callable, Sequence, Union

import numpy as np
import tvm
import tvm_ffi

from . import threads
from .spec import Workload

__all__ = ["Kernel", "Home", "to_array", "output_array", "placed_empty", "VECTOR_BYTES"]

CPU, CUDA = 1, 2  # DLPack device types
VECTOR_BYTES = 16  # the widest load the CUDA kernels issue (float4)
CACHE_LINE_BYTES = 64
PAGE_BYTES = 4096  # what the CPU's check of loads against stores in flight compares: a page offset
RESULT_BEFORE_INPUT_BYTES = 2 * CACHE_LINE_BYTES  # a placed result's start, before its input's (docstring)
_NDARRAY = np.ndarray
PLACED_RESULT_MIN_BYTES = 64 << 10  # a new result at least this large starts on a cache line, placed in its page
KEPT_RESULT_MAX_BYTES = 16 << 20  # a kernel keeps the memory of its last result up to this size

# What a kernel takes: host arrays as numpy, device arrays as TVM tensors.
Array = Union[np.ndarray, tvm_ffi.Tensor]


def _identity(a: Any) -> Any:
    return a


@dataclasses.dataclass(frozen=True)
class Home:
    """Where the caller's arrays live, and how results go back there.

    wrap: a result (numpy, or a TVM tensor on a GPU) -> the caller's array type.
    empty: (shape, dtype) -> a new array of the caller's type on its GPU, or None
    (the kernel allocates: numpy on the host, a TVM tensor on a GPU).
    stream: a context manager that makes launches go on the caller's stream.
    """

    wrap: Callable[[Any], Any] = _identity
    empty: Callable[[tuple[int, ...], str], Any] | None = None
    stream: Callable[[], Any] = contextlib.nullcontext


HOST = Home()


def to_array(name: str, x: Any) -> tuple[Array, Home]:
    """(`x` as numpy, or as a TVM tensor if it lives on a GPU; where it lives).

    numpy arrays pass through; DLPack producers are viewed without a copy;
    anything else goes through `np.asarray`.
    """
    if isinstance(x, np.ndarray):
        return x, HOST
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        device_type = int(x.__dlpack_device__()[0])
        if getattr(x, "requires_grad", False):
            x = x.detach()  # inference only: tvmsep does not record gradients
        if device_type == CUDA:
            return _device_tensor(name, x), _home_of(x)
        if device_type != CPU:
            raise ValueError(f"`{name}` lives on DLPack device type {device_type}; "
                             "tvmsep runs on the CPU and on CUDA GPUs")
        try:
            return np.from_dlpack(x), _home_of(x)
        except (TypeError, BufferError, RuntimeError) as e:
            raise TypeError(f"`{name}`: could not read {type(x).__name__} through DLPack: {e}") from e
    try:
        return np.asarray(x), HOST
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{name}` must be an array or nested list of numbers, got {type(x).__name__}") from e


def _device_tensor(name: str, x: Any) -> tvm_ffi.Tensor:
    """A GPU tensor in place, or a contiguous aligned copy of it (torch) when it is neither."""
    tensor = tvm_ffi.from_dlpack(x)
    if tensor.is_contiguous() and tensor.data_ptr() % VECTOR_BYTES == 0:
        return tensor
    if type(x).__module__.split(".")[0] == "torch":
        import torch
        return tvm_ffi.from_dlpack(x.clone(memory_format=torch.contiguous_format))
    raise ValueError(f"`{name}` must be contiguous and {VECTOR_BYTES}-byte aligned on the GPU "
                     "(tvmsep copies torch tensors that are not, but cannot copy a "
                     f"{type(x).__name__} on the device)")


def _home_of(x: Any) -> Home:
    """Results as the input's library type, sharing memory; allocated on its device."""
    root = type(x).__module__.split(".")[0]
    if root == "torch":
        import torch
        if x.device.type != "cuda":
            return Home(wrap=torch.from_dlpack)
        device = x.device
        return Home(wrap=torch.from_dlpack,
                    empty=lambda shape, dtype: torch.empty(shape, dtype=getattr(torch, dtype), device=device),
                    stream=tvm_ffi.use_torch_stream)
    if root in ("jax", "jaxlib"):
        import jax.numpy as jnp
        return Home(wrap=jnp.from_dlpack)
    return HOST  # on a GPU, the result stays a TVM tensor: any DLPack consumer can take it


def output_array(op: str, out: Any, wl: Workload, inputs: Sequence[Array]) -> Array:
    """`out=` as something the kernel can write in place, or a clear error naming `<op>_conv2d`.
    (A numpy `out` of a CPU kernel takes `Kernel.run_numpy`, which leaves these checks to the
    compiled code and comes here only for the message.)"""
    if isinstance(out, np.ndarray):
        view = out
    elif hasattr(out, "__dlpack__") and hasattr(out, "__dlpack_device__"):
        if int(out.__dlpack_device__()[0]) == CUDA:
            return _device_output(f"{op}_conv2d", out, wl, inputs)
        view, _ = to_array("out", out)
    else:
        raise TypeError(f"{op}_conv2d: `out` must be a numpy array or a DLPack tensor, got {type(out).__name__}")
    _check_shape_dtype(f"{op}_conv2d", view.shape, view.dtype, wl)
    flags = view.flags
    if not flags.c_contiguous:
        raise ValueError(f"{op}_conv2d: `out` must be C-contiguous")
    if not flags.writeable:
        raise ValueError(f"{op}_conv2d: `out` is read-only")
    if _overlaps(view, inputs):
        raise _overlap_error(f"{op}_conv2d")
    return view


def _overlaps(out: np.ndarray, inputs: Sequence[Array]) -> bool:
    """Whether `out` may share memory with an input. numpy points a view's `base` at the array
    that owns its memory (or at the foreign object that does), so two arrays whose owners are
    distinct numpy arrays without a base share no memory; any other pair takes numpy's test,
    which costs more than all the other checks of a call. A predicate, so that the common call
    looks nothing else up (`_NDARRAY`: a module global is found faster than `np.ndarray`)."""
    out_owner = out.base
    if out_owner is None:
        out_owner = out
    if type(out_owner) is _NDARRAY and out_owner.base is None:
        for a in inputs:
            if type(a) is not _NDARRAY:
                break
            owner = a.base
            if owner is None:
                owner = a
            if owner is out_owner or type(owner) is not _NDARRAY or owner.base is not None:
                break
        else:
            return False
    return any(a is out or isinstance(a, np.ndarray) and np.may_share_memory(out, a) for a in inputs)


def _overlap_error(fn: str) -> ValueError:
    return ValueError(f"{fn}: `out` overlaps an input; the kernel would read what it overwrites")


def _device_output(fn: str, out: Any, wl: Workload, inputs: Sequence[Array]) -> tvm_ffi.Tensor:
    tensor = tvm_ffi.from_dlpack(out)
    _check_shape_dtype(fn, tuple(tensor.shape), tensor.dtype, wl)
    if not tensor.is_contiguous() or tensor.data_ptr() % VECTOR_BYTES:
        raise ValueError(f"{fn}: `out` on the GPU must be contiguous and {VECTOR_BYTES}-byte aligned")
    start, stop = tensor.data_ptr(), tensor.data_ptr() + _nbytes(tensor)
    for a in inputs:
        if isinstance(a, tvm_ffi.Tensor) and a.device == tensor.device \
                and a.data_ptr() < stop and start < a.data_ptr() + _nbytes(a):
            raise _overlap_error(fn)
    return tensor


def _nbytes(tensor: tvm_ffi.Tensor) -> int:
    return int(np.prod(tensor.shape)) * np.dtype(str(tensor.dtype)).itemsize


def _check_shape_dtype(fn: str, shape: tuple, dtype: Any, wl: Workload) -> None:
    """dtype: numpy's or TVM's, which both compare equal to their name (str() of one costs microseconds)."""
    if tuple(shape) != wl.output_shape:
        raise ValueError(f"{fn}: `out` has shape {tuple(shape)}; the result has shape {wl.output_shape}")
    if dtype != wl.dtype:
        raise TypeError(f"{fn}: `out` has dtype {dtype}; the result has dtype {wl.dtype}")


class _PlacedResults:
    """New C-contiguous results of one shape, each starting on a cache line, two lines before its
    input's place in a page (module docstring).

    The memory of the last one is kept (up to KEPT_RESULT_MAX_BYTES: past that, a call's time
    hides the microsecond and the memory would outweigh it), and the next result is made in it
    when nothing else refers to it: every view of it, and every DLPack or buffer export, holds
    its memory's owner, whose reference count then tells. Taking it off the list is one step
    under the interpreter's lock, so two threads never take the same memory.
    """

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, nbytes: int) -> None:
        self._shape, self._dtype, self._nbytes = shape, dtype, nbytes
        self._keeps = nbytes <= KEPT_RESULT_MAX_BYTES
        self._kept: list[tuple[np.ndarray, int]] = []  # (memory, offset of the result in it)

    def new(self, first_input: np.ndarray) -> np.ndarray:
        taken = _take_kept(self._kept)
        if taken is not None and taken[2] == _UNREFERENCED:
            memory, offset, _ = taken
        else:
            memory, offset = _placed_memory(self._nbytes, first_input)
        if self._keeps and not self._kept:
            self._kept.append((memory, offset))
        return np.ndarray(self._shape, self._dtype, memory, offset)


def placed_empty(shape: tuple[int, ...], dtype: Any, first_input: np.ndarray) -> np.ndarray:
    """A new uninitialized array placed as a kernel whose first input is `first_input` places its
    result (module docstring): for those who time kernels as tvmsep calls them."""
    memory, offset = _placed_memory(math.prod(shape) * np.dtype(dtype).itemsize, first_input)
    return np.ndarray(tuple(shape), dtype, memory, offset)


def _placed_memory(nbytes: int, first_input: np.ndarray) -> tuple[np.ndarray, int]:
    """(memory, offset) for a result of `nbytes`: the memory a page longer, the result at the offset
    on a cache line, RESULT_BEFORE_INPUT_BYTES or up to a line more before `first_input`'s offset
    in its page."""
    memory = np.empty(nbytes + PAGE_BYTES, np.uint8)
    start = (_address(first_input) - RESULT_BEFORE_INPUT_BYTES) // CACHE_LINE_BYTES * CACHE_LINE_BYTES
    return memory, (start - _address(memory)) % PAGE_BYTES


def _address(a: np.ndarray) -> int:
    """The address of `a`'s first element."""
    try:
        return tvm_ffi.from_dlpack(a).data_ptr()  # a third of the time `a.ctypes.data` takes
    except (BufferError, ValueError, TypeError):  # numpy does not export a read-only array
        return a.ctypes.data


def _take_kept(kept: list) -> tuple[Any, int, int] | None:
    """The last (memory, offset) off `kept`, and the memory's reference count as seen here;
    None when `kept` is empty."""
    try:
        memory, offset = kept.pop()
    except IndexError:
        return None
    return memory, offset, sys.getrefcount(memory)


# The count `_take_kept` sees for memory that nothing but the list referred to: measured, not
# assumed, as what the interpreter counts for a local name and a call's argument differs
# between Python versions. Any reference the caller still holds adds to it.
_UNREFERENCED = _take_kept([(object(), 0)])[2]


class Kernel:
    """One compiled workload. Thread-safe: calls share only the read-only module.

    `device`: where it runs; for a CUDA kernel, the GPU used when no argument
    is on a GPU already (otherwise the arguments' GPU).
    """

    def __init__(self, workload: Workload, function: Any, origin: str,
                 device: tvm_ffi.Device | None = None) -> None:
        self.workload = workload
        self.origin = origin  # "compiled", "disk" or "bundle": where the module came from
        self.device = device if device is not None else tvm.cpu()
        self._function = function
        self._on_gpu = self.device.dlpack_device_type() == CUDA
        self._output_shape, self._output_dtype = workload.output_shape, np.dtype(workload.dtype)  # parsed once
        nbytes = math.prod(workload.output_shape) * self._output_dtype.itemsize
        # Where new results are placed (module docstring), else None: as numpy allocates.
        self._placed_results = _PlacedResults(self._output_shape, self._output_dtype, nbytes) \
            if nbytes >= PLACED_RESULT_MIN_BYTES else None
        threads.note_kernel()

    def run(self, inputs: Sequence[Array], out: Array | None, home: Home = HOST) -> Array:
        """Compute into `out` (allocated when None); arguments are already validated.

        Returns what was written: numpy when the inputs were host arrays and
        no `out` was given, else `out` or a new TVM tensor on the kernel's GPU.
        """
        if self._on_gpu:
            return self._run_on_gpu(inputs, out, home)
        if out is None:
            return self.run_numpy(inputs, None)
        try:
            self._function(*inputs, out)  # numpy crosses by DLPack, without a copy
        except (ValueError, BufferError):  # refused before any work: a strided or read-only input
            self._function(*self._compact_host_inputs(inputs), out)
        return out

    def run_numpy(self, inputs: Sequence[np.ndarray], out: Any) -> np.ndarray | None:
        """`run` of host arrays (CPU kernels only), the common call, in as few Python steps as it
        takes: into a new numpy result when `out` is None, else into a numpy `out` not checked yet.
        None, having done nothing, for any other `out` (which `output_array` then checks before
        `run`) and for a CUDA kernel (whose `run` copies host arrays to its GPU and back).

        The compiled code checks its arguments' shape, dtype and layout, and numpy's DLPack
        export refuses a read-only array, before any work; only then is `out` examined in
        Python, for the reason. The same checks up front cost more than the allocation
        that `out=` saves. Overlap with an input is the one thing the code cannot see.
        """
        if self._on_gpu:
            return None
        given = out is not None
        if not given:
            if self._placed_results is None:
                out = np.empty(self._output_shape, self._output_dtype)
            else:
                out = self._placed_results.new(inputs[0])
        elif type(out) is _NDARRAY:
            if _overlaps(out, inputs):
                raise _overlap_error(f"{self.workload.op}_conv2d")
        else:
            return None
        try:
            self._function(*inputs, out)
        except (ValueError, TypeError, BufferError):  # refused before any work
            if given:
                output_array(self.workload.op, out, self.workload, inputs)  # raises if `out` is the reason
            self._function(*self._compact_host_inputs(inputs), out)
        return out

    def _compact_host_inputs(self, inputs: Sequence[Array]) -> list[np.ndarray]:
        """The inputs with a C-contiguous copy of each the kernel cannot read in place: the
        compiled code takes compact arrays only, and numpy's DLPack export refuses read-only
        ones (its DLPack version cannot mark them read-only)."""
        compact = []
        for a in inputs:
            if not isinstance(a, np.ndarray):
                raise ValueError(f"this kernel runs on {self.device}; the arrays must be on the CPU, "
                                 f"got one on {a.device}")
            flags = a.flags
            compact.append(a if flags.c_contiguous and flags.writeable else np.array(a, order="C"))
        return compact

    def _run_on_gpu(self, inputs: Sequence[Array], out: Array | None, home: Home) -> Array:
        wl = self.workload
        # The module runs on any GPU of its architecture: the one the caller's tensors are on.
        device = next((a.device for a in (*inputs, out) if isinstance(a, tvm_ffi.Tensor)), self.device)
        args = [self._on_device(a, device) for a in inputs]
        result = out if isinstance(out, tvm_ffi.Tensor) else tvm.runtime.empty(wl.output_shape, wl.dtype, device)
        if result.device != device:
            raise ValueError(f"`out` is on {result.device}; the inputs are on {device}")
        with home.stream():
            self._function(*args, result)
        if isinstance(out, np.ndarray):
            np.copyto(out, result.numpy())  # the copy waits for the kernel
            return out
        if out is None and all(isinstance(a, np.ndarray) for a in inputs):
            return result.numpy()
        return result

    @staticmethod
    def _on_device(a: Array, device: tvm_ffi.Device) -> tvm_ffi.Tensor:
        if isinstance(a, np.ndarray):
            return tvm.runtime.tensor(np.ascontiguousarray(a), device)
        if a.device != device:
            raise ValueError(f"the inputs must be on one device; got {a.device} and {device}")
        return a
