"""tvmsep: TF-exact depthwise and separable 2-D convolution, compiled by Apache TVM.

    import tvmsep
    y = tvmsep.depthwise_conv2d(x, f, strides=[1, 1, 1, 1], padding="SAME")
    z = tvmsep.separable_conv2d(x, f, p, strides=[1, 2, 2, 1], padding="SAME")
    layer = tvmsep.SeparableConv2D(f, p, strides=[1, 1, 1, 1], padding="SAME")  # weights held
    z = layer(x)
    kernels = tvmsep.load("mobilenet_v1.bundle")  # compiled ahead of time

The ops, which compile, are imported on first use: a process that only
loads bundles never loads TVM's compiler.
"""

from .threads import configure_thread_pool
from .version import __version__

configure_thread_pool()  # before TVM starts its pool; see threads.py

__all__ = ["depthwise_conv2d", "separable_conv2d", "DepthwiseConv2D", "SeparableConv2D", "load", "__version__"]


def __getattr__(name: str):
    if name in ("depthwise_conv2d", "separable_conv2d"):
        from . import ops
        value = getattr(ops, name)
    elif name in ("DepthwiseConv2D", "SeparableConv2D"):
        from . import layer
        value = getattr(layer, name)
    elif name == "load":
        from .bundle import load as value
    else:
        raise AttributeError(f"module 'tvmsep' has no attribute {name!r}")
    globals()[name] = value  # later lookups are plain attribute reads, not calls of this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
