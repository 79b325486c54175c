"""tvmsep.DepthwiseConv2D and SeparableConv2D, the ops as layers that hold their weights, against the
float64 reference and the ops."""

import pickle

import numpy as np
import pytest
import tvm

import tvmsep
from tvmsep.reference import depthwise_reference, separable_reference
from tvmsep.schedules.llvm import pointwise_panel
from tvmsep.spec import depthwise_workload, separable_workload
from tvmsep.target import host_target

from conftest import assert_close

# (input, depthwise filter, pointwise filter, strides, padding, data_format, dtype, epilogue, packed): `packed`,
# whether the layer packs its pointwise weights on any CPU (rows of 512 bytes, which the op's GEMM copies
# panel by panel, in a kernel too small to run on more than one core), None where that depends on the cores.
CASES = [
    ((1, 4, 4, 16), (3, 3, 16, 1), (1, 1, 16, 128), [1, 1, 1, 1], "SAME", "NHWC", "float32", True, True),
    ((1, 9, 17, 8), (3, 3, 8, 2), (1, 1, 16, 256), [1, 2, 2, 1], "VALID", "NHWC", "float16", True, True),
    ((1, 6, 6, 8), (3, 3, 8, 1), (1, 1, 8, 64), [1, 1, 1, 1], [[0, 0], [1, 2], [0, 1], [0, 0]], "NHWC", "float64",
     False, True),
    ((2, 8, 8, 64), (3, 3, 64, 1), (1, 1, 64, 128), [1, 1, 1, 1], "SAME", "NHWC", "float32", True, None),
    # NCHW, whose GEMM is NHWC's (`llvm.compute_layout`).
    ((1, 16, 4, 4), (3, 3, 16, 1), (1, 1, 16, 128), [1, 1, 1, 1], "SAME", "NCHW", "float32", True, True),
    # Kept in TF's layout: a GEMM of one panel, a padded GEMM, rows of 256 bytes.
    ((1, 8, 8, 8), (3, 3, 8, 1), (1, 1, 8, 16), [1, 1, 1, 1], "SAME", "NHWC", "float32", False, False),
    ((1, 19, 19, 16), (3, 3, 16, 1), (1, 1, 16, 40), [1, 1, 1, 1], "SAME", "NHWC", "float32", True, False),
    ((1, 16, 9, 9), (3, 3, 16, 1), (1, 1, 16, 64), [1, 1, 1, 1], "SAME", "NCHW", "float32", False, False),
]


def _arrays(rng, case):
    x_shape, f_shape, p_shape, *_, dtype, epilogue, _ = case
    x, f, p = (rng.standard_normal(shape).astype(dtype) for shape in (x_shape, f_shape, p_shape))
    bias = (3 * rng.standard_normal(p_shape[3])).astype(dtype) if epilogue else None
    return x, f, p, bias


def _workload(case, x, f, p, bias):
    *_, strides, padding, data_format, _, _, _ = case
    return separable_workload(x.shape, x.dtype, f.shape, f.dtype, p.shape, p.dtype, strides, padding,
                              data_format=data_format, activation=None if bias is None else "relu6",
                              bias=None if bias is None else (bias.shape, bias.dtype))


@pytest.mark.parametrize("n", range(len(CASES)))
def test_a_layer_matches_the_reference_and_the_op(rng, n):
    case = CASES[n]
    *_, strides, padding, data_format, dtype, epilogue, packed = case
    x, f, p, bias = _arrays(rng, case)
    wl = _workload(case, x, f, p, bias)
    if packed is not None:
        assert (pointwise_panel(wl, host_target()) > 0) == packed
    options = dict(data_format=data_format, bias=bias, activation="relu6" if epilogue else None)
    layer = tvmsep.SeparableConv2D(f, p, strides, padding, **options)
    expected = separable_reference(x, f, p, wl, bias)
    assert_close(layer(x), expected, dtype)
    out = np.full(wl.output_shape, np.nan, dtype)
    assert layer(x, out=out) is out  # the memo's path, into a poisoned `out`
    assert_close(out, expected, dtype)
    # Only where the weights lie differs: the op's result, to the bit.
    np.testing.assert_array_equal(out, tvmsep.separable_conv2d(x, f, p, strides, padding, **options))


