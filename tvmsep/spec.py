"""TF-style arguments -> one frozen, hashable workload.

This module is the only place that validates user input. Everything
downstream (compute, schedules, build, cache) sees a `Workload`, whose
padding is explicit (before, after) pairs and whose fields are plain ints
and strings, and trusts it.

TF's SAME rule (`tf.nn` padding docs), per spatial dimension:

    out    = ceil(in / stride)
    total  = max((out - 1) * stride + (k - 1) * rate + 1 - in, 0)
    before = total // 2          # the extra row/column goes after
"""

from __future__ import annotations

import dataclasses
import functools
import numbers
from typing import Any, Sequence

__all__ = [
    "Workload",
    "Layout",
    "LAYOUTS",
    "LayerArguments",
    "SUPPORTED_DTYPES",
    "ACTIVATIONS",
    "same_padding",
    "split_bias",
    "depthwise_workload",
    "separable_workload",
]

SUPPORTED_DTYPES = ("float16", "float32", "float64")
ACTIVATIONS = ("relu", "relu6")  # tf.nn.relu: max(x, 0); tf.nn.relu6: min(max(x, 0), 6)
OPS = ("depthwise", "separable")
# Extents and index arithmetic in the generated code are int32.
_MAX_ELEMENTS = 2**31 - 1


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where a data format puts each axis of a 4-D activation (input, intermediate, output).

    The one table that every shape, every TF-style `strides` and explicit `padding`
    argument, and every index of the TE definitions and the reference is arranged
    by: `arrange` puts values given per axis into this layout's order, `split`
    takes them back out."""

    name: str
    batch: int
    height: int
    width: int
    channels: int

    def arrange(self, batch: Any, height: Any, width: Any, channels: Any) -> tuple:
        values: list[Any] = [None] * 4
        values[self.batch], values[self.height], values[self.width], values[self.channels] = \
            batch, height, width, channels
        return tuple(values)

    def split(self, values: Sequence[Any]) -> tuple:
        """(batch, height, width, channels) from values in this layout's order."""
        return values[self.batch], values[self.height], values[self.width], values[self.channels]

    def strides(self, height: int, width: int) -> list[int]:
        """TF's `strides` argument: 1 on the batch and channel axes."""
        return list(self.arrange(1, height, width, 1))

    def padding(self, rows: Sequence[int], columns: Sequence[int]) -> list[list[int]]:
        """TF's explicit `padding` argument from (before, after) pairs of the two spatial axes."""
        return [list(pair) for pair in self.arrange((0, 0), rows, columns, (0, 0))]


LAYOUTS = {layout.name: layout for layout in (Layout("NHWC", 0, 1, 2, 3), Layout("NCHW", 0, 2, 3, 1))}


