"""Target resolution: None means this machine's CPU, with its name and core count."""

from __future__ import annotations

import functools
from typing import Any

from tvm.target import Target, codegen

from .backends import backend_for
from .threads import usable_cores

__all__ = ["resolve_target", "host_target", "cuda_target"]


@functools.lru_cache(maxsize=None)
def host_target() -> Target:
    """llvm for the host CPU (`mcpu` detected), `num-cores` = usable physical cores."""
    return Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": usable_cores()})


def cuda_target() -> Target:
    """cuda for this machine's GPU, its architecture read from the device."""
    import tvm
    if not tvm.cuda(0).exist:
        raise ValueError('`target`: "cuda" needs a CUDA device here to read its architecture; '
                         'to compile for another machine, name it: {"kind": "cuda", "arch": "sm_90"}')
    return Target("cuda")


def resolve_target(target: Any = None) -> Target:
    """Accept None, "llvm" (the host), "cuda" (this machine's GPU), a target dict, or a `tvm.target.Target`."""
    if target is None or target == "llvm":
        return host_target()
    if target == "cuda":
        return cuda_target()
    if isinstance(target, Target):
        resolved = target
    elif isinstance(target, dict):
        try:
            resolved = Target(target)
        except Exception as e:
            raise ValueError(f"`target`: TVM rejected {target!r}: {e}") from e
    else:
        raise TypeError(f"`target` must be None, 'llvm', 'cuda', a target dict or a tvm.target.Target, got {target!r}")
    backend_for(resolved)  # a kind tvmsep compiles for
    return resolved