@pytest.mark.parametrize("dtype", ["float32", "float16", "float64"])
def test_a_depthwise_layer_matches_the_reference_and_the_op(rng, dtype):
    f = rng.standard_normal((3, 3, 12, 2)).astype(dtype)
    bias = (3 * rng.standard_normal(24)).astype(dtype)
    layer = tvmsep.DepthwiseConv2D(f, [1, 2, 2, 1], "SAME", rate=None, bias=bias, activation="relu6")
    # Inputs of two shapes in turn: each call after the first of a shape takes the layer's short path.
    for shape in ((1, 9, 11, 12), (2, 16, 7, 12), (1, 9, 11, 12)):
        x = rng.standard_normal(shape).astype(dtype)
        wl = depthwise_workload(x.shape, x.dtype, f.shape, f.dtype, [1, 2, 2, 1], "SAME", activation="relu6",
                                bias=(bias.shape, bias.dtype))
        expected = depthwise_reference(x, f, wl, bias)
        out = np.full(wl.output_shape, np.nan, dtype)
        assert layer(x, out=out) is out
        assert_close(out, expected, dtype)
        np.testing.assert_array_equal(
            layer(x), tvmsep.depthwise_conv2d(x, f, [1, 2, 2, 1], "SAME", bias=bias, activation="relu6"))
    with pytest.raises(TypeError):  # the short path is keyed by dtype too: this input is checked, and refused
        layer(x.astype(np.float32 if dtype != "float32" else np.float64))


def test_a_layer_for_an_avx2_cpu_packs_panels_of_its_width(rng):
    """Panels follow the target's vectors: 16 lanes of float32 on AVX2 (whose code this CPU runs)."""
    avx2 = {"kind": "llvm", "mcpu": "haswell", "num-cores": 2}
    case = CASES[0]
    x, f, p, bias = _arrays(rng, case)
    wl = _workload(case, x, f, p, bias)
    assert pointwise_panel(wl, tvm.target.Target(avx2)) == 16
    layer = tvmsep.SeparableConv2D(f, p, case[3], case[4], bias=bias, activation="relu6", target=avx2)
    out = np.full(wl.output_shape, np.nan, np.float32)
    assert layer(x, out=out) is out
    assert_close(out, separable_reference(x, f, p, wl, bias), "float32")


def test_a_layer_holds_copies_of_its_weights(rng):
    case = CASES[0]
    x, f, p, _ = _arrays(rng, case)
    wl = _workload(case, x, f, p, None)
    expected = separable_reference(x, f, p, wl)
    layer = tvmsep.SeparableConv2D(f, p, case[3], case[4])
    depthwise = tvmsep.DepthwiseConv2D(f, case[3], case[4])
    expected_depthwise = tvmsep.depthwise_conv2d(x, f, case[3], case[4])
    f[...], p[...] = rng.standard_normal(f.shape), rng.standard_normal(p.shape)  # the caller's arrays change
    assert_close(layer(x), expected, "float32")
    np.testing.assert_array_equal(depthwise(x), expected_depthwise)


def test_a_layer_takes_inputs_of_any_size_its_weights_suit(rng):
    case = CASES[3]
    _, f, p, bias = _arrays(rng, case)
    layer = tvmsep.SeparableConv2D(f, p, case[3], case[4], bias=bias, activation="relu6")
    for shape in ((1, 5, 7, 64), (3, 16, 9, 64)):
        x = rng.standard_normal(shape).astype(np.float32)
        assert_close(layer(x), separable_reference(x, f, p, _workload(case, x, f, p, bias), bias), "float32")


def test_a_layer_checks_its_input_as_the_op_does(rng):
    case = CASES[0]
    x, f, p, _ = _arrays(rng, case)
    layer = tvmsep.SeparableConv2D(f, p, case[3], case[4])
    for bad in (x[..., :-1], x.astype(np.float64)):
        with pytest.raises((ValueError, TypeError)) as from_op:
            tvmsep.separable_conv2d(bad, f, p, case[3], case[4])
        with pytest.raises(type(from_op.value)) as from_layer:
            layer(bad)
        assert str(from_layer.value) == str(from_op.value)
    with pytest.raises(TypeError, match="`pointwise_filter` must be an array"):
        tvmsep.SeparableConv2D(f, _NotAnArray(), case[3], case[4])


def test_a_layer_pickles_with_its_weights_and_says_what_it_holds(rng):
    case = CASES[1]
    x, f, p, bias = _arrays(rng, case)
    layer = tvmsep.SeparableConv2D(f, p, case[3], case[4], bias=bias, activation="relu6")
    expected = layer(x)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(layer))(x), expected)
    assert repr(layer) == ("<tvmsep.SeparableConv2D 3x3x8x2, 1x1x16x256 float16, strides=[1, 2, 2, 1], "
                           "padding='VALID', +bias, relu6>")
    depthwise = tvmsep.DepthwiseConv2D(f, case[3], case[4], data_format="NHWC")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(depthwise))(x), depthwise(x))
    assert repr(depthwise) == "<tvmsep.DepthwiseConv2D 3x3x8x2 float16, strides=[1, 2, 2, 1], padding='VALID'>"


class _NotAnArray:
    def __array__(self, *args, **kwargs):
        raise RuntimeError("not on the host")
