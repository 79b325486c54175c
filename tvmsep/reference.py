"""An independent float64 numpy reference for TF's two ops.

Written from the TF formulas (spec/), not from the TE code: it pads with
numpy, walks the taps with strided slices, and shares only `Workload`'s
resolved pads (the pad rule itself is tested on its own, exhaustively) and
the order of the arrays (`split_bias`) with the compiled path.
"""

from __future__ import annotations

import numpy as np

from .spec import Workload, split_bias

__all__ = ["depthwise_reference", "separable_reference", "epilogue_reference", "reference_for", "TOLERANCE",
           "scaled_error"]

# TF's test tolerances, relative to the output's scale (its largest magnitude, at least 1).
TOLERANCE = {"float16": 4e-2, "float32": 1e-4, "float64": 1e-9}


def scaled_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """Largest absolute error over the output's scale; inf where an output is NaN or inf
    (a poisoned element the kernel never wrote)."""
    actual = np.asarray(actual, np.float64)
    if actual.shape != expected.shape:
        raise ValueError(f"shape {actual.shape} != expected {expected.shape}")
    if not expected.size:
        return 0.0
    if not np.isfinite(actual).all():
        return float("inf")
    return float(np.abs(actual - expected).max()) / max(float(np.abs(expected).max()), 1.0)


def epilogue_reference(y: np.ndarray, bias: np.ndarray | None, wl: Workload) -> np.ndarray:
    """`wl`'s epilogue on the op's float64 result `y`: + bias per output channel, then the activation."""
    if bias is not None:
        y = y + np.asarray(bias, np.float64).reshape(wl.axes.arrange(1, 1, 1, -1))
    if wl.activation == "relu":
        y = np.maximum(y, 0.0)
    elif wl.activation == "relu6":
        y = np.clip(y, 0.0, 6.0)
    return y


def depthwise_reference(x: np.ndarray, f: np.ndarray, wl: Workload, bias: np.ndarray | None = None,
                        rounded_taps: bool = False) -> np.ndarray:
    """output[b, i, j, k*M + q] = sum_{di,dj} f[di,dj,k,q] * x[b, s*i + r*di, s*j + r*dj, k] (padded),
    over the taps on the input only (TF's rule: a tap over the padding adds nothing, even an
    Inf or NaN one), then, for a depthwise workload, its epilogue (`bias`, activation).
    `rounded_taps`: the sum is rounded to `wl.dtype` after every tap, in the filter's row-major
    order, each step taken in float32: TF's Eigen CPU kernel sums float16 so."""
    x = np.asarray(x, np.float64)
    f = np.asarray(f, np.float64)
    x = x.transpose(wl.axes.split(range(4)))  # to NHWC
    pads = ((0, 0), (wl.pad_top, wl.pad_bottom), (wl.pad_left, wl.pad_right), (0, 0))
    on_input = np.pad(np.ones((1,) + x.shape[1:3] + (1,), bool), pads)
    x = np.pad(x, pads)
    oh, ow = wl.out_height, wl.out_width
    out = np.zeros((x.shape[0], oh, ow, wl.in_channels, wl.multiplier))
    for di in range(wl.kernel_h):
        for dj in range(wl.kernel_w):
            row, col = di * wl.dilation_h, dj * wl.dilation_w
            taps = (slice(None), slice(row, row + (oh - 1) * wl.stride_h + 1, wl.stride_h),
                    slice(col, col + (ow - 1) * wl.stride_w + 1, wl.stride_w), slice(None))
            with np.errstate(invalid="ignore"):  # 0 * Inf over the padding, dropped by the mask
                term = np.where(on_input[taps][..., None], x[taps][..., None] * f[di, dj], 0.0)
            if rounded_taps:  # a product of two float16 values is exact in float32
                out = (out.astype(np.float32) + term.astype(np.float32)).astype(wl.dtype).astype(np.float64)
            else:
                out += term
    out = out.reshape(x.shape[0], oh, ow, wl.mid_channels)
    out = out.transpose(wl.axes.arrange(0, 1, 2, 3))  # back to the workload's layout
    return epilogue_reference(out, bias, wl) if wl.op == "depthwise" else out


def separable_reference(x: np.ndarray, f: np.ndarray, p: np.ndarray, wl: Workload,
                        bias: np.ndarray | None = None, rounded_taps: bool = False) -> np.ndarray:
    """TF's separable: the depthwise result (`rounded_taps` as there) is a tensor of the
    workload's dtype (rounded, e.g. to float16) before the exact 1x1 mix; then the epilogue."""
    mid = depthwise_reference(x, f, wl, rounded_taps=rounded_taps).astype(wl.dtype).astype(np.float64)
    weights = np.asarray(p, np.float64)[0, 0]
    with np.errstate(invalid="ignore"):  # Inf - Inf is NaN here as in TF
        mixed = np.einsum(_einsum(wl, "c") + ",co->" + _einsum(wl, "o"), mid, weights, optimize=True)
    return epilogue_reference(mixed, bias, wl)


def _einsum(wl: Workload, channel: str) -> str:
    """Einstein-summation subscripts of an activation in `wl`'s layout."""
    return "".join(wl.axes.arrange("n", "h", "w", channel))


def reference_for(wl: Workload, arrays: list[np.ndarray], rounded_taps: bool = False) -> np.ndarray:
    """`wl`'s float64 result on `arrays`, given as its kernel takes them (`Workload.arg_shapes`);
    `rounded_taps` as `depthwise_reference` takes it."""
    inputs, bias = split_bias(wl.op, arrays)
    if wl.op == "depthwise":
        return depthwise_reference(*inputs, wl, bias, rounded_taps)
    return separable_reference(*inputs, wl, bias, rounded_taps)
