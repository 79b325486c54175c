"""Argument resolution: TF's padding rule, exhaustively, and every rejected input."""

import dataclasses
import itertools

import numpy as np
import pytest

from tvmsep.spec import depthwise_workload, same_padding, separable_workload


def _same_by_search(size, kernel, stride, dilation):
    """TF's SAME stated as a search: the least total padding giving ceil(size/stride) outputs,
    with the odd pixel after."""
    span = (kernel - 1) * dilation + 1
    want = -(-size // stride)
    for total in range(0, span + stride + 1):
        if (size + total - span) // stride + 1 == want and size + total >= span:
            return total // 2, total - total // 2
    raise AssertionError("no padding found")


def test_same_padding_exhaustive():
    for size, kernel, stride, dilation in itertools.product(range(1, 40), range(1, 8), range(1, 4), range(1, 4)):
        assert same_padding(size, kernel, stride, dilation) == _same_by_search(size, kernel, stride, dilation), \
            (size, kernel, stride, dilation)


def test_same_padding_puts_extra_after():
    # 224 input, 3x3, stride 2: TF pads 0 before and 1 after (TVM's helper pads 1 and 1).
    assert same_padding(224, 3, 2, 1) == (0, 1)
    assert same_padding(7, 4, 1, 1) == (1, 2)


def dw(x=(1, 8, 8, 4), f=(3, 3, 4, 1), strides=(1, 1, 1, 1), padding="SAME", dtype="float32", fdtype=None,
       **kw):
    return depthwise_workload(x, dtype, f, fdtype or dtype, strides, padding, **kw)


def test_resolves_tf_arguments():
    wl = dw((2, 3, 9, 9), (3, 2, 3, 2), (1, 1, 2, 2), "SAME", data_format="NCHW")
    assert wl.output_shape == (2, 6, 5, 5)
    assert (wl.pad_top, wl.pad_bottom, wl.pad_left, wl.pad_right) == (1, 1, 0, 1)
    wl = dw(padding=[[0, 0], [1, 2], [0, 3], [0, 0]], rate=[2, 1])
    assert (wl.pad_top, wl.pad_bottom, wl.pad_left, wl.pad_right, wl.dilation_h) == (1, 2, 0, 3, 2)
    assert dw(strides=np.array([1, 2, 2, 1])).stride_h == 2  # numpy ints are ints
    sep = separable_workload((1, 8, 8, 4), "float32", (3, 3, 4, 2), "float32", (1, 1, 8, 5), "float32",
                             [1, 1, 1, 1], "VALID")
    assert sep.output_shape == (1, 6, 6, 5) and sep.op == "separable"


def test_idempotent_and_hashable():
    assert dw() == dw() and hash(dw()) == hash(dw())
    assert dw(rate=2) == dw(dilations=[2, 2]) == dw(rate=[2, 2], dilations=(2, 2))


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(x=(8, 8, 4)), ValueError, "`input` must be 4-D"),
    (dict(f=(3, 3, 4)), ValueError, "`filter` must be 4-D"),
    (dict(f=(3, 3, 5, 1)), ValueError, "5 input channels"),
    (dict(strides=(1, 1, 1)), ValueError, "`strides` must be a list of 4 ints"),
    (dict(strides=(2, 1, 1, 1)), ValueError, "batch and channel"),
    (dict(strides=(1, 1, 1, 2)), ValueError, "batch and channel"),
    (dict(strides=(1, 0, 1, 1)), ValueError, "height stride must be between 1 and"),
    (dict(strides=(1, 1, -1, 1)), ValueError, "width stride must be between 1 and"),
    (dict(strides=(1, 9, 1, 1)), ValueError, "height stride must be between 1 and the input height (8)"),
    (dict(strides=(1, 1.5, 1, 1)), ValueError, "`strides` must be a list of 4 ints"),
    (dict(strides="1111"), TypeError, "`strides` must be a list"),
    (dict(strides=(1, 2, 2, 1), rate=2), ValueError, "requires all strides to be 1"),
    (dict(rate=0), ValueError, "`rate` must be positive"),
    (dict(rate=[1, 2, 3]), ValueError, "`rate` must be a list of 2 ints"),
    (dict(rate=2, dilations=3), ValueError, "disagree"),
    (dict(padding="same"), ValueError, "`padding` must be 'SAME', 'VALID'"),
    (dict(padding=[[0, 0], [1, 1], [1, 1]]), ValueError, "4 [before, after] pairs"),
    (dict(padding=[[0, 0], [-1, 1], [1, 1], [0, 0]]), ValueError, "non-negative"),
    (dict(padding=[[1, 0], [1, 1], [1, 1], [0, 0]]), ValueError, "batch and channel dimensions must be [0, 0]"),
    (dict(padding=[[0, 0], [1, 1], [1, 1], [0, 1]]), ValueError, "batch and channel dimensions must be [0, 0]"),
    (dict(padding=[[0, 0], [1], [1, 1], [0, 0]]), ValueError, "4 [before, after] pairs"),
    (dict(padding=3), ValueError, "4 [before, after] pairs"),
    (dict(data_format="NCWH"), ValueError, "`data_format` must be 'NHWC' or 'NCHW'"),
    (dict(dtype="int32"), TypeError, "`input` has dtype int32"),
    (dict(dtype="complex64"), TypeError, "supported dtypes are float16, float32, float64"),
    (dict(fdtype="float64"), TypeError, "`filter` has dtype float64 but `input` has float32"),
    (dict(x=(1, 2, 2, 4), padding="VALID"), ValueError, "larger than the padded input"),
    (dict(x=(1, 0, 8, 4)), ValueError, "positive height, width and channels"),
    (dict(f=(0, 3, 4, 1)), ValueError, "must be positive"),
    (dict(name=3), TypeError, "`name` must be a string"),
    (dict(activation="relu7"), ValueError, "`activation` must be None, 'relu' or 'relu6'"),
    (dict(activation=["relu"]), ValueError, "`activation` must be None, 'relu' or 'relu6'"),
    (dict(bias=((8,), "float32")), ValueError, "`bias` must have shape [4]"),
    (dict(bias=((1, 4), "float32")), ValueError, "`bias` must be 1-D"),
    (dict(bias=((4,), "float64")), TypeError, "`bias` has dtype float64 but `input` has float32"),
])
def test_rejects(kwargs, error, words):
    with pytest.raises(error) as info:
        dw(**kwargs)
    assert words in str(info.value)
    assert "depthwise_conv2d" in str(info.value)


