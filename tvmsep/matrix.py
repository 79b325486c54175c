"""The configuration matrix a target's kernels are checked on, as named workloads.

Layouts x dtypes x cases that between them cover what the CUDA schedules
branch on: channel counts that do and do not fill a vector, multipliers 1-3,
strides 1-2, dilation, SAME, VALID and asymmetric explicit padding, batch
above 1, separable, and the epilogue (bias, relu, relu6) on both ops. The
no-GPU tests compile every entry; the GPU check runs every entry against the
float64 reference.
"""

from __future__ import annotations


from .spec import LAYOUTS, LayerArguments, Workload

__all__ = ["CASES", "case_name", "case_workload", "matrix"]

DTYPES = ("float32", "float16")

NO_EPILOGUE: dict = {}
# (batch, input HxW, channels, multiplier, stride, padding (NHWC pairs), rate, pointwise outputs or None,
#  epilogue as Workload fields)
CASES = [
    (1, 56, 128, 1, 1, "SAME", 1, None, NO_EPILOGUE),
    (1, 112, 32, 1, 2, "SAME", 1, None, NO_EPILOGUE),
    (1, 13, 5, 3, 1, "VALID", 1, None, dict(bias=True, activation="relu6")),
    (1, 9, 7, 2, 2, [[0, 0], [1, 2], [0, 3], [0, 0]], 1, None, NO_EPILOGUE),
    (1, 17, 6, 1, 1, "SAME", 2, None, NO_EPILOGUE),
    (3, 20, 24, 1, 2, "SAME", 1, None, NO_EPILOGUE),
    (1, 28, 64, 1, 1, "SAME", 1, 96, NO_EPILOGUE),
    (1, 7, 10, 2, 2, "VALID", 1, 5, dict(activation="relu6")),
    (2, 14, 48, 1, 1, "SAME", 1, 40, dict(bias=True, activation="relu")),
]


def case_name(case: tuple) -> str:
    batch, size, channels, mult, stride, padding, rate, outputs, epilogue = case
    pad = padding if isinstance(padding, str) else "explicit"
    name = f"b{batch}-{size}x{channels}x{mult}-s{stride}-{pad}-r{rate}" + (f"-o{outputs}" if outputs else "")
    if epilogue.get("bias"):
        name += "-bias"
    if epilogue.get("activation"):
        name += "-" + epilogue["activation"]
    return name


def case_workload(case: tuple, layout: str, dtype: str) -> Workload:
    batch, size, channels, mult, stride, padding, rate, outputs, epilogue = case
    axes = LAYOUTS[layout]
    shape = axes.arrange(batch, size, size, channels)
    strides = axes.strides(stride, stride)
    if isinstance(padding, list):
        padding = axes.padding(padding[1], padding[2])
    pointwise = None if outputs is None else (1, 1, channels * mult, outputs)
    return LayerArguments(shape, (3, 3, channels, mult), strides, padding, pointwise_shape=pointwise,
                          rate=[rate, rate], data_format=layout, dtype=dtype, **epilogue).workload()


def matrix() -> list[tuple[str, Workload]]:
    """Every case in every layout and dtype, named `<case>-<layout>-<dtype>`."""
    return [(f"{case_name(case)}-{layout}-{dtype}", case_workload(case, layout, dtype))
            for case in CASES for layout in LAYOUTS for dtype in DTYPES]
