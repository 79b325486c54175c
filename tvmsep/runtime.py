"""The callable kernel: check arrays, allocate (or take `out=`), launch.

Arrays cross into TVM through DLPack without copies. The compiled code
assumes C-contiguous buffers aligned to one element (see
`compute._element_aligned`), so only non-contiguous inputs are copied.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import tvm_ffi

from .spec import Workload

__all__ = ["Kernel", "to_numpy"]

def to_numpy(name: str, x: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """(a numpy view or copy of `x`, a function that returns a result as `x`'s kind).

    numpy arrays pass through; DLPack producers on the CPU (torch, JAX, ...)
    are viewed without a copy; anything else goes through `np.asarray`.
    """
    if isinstance(x, np.ndarray):
        return x, _identity
    if hasattr(x, "__dlpack__") and hasattr(x, "__dlpack_device__"):
        device_type = int(x.__dlpack_device__()[0])
        if device_type != 1:  # kDLCPU
            raise ValueError(f"`{name}` lives on DLPack device type {device_type}; "
                             "the llvm target needs CPU arrays")
        if getattr(x, "requires_grad", False):
            x = x.detach()  # inference only: tvmsep does not record gradients
        try:
            return np.from_dlpack(x), _wrapper_for(x)
        except (TypeError, BufferError, RuntimeError) as e:
            raise TypeError(f"`{name}`: could not read {type(x).__name__} through DLPack: {e}") from e
    try:
        return np.asarray(x), _identity
    except (TypeError, ValueError) as e:
        raise TypeError(f"`{name}` must be an array or nested list of numbers, got {type(x).__name__}") from e


def _identity(a: np.ndarray) -> np.ndarray:
    return a


def _wrapper_for(x: Any) -> Callable[[np.ndarray], Any]:
    """Return results as the input's library type, sharing memory."""
    root = type(x).__module__.split(".")[0]
    if root == "torch":
        import torch
        return torch.from_dlpack
    if root in ("jax", "jaxlib"):
        import jax.numpy as jnp
        return jnp.from_dlpack
    return _identity


class Kernel:
    """One compiled workload. Thread-safe: calls share only the read-only module."""

    def __init__(self, workload: Workload, function: Any, origin: str) -> None:
        self.workload = workload
        self.origin = origin  # "compiled", "disk" or "memory": where the module came from
        self._function = function

    def run(self, inputs: Sequence[np.ndarray], out: np.ndarray | None) -> np.ndarray:
        """Compute into `out` (allocated when None); arguments are already validated."""
        wl = self.workload
        if out is None:
            out = np.empty(wl.output_shape, wl.dtype)
        args = [tvm_ffi.from_dlpack(a if a.flags.c_contiguous else np.ascontiguousarray(a)) for a in inputs]
        self._function(*args, tvm_ffi.from_dlpack(out))
        return out
