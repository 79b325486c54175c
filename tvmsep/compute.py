"""Tensor-expression definitions: the math, with no schedule.

Every stage and reduce axis is named so schedules can fetch blocks by name:

    pad        zero-padded input (schedules inline it)
    depthwise  the KxK per-channel convolution
    pointwise  the 1x1 channel mix of separable (a GEMM over channels)
    <stage>_epilogue  bias and activation on the op's last stage, then the
               rounding to the output dtype; `<stage>_cast` when only the
               rounding (float16). Either is the stage that stores the result.
    input_nhwc, output_nchw  where an NCHW call is computed in NHWC (`prim_func`'s
               `layout`): the input transposed to NHWC, and the result back to NCHW

Shapes, in `Workload.layout` order:

    input            NHWC [N, H, W, C]            NCHW [N, C, H, W]
    filter           [KH, KW, C, M]               (TF's layout in both)
    pointwise_filter [1, 1, C*M, O], or [O/NR, C*M, NR] packed in panels of NR
                     output channels (`Workload.pointwise_panel`, a prepared layer's)
    bias             [out channels]               (optional)
    depthwise out    NHWC [N, OH, OW, C*M]        NCHW [N, C*M, OH, OW]
    separable out    NHWC [N, OH, OW, O]          NCHW [N, O, OH, OW]

Output channel `k*M + q` reads input channel `k` and filter `[:, :, k, q]`.

float16 sums in float32 and rounds once per stage, except the depthwise stage on
a CPU with float16 vector arithmetic (`Arithmetic.native_float16`), which sums in
float16, at twice the lanes. TF's CPU kernel (Eigen's) sums a depthwise in float16,
rounding after every tap in the filter's row-major order, except where oneDNN's kernel
takes float16 (x86-64 with AVX512-FP16), which sums in float32; its GPU kernel and
its 1x1 convolution sum in float32. Elsewhere, then, tvmsep's depthwise is more
accurate than TF's per-tap sums, and differs from them in the last place in many
results. The epilogue works on the stage's accumulator and rounds once, so bias
and activation add no rounding of their own.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import tvm
from tvm import te, tirx

from .spec import Workload

__all__ = ["Arithmetic", "accumulation_dtype", "depthwise_compute", "separable_compute", "prim_func"]


@dataclasses.dataclass(frozen=True)
class Arithmetic:
    """What the target's arithmetic decides in the definitions; its backend says
    (`Backend.arithmetic`).

    masked_fma: the FMA takes a mask (AVX-512; a GPU thread's instructions, which take a
        predicate). A tap that may lie over the padding then adds `select(inside, product, -0.0)`
        (-0.0: the exact identity of addition), which LLVM makes a masked FMA. Without one that
        is a multiply, a select and an add, with the product rounded on its own, so there the tap
        multiplies the padding's zero by a zero selected in place of its weight: a select and an
        FMA, rounded once as in the interior.
    native_float16: a float16 depthwise sums in float16 (module docstring), with FMAs, which
        round once where TF's kernel rounds twice (to float32, then float16): in the last place,
        rarely, its results and TF's differ.
    """
    masked_fma: bool
    native_float16: bool


def accumulation_dtype(dtype: str) -> str:
    """The dtype a stage of `dtype` sums in, but for a depthwise with `Arithmetic.native_float16`."""
    return "float32" if dtype == "float16" else dtype


def _inside(wl: Workload, h, w):
    """Whether padded row `h` and column `w` lie on the input; `likely` marks the test as
    one that holds in the interior, which interior.py takes out of the loops there."""
    return tirx.likely(tirx.all(h >= wl.pad_top, h < wl.pad_top + wl.in_height,
                                w >= wl.pad_left, w < wl.pad_left + wl.in_width))


def _pad(x: te.Tensor, wl: Workload) -> te.Tensor:
    """Zero padding."""
    h_axis, w_axis = wl.axes.height, wl.axes.width
    zero = tirx.const(0, wl.dtype)
    shape = list(x.shape)
    shape[h_axis] = wl.in_height + wl.pad_top + wl.pad_bottom
    shape[w_axis] = wl.in_width + wl.pad_left + wl.pad_right

    def padded(*idx):
        h, w = idx[h_axis], idx[w_axis]
        src = list(idx)
        src[h_axis], src[w_axis] = h - wl.pad_top, w - wl.pad_left
        return tirx.if_then_else(_inside(wl, h, w), x[tuple(src)], zero)

    return te.compute(shape, padded, name="pad")


def _store(acc: te.Tensor, wl: Workload, bias: te.Tensor | None, last: bool) -> te.Tensor:
    """The stage that writes a result from its accumulator `acc`: for the op's `last`
    stage, bias and activation, then the rounding to `wl.dtype`; else the rounding alone."""
    name = acc.op.name
    if not (last and (wl.bias or wl.activation)):
        if acc.dtype == wl.dtype:
            return acc
        return te.compute(acc.shape, lambda *idx: acc[idx].astype(wl.dtype), name=name + "_cast")
    channel_axis = wl.axes.channels

    def body(*idx):
        value = acc[idx]
        if bias is not None:
            value = value + bias[idx[channel_axis]].astype(acc.dtype)
        # Selects, not max/min: those lower to LLVM's maxnum/minnum, which turn NaN into the
        # bound, where TF's relu and relu6 (and numpy's maximum) keep the NaN.
        if wl.activation in ("relu", "relu6"):
            value = tirx.Select(value < tirx.const(0, acc.dtype), tirx.const(0, acc.dtype), value)
        if wl.activation == "relu6":
            value = tirx.Select(value > tirx.const(6, acc.dtype), tirx.const(6, acc.dtype), value)
        return value.astype(wl.dtype)

    return te.compute(acc.shape, body, name=name + "_epilogue")


def _activation(wl: Workload, shape: tuple[int, ...], element: Any, name: str, channel: str = "c") -> te.Tensor:
    """A 4-D activation of `shape` in `wl`'s layout, `element(b, i, j, c)` giving each value;
    its axes are named b, i, j and `channel` in the layout's order."""
    return te.compute(shape, lambda *idx: element(*wl.axes.split(idx)), name=name,
                      varargs_names=list(wl.axes.arrange("b", "i", "j", channel)))