def test_epilogue_fields():
    wl = dw(f=(3, 3, 4, 2), bias=((8,), "float32"), activation="relu6")
    assert wl.bias and wl.activation == "relu6" and wl.arg_shapes[-1] == (8,)
    assert "+bias relu6" in wl.describe()
    assert wl != dw(f=(3, 3, 4, 2)) and wl != dw(f=(3, 3, 4, 2), bias=((8,), "float32"), activation="relu")
    sep = separable_workload((1, 8, 8, 4), "float32", (3, 3, 4, 1), "float32", (1, 1, 4, 5), "float32",
                             [1, 1, 1, 1], "SAME", bias=((5,), "float32"))
    assert sep.arg_shapes == ((1, 8, 8, 4), (3, 3, 4, 1), (1, 1, 4, 5), (5,))
    # A workload without an epilogue writes the same JSON (cache keys, bundles) as before there was one.
    assert "bias" not in dw().to_json() and "activation" not in dw().to_json()
    for workload in (wl, sep, dw()):
        assert type(workload).from_json(workload.to_json()) == workload


def test_packed_pointwise_weights_field():
    sep = separable_workload((1, 8, 8, 4), "float32", (3, 3, 4, 1), "float32", (1, 1, 4, 64), "float32",
                             [1, 1, 1, 1], "SAME")
    packed = dataclasses.replace(sep, pointwise_panel=16)
    assert packed.pointwise_shape == (4, 4, 16) and packed.arg_shapes[2] == (4, 4, 16)
    assert packed.output_shape == sep.output_shape and "panels of 16" in packed.describe()
    # TF's layout writes the JSON (cache keys, bundles) it wrote before the field existed.
    assert "pointwise_panel" not in sep.to_json()
    assert type(packed).from_json(packed.to_json()) == packed != sep


@pytest.mark.parametrize("pointwise, words", [
    ((1, 1, 4, 5), "must have shape [1, 1, 8, out_channels]"),
    ((3, 1, 8, 5), "must have shape [1, 1, 8, out_channels]"),
    ((1, 1, 8, 0), "must have shape [1, 1, 8, out_channels]"),
    ((1, 8, 5), "`pointwise_filter` must be 4-D"),
])
def test_rejects_bad_pointwise(pointwise, words):
    with pytest.raises(ValueError) as info:
        separable_workload((1, 8, 8, 4), "float32", (3, 3, 4, 2), "float32", pointwise, "float32",
                           [1, 1, 1, 1], "SAME")
    assert words in str(info.value)
