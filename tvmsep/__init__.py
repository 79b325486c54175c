"""tvmsep: TF-exact depthwise and separable 2-D convolution, compiled by Apache TVM.

    import tvmsep
    y = tvmsep.depthwise_conv2d(x, f, strides=[1, 1, 1, 1], padding="SAME")
    z = tvmsep.separable_conv2d(x, f, p, strides=[1, 2, 2, 1], padding="SAME")
"""

__version__ = "0.1.0"

from .threads import size_thread_pool

size_thread_pool()  # before TVM starts its pool; see threads.py

from .ops import depthwise_conv2d, separable_conv2d  # noqa: E402

__all__ = ["depthwise_conv2d", "separable_conv2d", "__version__"]