def depthwise_compute(x: te.Tensor, f: te.Tensor, wl: Workload, bias: te.Tensor | None,
                      arithmetic: Arithmetic) -> te.Tensor:
    """out[b, i, j, k*M+q] = sum_{di,dj} f[di,dj,k,q] * x[b, s*i + r*di - pad, s*j + r*dj - pad, k],
    over the taps that lie on the input: as in TF, a tap over the padding adds nothing, even
    where the filter holds Inf or NaN there (a product with the padding's zero would be NaN)."""
    pads = wl.pad_top + wl.pad_bottom + wl.pad_left + wl.pad_right
    padded = _pad(x, wl) if pads else x
    acc = wl.dtype if arithmetic.native_float16 else accumulation_dtype(wl.dtype)
    m = wl.multiplier
    di = te.reduce_axis((0, wl.kernel_h), name="di")
    dj = te.reduce_axis((0, wl.kernel_w), name="dj")

    def tap(b, c, i, j):
        row = i * wl.stride_h + di * wl.dilation_h
        col = j * wl.stride_w + dj * wl.dilation_w
        pixel = padded[wl.axes.arrange(b, row, col, c // m)].astype(acc)
        weight = f[di, dj, c // m, c % m].astype(acc)
        if not pads:
            return pixel * weight
        # Selects, not if_then_else: a condition that differs between vector lanes (NCHW's width)
        # would make TVM's vectorizer give up on an if_then_else. Which select: `Arithmetic`.
        inside = _inside(wl, row, col)
        if arithmetic.masked_fma:
            return tirx.Select(inside, pixel * weight, tirx.const(-0.0, acc))
        return pixel * tirx.Select(inside, weight, tirx.const(0, acc))

    out = _activation(wl, wl.mid_shape, lambda b, i, j, c: te.sum(tap(b, c, i, j), axis=[di, dj]), "depthwise")
    return _store(out, wl, bias, last=wl.op == "depthwise")


def _pointwise(mid: te.Tensor, p: te.Tensor, wl: Workload, bias: te.Tensor | None) -> te.Tensor:
    """out[b, i, j, o] = sum_c mid[b, i, j, c] * p[0, 0, c, o], or, its weights packed in
    panels of NR (`Workload.pointwise_panel`), * p[o // NR, c, o % NR]."""
    acc = accumulation_dtype(wl.dtype)
    c = te.reduce_axis((0, wl.mid_channels), name="c")
    panel = wl.pointwise_panel

    def weight(o):
        return (p[o // panel, c, o % panel] if panel else p[0, 0, c, o]).astype(acc)

    out = _activation(wl, wl.output_shape,
                      lambda b, i, j, o: te.sum(mid[wl.axes.arrange(b, i, j, c)].astype(acc) * weight(o), axis=c),
                      "pointwise", channel="o")
    return _store(out, wl, bias, last=True)


def separable_compute(x: te.Tensor, f: te.Tensor, p: te.Tensor, wl: Workload, bias: te.Tensor | None,
                      arithmetic: Arithmetic) -> te.Tensor:
    """Depthwise, then the 1x1 pointwise mix; the intermediate is a separate stage (unfused)
    and the epilogue applies to the pointwise result only."""
    return _pointwise(depthwise_compute(x, f, wl, None, arithmetic), p, wl, bias)


def prim_func(wl: Workload, arithmetic: Arithmetic, layout: str | None = None) -> "tirx.PrimFunc":
    """The unscheduled PrimFunc for `wl` in the target's `arithmetic`: args are the inputs in
    call order, then the output. `layout`: the layout the convolution is computed in (default:
    `wl.layout`); where it is another (`Backend.compute_layout`), the input is transposed into it
    first and the result back into `wl.layout`, which moves every value but computes none."""
    names = ("input", "filter") + (("pointwise_filter",) if wl.op == "separable" else ()) + ("bias",)
    args = [te.placeholder(shape, wl.dtype, name=n) for n, shape in zip(names, wl.arg_shapes)]
    bias = args[-1] if wl.bias else None
    inner = wl if layout in (None, wl.layout) else dataclasses.replace(wl, layout=layout)
    x = args[0] if inner is wl else _transposed(args[0], wl, inner, inner.input_shape, "input")
    if wl.op == "depthwise":
        out = depthwise_compute(x, args[1], inner, bias, arithmetic)
    else:
        out = separable_compute(x, args[1], args[2], inner, bias, arithmetic)
    if inner is not wl:
        out = _transposed(out, inner, wl, wl.output_shape, "output")
    func = te.create_prim_func([*args, out]).with_attr("global_symbol", "main")
    return _element_aligned(func, wl.dtype)


def _transposed(t: te.Tensor, source: Workload, dest: Workload, shape: tuple[int, ...], name: str) -> te.Tensor:
    """`t`, an activation in `source`'s layout, in `dest`'s: the stage `<name>_<dest layout>`."""
    return te.compute(shape, lambda *idx: t[source.axes.arrange(*dest.axes.split(idx))],
                      name=f"{name}_{dest.layout.lower()}")


def _element_aligned(func: tirx.PrimFunc, dtype: str) -> tirx.PrimFunc:
    """Redeclare the parameter buffers as aligned to one element only.

    `create_prim_func` declares 64-byte-aligned parameters and the code
    generator then emits aligned vector moves, which fault on ordinary numpy
    and torch arrays (16-byte aligned). With element alignment the same
    code uses unaligned moves (as fast on aligned data) and every caller's
    array works in place. TVM 0.27 exposes no buffer map on PrimFunc, so the
    parameters are rewritten in TVMScript, TVM's own round-trippable form.
    """
    itemsize = tvm.DataType(dtype).bits // 8
    text = re.sub(r'(: T\.Buffer\(\([^)]*\), "\w+")\)', rf"\1, align={itemsize})", func.script())
    return tvm.script.from_source(text)
