"""Target resolution: None means this machine's CPU, with its name and core count."""

from __future__ import annotations

import functools
from typing import Any

from tvm.target import Target, codegen

from .threads import usable_cores

__all__ = ["resolve_target", "host_target"]


@functools.lru_cache(maxsize=None)
def host_target() -> Target:
    """llvm for the host CPU (`mcpu` detected), `num-cores` = usable physical cores."""
    return Target({"kind": "llvm", "mcpu": str(codegen.llvm_get_system_cpu()), "num-cores": usable_cores()})


def resolve_target(target: Any = None) -> Target:
    """Accept None, "llvm" (the host), a target dict, or a `tvm.target.Target`."""
    if target is None or target == "llvm":
        return host_target()
    if isinstance(target, Target):
        resolved = target
    elif isinstance(target, dict):
        try:
            resolved = Target(target)
        except Exception as e:
            raise ValueError(f"`target`: TVM rejected {target!r}: {e}") from e
    else:
        raise TypeError(f"`target` must be None, 'llvm', a target dict or a tvm.target.Target, got {target!r}")
    if resolved.kind.name != "llvm":
        raise ValueError(f"`target`: only llvm (CPU) targets are supported, got {resolved.kind.name!r}")
    return resolved