@dataclasses.dataclass(frozen=True)
class Workload:
    """One convolution, fully resolved.

    Fields are in TF's vocabulary; pads are explicit and non-negative.
    `out_channels` is `in_channels * multiplier` for depthwise and the
    pointwise filter's last dimension for separable. The optional epilogue
    applies to the op's output (for separable, after the pointwise mix):
    `bias` adds a per-output-channel vector, then `activation` (None or one
    of ACTIVATIONS) is applied, before the single rounding to `dtype`.
    """

    op: str  # "depthwise" or "separable"
    layout: str  # "NHWC" or "NCHW"
    dtype: str  # one of SUPPORTED_DTYPES, shared by inputs and output
    batch: int
    in_height: int
    in_width: int
    in_channels: int
    kernel_h: int
    kernel_w: int
    multiplier: int
    out_channels: int
    stride_h: int
    stride_w: int
    dilation_h: int
    dilation_w: int
    pad_top: int
    pad_bottom: int
    pad_left: int
    pad_right: int
    bias: bool = False
    activation: str | None = None
    # Separable only: the pointwise weights packed ahead in panels of this many output channels,
    # [O / panel, C*M, panel], as a prepared layer holds them (`tvmsep.layer`); 0: TF's [1, 1, C*M, O].
    pointwise_panel: int = 0

    @property
    def mid_channels(self) -> int:
        """Channels of the depthwise result: in_channels * multiplier."""
        return self.in_channels * self.multiplier

    @property
    def out_height(self) -> int:
        span = (self.kernel_h - 1) * self.dilation_h + 1
        return (self.in_height + self.pad_top + self.pad_bottom - span) // self.stride_h + 1

    @property
    def out_width(self) -> int:
        span = (self.kernel_w - 1) * self.dilation_w + 1
        return (self.in_width + self.pad_left + self.pad_right - span) // self.stride_w + 1

    @property
    def axes(self) -> Layout:
        return LAYOUTS[self.layout]

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return self.axes.arrange(self.batch, self.in_height, self.in_width, self.in_channels)

    @property
    def filter_shape(self) -> tuple[int, int, int, int]:
        return (self.kernel_h, self.kernel_w, self.in_channels, self.multiplier)

    @property
    def pointwise_shape(self) -> tuple[int, ...]:
        """TF's [1, 1, C*M, O], or packed in panels (`pointwise_panel`)."""
        if self.pointwise_panel:
            return (self.out_channels // self.pointwise_panel, self.mid_channels, self.pointwise_panel)
        return (1, 1, self.mid_channels, self.out_channels)

    @functools.cached_property  # every call of an op reads it
    def output_shape(self) -> tuple[int, int, int, int]:
        return self.axes.arrange(self.batch, self.out_height, self.out_width, self.out_channels)

    @property
    def mid_shape(self) -> tuple[int, int, int, int]:
        """Shape of the depthwise result (a separable's intermediate)."""
        return self.axes.arrange(self.batch, self.out_height, self.out_width, self.mid_channels)

    @property
    def bias_shape(self) -> tuple[int]:
        return (self.out_channels,)

    @property
    def arg_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Shapes of the kernel's inputs, in call order: input, filter[, pointwise filter][, bias]."""
        shapes = [self.input_shape, self.filter_shape]
        if self.op == "separable":
            shapes.append(self.pointwise_shape)
        if self.bias:
            shapes.append(self.bias_shape)
        return tuple(shapes)

    @property
    def flops(self) -> int:
        """Multiply-adds counted as two flops."""
        spatial = self.batch * self.out_height * self.out_width
        depthwise = 2 * spatial * self.mid_channels * self.kernel_h * self.kernel_w
        if self.op == "depthwise":
            return depthwise
        return depthwise + 2 * spatial * self.mid_channels * self.out_channels

    def call_arguments(self) -> tuple[list[int], list[list[int]], list[int], str]:
        """(strides, explicit padding, rate, data_format): public-API arguments that resolve to exactly this."""
        padding = self.axes.padding((self.pad_top, self.pad_bottom), (self.pad_left, self.pad_right))
        return self.axes.strides(self.stride_h, self.stride_w), padding, [self.dilation_h, self.dilation_w], \
            self.layout

    def pre_padded(self) -> "Workload":
        """The same output from VALID padding on an input padded beforehand: the same work
        with no tap over the padding (what a padded kernel's tests cost is measured against it)."""
        return dataclasses.replace(self, in_height=self.in_height + self.pad_top + self.pad_bottom,
                                   in_width=self.in_width + self.pad_left + self.pad_right,
                                   pad_top=0, pad_bottom=0, pad_left=0, pad_right=0)

    def describe(self) -> str:
        """Short human-readable form, e.g. `dw 1x112x112x32 k3 s2 -> 1x56x56x32`."""
        shape = "x".join(map(str, self.input_shape))
        out = "x".join(map(str, self.output_shape))
        extra = ""
        if self.multiplier != 1:
            extra += f" m{self.multiplier}"
        if (self.dilation_h, self.dilation_w) != (1, 1):
            extra += f" r{self.dilation_h}"
        stride = self.stride_h if self.stride_h == self.stride_w else f"{self.stride_h},{self.stride_w}"
        kernel = self.kernel_h if self.kernel_h == self.kernel_w else f"{self.kernel_h}x{self.kernel_w}"
        if self.bias:
            extra += " +bias"
        if self.activation:
            extra += f" {self.activation}"
        if self.pointwise_panel:
            extra += f" panels of {self.pointwise_panel}"
        op = "dw" if self.op == "depthwise" else "sep"
        return f"{op} {self.layout} {shape} k{kernel} s{stride}{extra} {self.dtype} -> {out}"

    def to_json(self) -> dict[str, Any]:
        """The fields; the later ones (the epilogue's, the packed weights') only when set.
        Bundles name each kernel's function by a hash of this JSON (`bundle.function_name_for`),
        and the disk cache keys by it, so a workload without them must keep the JSON it had
        before they existed: with the default fields written out, every bundle compiled so far
        would be refused."""
        fields = dataclasses.asdict(self)
        for name in _LATER_FIELDS:
            if fields[name] == _LATER_FIELDS[name]:
                del fields[name]
        return fields

    @classmethod
    def from_json(cls, fields: dict[str, Any]) -> "Workload":
        return cls(**fields)


_LATER_FIELDS = {"bias": False, "activation": None, "pointwise_panel": 0}  # name -> default


def split_bias(op: str, arrays: Sequence[Any]) -> tuple[list[Any], Any]:
    """(the op's input and filters, the epilogue's bias or None) from arrays in call
    order, where the bias, when there is one, follows the 2 (depthwise) or 3 (separable) others."""
    count = 2 if op == "depthwise" else 3
    return list(arrays[:count]), (arrays[count] if len(arrays) > count else None)


def same_padding(in_size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF's SAME padding for one spatial dimension, as (before, after)."""
    out = -(-in_size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - in_size, 0)
    return total // 2, total - total // 2


# --------------------------------------------------------------------------
# Argument checks. Each names the op, the argument and what is allowed.


def _is_int(x: Any) -> bool:
    return isinstance(x, numbers.Integral) and not isinstance(x, bool)


def _int_list(op: str, name: str, value: Any, length: int) -> tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) and not hasattr(value, "__len__"):
        raise TypeError(f"{op}: `{name}` must be a list of {length} ints, got {value!r}")
    items = list(value)
    if len(items) != length or not all(_is_int(v) for v in items):
        raise ValueError(f"{op}: `{name}` must be a list of {length} ints, got {value!r}")
    return tuple(int(v) for v in items)


def _dtype_name(op: str, name: str, dtype: Any) -> str:
    text = str(dtype)
    if text not in SUPPORTED_DTYPES:
        raise TypeError(f"{op}: `{name}` has dtype {text}; supported dtypes are {', '.join(SUPPORTED_DTYPES)}")
    return text


def _shape(op: str, name: str, shape: Sequence[int], rank: int = 4) -> tuple[int, ...]:
    shape = tuple(int(d) for d in shape)
    if len(shape) != rank:
        raise ValueError(f"{op}: `{name}` must be {rank}-D, got shape {shape}")
    return shape


def _data_format(op: str, data_format: Any) -> str:
    if data_format is None:
        return "NHWC"
    if data_format not in LAYOUTS:
        raise ValueError(f"{op}: `data_format` must be 'NHWC' or 'NCHW', got {data_format!r}")
    return data_format


def _dilation(op: str, rate: Any, dilations: Any) -> tuple[int, int]:
    """`rate` (TF1) and `dilations` (TF2) name the same thing; either may be given."""
    resolved = []
    for name, value in (("rate", rate), ("dilations", dilations)):
        if value is None:
            continue
        pair = (int(value),) * 2 if _is_int(value) else _int_list(op, name, value, 2)
        if min(pair) < 1:
            raise ValueError(f"{op}: `{name}` must be positive ints, got {value!r}")
        resolved.append(pair)
    if len(resolved) == 2 and resolved[0] != resolved[1]:
        raise ValueError(f"{op}: `rate` {rate!r} and `dilations` {dilations!r} disagree; give one of them")
    return resolved[0] if resolved else (1, 1)


def _spatial_pads(op: str, padding: Any, layout: str, sizes: tuple[int, int],
                  kernels: tuple[int, int], strides: tuple[int, int],
                  dilations: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    if isinstance(padding, str):
        if padding == "VALID":
            return (0, 0), (0, 0)
        if padding == "SAME":
            pads = tuple(same_padding(*dim) for dim in zip(sizes, kernels, strides, dilations))
            return pads  # type: ignore[return-value]
        raise ValueError(f"{op}: `padding` must be 'SAME', 'VALID' or a list of 4 [before, after] pairs, "
                         f"got {padding!r}")
    bad = ValueError(f"{op}: explicit `padding` must be 4 [before, after] pairs of non-negative ints in "
                     f"{layout} order, got {padding!r}")
    try:
        pairs = [tuple(p) for p in padding]
    except TypeError as e:
        raise bad from e
    if len(pairs) != 4 or any(len(p) != 2 or not all(_is_int(v) and v >= 0 for v in p) for p in pairs):
        raise bad
    batch, rows, columns, channels = LAYOUTS[layout].split(pairs)
    if batch != (0, 0) or channels != (0, 0):
        raise ValueError(f"{op}: explicit `padding` on the batch and channel dimensions must be [0, 0], "
                         f"got {padding!r}")
    return tuple(int(v) for v in rows), tuple(int(v) for v in columns)  # type: ignore[return-value]


def _spatial_strides(op: str, strides: Any, layout: str, sizes: tuple[int, int]) -> tuple[int, int]:
    values = _int_list(op, "strides", strides, 4)
    batch, height, width, channels = LAYOUTS[layout].split(values)
    if batch != 1 or channels != 1:
        raise ValueError(f"{op}: `strides` must be 1 on the batch and channel dimensions "
                         f"({layout} order), got {list(values)}")
    spatial = (height, width)
    for axis, stride, size in zip(("height", "width"), spatial, sizes):
        if not 1 <= stride <= size:
            raise ValueError(f"{op}: the {axis} stride must be between 1 and the input {axis} ({size}), "
                             f"got {stride} in `strides` {list(values)}")
    return spatial


def _activation(op: str, activation: Any) -> str | None:
    if activation is not None and not (isinstance(activation, str) and activation in ACTIVATIONS):
        raise ValueError(f"{op}: `activation` must be None, 'relu' or 'relu6', got {activation!r}")
    return activation


Tensor = tuple[Sequence[int], Any]  # an argument as the checks see it: (shape, dtype)


@dataclasses.dataclass(frozen=True)
class _Options:
    """An op's keyword arguments other than its arrays, as the public call gives them."""

    strides: Any
    padding: Any
    rate: Any
    name: Any
    data_format: Any
    dilations: Any
    activation: Any


def _workload(op: str, input: Tensor, filter: Tensor, pointwise: Tensor | None, bias: Tensor | None,
              options: _Options) -> Workload:
    """The checks of one call: name, activation and layout, the arrays' ranks and dtypes, the
    input and filter shapes, dilation, strides and padding, the pointwise filter and bias,
    then the sizes."""
    if options.name is not None and not isinstance(options.name, str):
        raise TypeError(f"{op}: `name` must be a string or None, got {options.name!r}")
    activation = _activation(op, options.activation)
    layout = _data_format(op, options.data_format)
    x_shape, f_shape = _shape(op, "input", input[0]), _shape(op, "filter", filter[0])
    dtype = _common_dtype(op, input, filter, pointwise, bias)
    batch, height, width, channels = _input_and_filter(op, x_shape, f_shape, layout)
    kh, kw, _, multiplier = f_shape
    dil = _dilation(op, options.rate, options.dilations)
    stride = _spatial_strides(op, options.strides, layout, (height, width))
    if max(dil) > 1 and max(stride) > 1:
        raise ValueError(f"{op}: dilation {list(dil)} > 1 requires all strides to be 1, got strides "
                         f"{list(options.strides)}")
    (top, bottom), (left, right) = _spatial_pads(op, options.padding, layout, (height, width), (kh, kw), stride,
                                                 dil)
    out_channels = _out_channels(op, channels, multiplier, pointwise, bias)
    wl = Workload(op="depthwise" if pointwise is None else "separable", layout=layout, dtype=dtype, batch=batch,
                  in_height=height, in_width=width, in_channels=channels, kernel_h=kh, kernel_w=kw,
                  multiplier=multiplier, out_channels=out_channels, stride_h=stride[0], stride_w=stride[1],
                  dilation_h=dil[0], dilation_w=dil[1], pad_top=top, pad_bottom=bottom,
                  pad_left=left, pad_right=right, bias=bias is not None, activation=activation)
    _check_sizes(op, wl, options.padding)
    return wl


def _common_dtype(op: str, input: Tensor, filter: Tensor, pointwise: Tensor | None, bias: Tensor | None) -> str:
    """The input's dtype, which every other array must share."""
    dtype = _dtype_name(op, "input", input[1])
    others = [("filter", filter[1])] + ([("pointwise_filter", pointwise[1])] if pointwise else []) \
        + ([("bias", bias[1])] if bias else [])
    for arg, other in others:
        if _dtype_name(op, arg, other) != dtype:
            raise TypeError(f"{op}: `{arg}` has dtype {other} but `input` has {dtype}; they must match")
    return dtype


def _input_and_filter(op: str, x_shape: tuple[int, ...], f_shape: tuple[int, ...], layout: str) -> tuple:
    """(batch, height, width, channels) of an input that a depthwise filter fits."""
    batch, height, width, channels = LAYOUTS[layout].split(x_shape)
    if min(height, width, channels) < 1 or batch < 0:
        raise ValueError(f"{op}: `input` shape {x_shape} ({layout}) must have positive height, width "
                         "and channels")
    kh, kw, f_channels, multiplier = f_shape
    if min(kh, kw, multiplier) < 1:
        raise ValueError(f"{op}: `filter` shape {f_shape} must be positive "
                         "[filter_height, filter_width, in_channels, channel_multiplier]")
    if f_channels != channels:
        raise ValueError(f"{op}: `filter` has {f_channels} input channels (shape {f_shape}) but `input` "
                         f"has {channels} (shape {x_shape}, {layout})")
    return batch, height, width, channels


def _out_channels(op: str, channels: int, multiplier: int, pointwise: Tensor | None, bias: Tensor | None) -> int:
    """The result's channels: the depthwise's, or the pointwise filter's outputs; the bias has one per channel."""
    out_channels = channels * multiplier
    if pointwise is not None:
        p_shape = _shape(op, "pointwise_filter", pointwise[0])
        if p_shape[:3] != (1, 1, channels * multiplier) or p_shape[3] < 1:
            raise ValueError(f"{op}: `pointwise_filter` must have shape [1, 1, {channels * multiplier}, "
                             f"out_channels] (in_channels * channel_multiplier = {channels} * {multiplier}), "
                             f"got {p_shape}")
        out_channels = p_shape[3]
    if bias is not None and _shape(op, "bias", bias[0], rank=1) != (out_channels,):
        raise ValueError(f"{op}: `bias` must have shape [{out_channels}] (one value per output channel), "
                         f"got {list(bias[0])}")
    return out_channels


def _check_sizes(op: str, wl: Workload, padding: Any) -> None:
    """A result of at least one pixel, and tensors whose indices fit the generated code's int32."""
    if wl.out_height < 1 or wl.out_width < 1:
        raise ValueError(f"{op}: the dilated filter ({(wl.kernel_h - 1) * wl.dilation_h + 1}x"
                         f"{(wl.kernel_w - 1) * wl.dilation_w + 1}) is larger than the padded input "
                         f"({wl.in_height + wl.pad_top + wl.pad_bottom}x{wl.in_width + wl.pad_left + wl.pad_right}); "
                         f"padding {padding!r} leaves no output")
    padded = (wl.in_height + wl.pad_top + wl.pad_bottom, wl.in_width + wl.pad_left + wl.pad_right, wl.in_channels,
              max(wl.batch, 1))
    if any(_prod(s) > _MAX_ELEMENTS for s in (wl.input_shape, wl.output_shape, wl.mid_shape, padded)):
        raise ValueError(f"{op}: tensors of more than {_MAX_ELEMENTS} elements are not supported "
                         f"(input {wl.input_shape}, output {wl.output_shape})")


def _prod(shape: Sequence[int]) -> int:
    total = 1
    for d in shape:
        total *= d
    return total


def depthwise_workload(input_shape: Sequence[int], input_dtype: Any, filter_shape: Sequence[int],
                       filter_dtype: Any, strides: Any, padding: Any, rate: Any = None,
                       name: Any = None, data_format: Any = None, dilations: Any = None, *,
                       bias: Tensor | None = None, activation: Any = None) -> Workload:
    """Validate `tf.nn.depthwise_conv2d` arguments (by shape and dtype) into a Workload;
    `bias` is the (shape, dtype) of the epilogue's bias, if any."""
    return _workload("depthwise_conv2d", (input_shape, input_dtype), (filter_shape, filter_dtype), None, bias,
                     _Options(strides, padding, rate, name, data_format, dilations, activation))


def separable_workload(input_shape: Sequence[int], input_dtype: Any, depthwise_shape: Sequence[int],
                       depthwise_dtype: Any, pointwise_shape: Sequence[int], pointwise_dtype: Any,
                       strides: Any, padding: Any, rate: Any = None, name: Any = None,
                       data_format: Any = None, dilations: Any = None, *,
                       bias: Tensor | None = None, activation: Any = None) -> Workload:
    """Validate `tf.nn.separable_conv2d` arguments (by shape and dtype) into a Workload;
    `bias` is the (shape, dtype) of the epilogue's bias, if any."""
    return _workload("separable_conv2d", (input_shape, input_dtype), (depthwise_shape, depthwise_dtype),
                     (pointwise_shape, pointwise_dtype), bias,
                     _Options(strides, padding, rate, name, data_format, dilations, activation))


_LAYER_FIELDS = frozenset({"name", "op", "input_shape", "filter_shape", "pointwise_shape", "strides", "padding",
                           "rate", "data_format", "dtype", "bias", "activation"})


@dataclasses.dataclass(frozen=True)
class LayerArguments:
    """One layer as the public API takes it, in the fields of a layer file (`tvmsep compile
    --layers`): every layer list (the network presets, the configuration matrix, `tvmsep
    tune`'s shape flags, layer files) describes its layers so, and `workload()` is the one
    way from a description to a Workload, through the public ops' own checks.

    `pointwise_shape` makes a separable layer; `bias` says whether the layer takes one (its
    shape follows from the layer)."""

    input_shape: Sequence[int]
    filter_shape: Sequence[int]
    strides: Any
    padding: Any
    pointwise_shape: Sequence[int] | None = None
    rate: Any = None
    data_format: str | None = None
    dtype: str = "float32"
    bias: bool = False
    activation: str | None = None

    @property
    def op(self) -> str:
        return "depthwise" if self.pointwise_shape is None else "separable"

    @classmethod
    def from_json(cls, row: dict[str, Any]) -> LayerArguments:
        """A layer file's entry: these fields, plus `name` (the caller's) and `op` (default:
        separable when `pointwise_shape` is given). KeyError names a missing field."""
        unknown = set(row) - _LAYER_FIELDS
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; known: {sorted(_LAYER_FIELDS)}")
        op = row.get("op", "separable" if "pointwise_shape" in row else "depthwise")
        if op not in OPS:
            raise ValueError(f"`op` must be 'depthwise' or 'separable', got {op!r}")
        return cls(input_shape=row["input_shape"], filter_shape=row["filter_shape"], strides=row["strides"],
                   padding=row["padding"], pointwise_shape=row["pointwise_shape"] if op == "separable" else None,
                   rate=row.get("rate"), data_format=row.get("data_format"), dtype=row.get("dtype", "float32"),
                   bias=row.get("bias", False), activation=row.get("activation"))

    def workload(self) -> Workload:
        if not isinstance(self.bias, bool):
            raise ValueError(f"`bias` must be true or false (whether the layer takes one), got {self.bias!r}")
        wl = self._workload(None)
        return self._workload((wl.bias_shape, self.dtype)) if self.bias else wl

    def _workload(self, bias: Tensor | None) -> Workload:
        common = dict(rate=self.rate, data_format=self.data_format, bias=bias, activation=self.activation)
        if self.pointwise_shape is None:
            return depthwise_workload(self.input_shape, self.dtype, self.filter_shape, self.dtype, self.strides,
                                      self.padding, **common)
        return separable_workload(self.input_shape, self.dtype, self.filter_shape, self.dtype,
                                  self.pointwise_shape, self.dtype, self.strides, self.padding, **common)
