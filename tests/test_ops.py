"""The public ops against the float64 reference: random configurations, real layers, edge cases."""

import functools
import os
import pickle
import re
import threading
import time
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import tvmsep
from tvmsep import dispatch, ops, runtime
from tvmsep.backends import BACKENDS
from tvmsep.cache import CacheWarning
from tvmsep.networks import network
from tvmsep.reference import depthwise_reference, reference_for, separable_reference
from tvmsep.spec import depthwise_workload, separable_workload
from tvmsep.target import host_target

from conftest import assert_close
from helpers.draws import EXAMPLES, SEEDS, configs


def _bias(rng, cfg, channels):
    """A bias of `channels` values scaled to move results across relu6's 0 and 6, or None."""
    return (3 * rng.standard_normal(channels)).astype(cfg["dtype"]) if cfg["bias"] else None


def _random(rng, shape, dtype):
    return rng.standard_normal(shape).astype(dtype)


def _poisoned(shape, dtype):
    return np.full(shape, np.nan, dtype)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), use_out=st.booleans(), seed=SEEDS)
# Found by this test when kernels were built with TVM's loop partitioning: a loop cut to a
# negative extent (first), wrong rows (second).
@example(cfg={"x_shape": (2, 3, 5, 1), "f_shape": (2, 1, 1, 1), "p_shape": (1, 1, 1, 1), "strides": [1, 1, 1, 1],
              "padding": [[0, 0], [0, 1], [0, 0], [0, 0]], "rate": [2, 2], "data_format": "NHWC",
              "dtype": "float32", "activation": None, "bias": False}, use_out=False, seed=0)
@example(cfg={"x_shape": (1, 20, 7, 8), "f_shape": (1, 3, 20, 1), "p_shape": (1, 1, 20, 1), "strides": [1, 1, 2, 1],
              "padding": [[0, 0], [0, 0], [0, 3], [0, 0]], "rate": None, "data_format": "NCHW",
              "dtype": "float32", "activation": None, "bias": False}, use_out=False, seed=0)
def test_depthwise_matches_reference(cfg, use_out, seed):
    rng = np.random.default_rng(seed)
    x, f = _random(rng, cfg["x_shape"], cfg["dtype"]), _random(rng, cfg["f_shape"], cfg["dtype"])
    x_before, f_before = x.copy(), f.copy()
    bias = _bias(rng, cfg, f.shape[2] * f.shape[3])
    args = (cfg["strides"], cfg["padding"])
    kwargs = dict(rate=cfg["rate"], data_format=cfg["data_format"])
    epilogue = dict(activation=cfg["activation"])
    wl = depthwise_workload(x.shape, x.dtype, f.shape, f.dtype, *args, **kwargs, **epilogue,
                            bias=None if bias is None else (bias.shape, bias.dtype))
    out = _poisoned(wl.output_shape, cfg["dtype"]) if use_out else None
    y = tvmsep.depthwise_conv2d(x, f, *args, **kwargs, **epilogue, bias=bias, out=out)
    assert y.dtype == x.dtype and (out is None or y is out)
    assert_close(y, depthwise_reference(x, f, wl, bias), cfg["dtype"])
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(f, f_before)


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), seed=SEEDS)
def test_separable_matches_reference(cfg, seed):
    rng = np.random.default_rng(seed)
    x, f, p = (_random(rng, cfg[k], cfg["dtype"]) for k in ("x_shape", "f_shape", "p_shape"))
    bias = _bias(rng, cfg, p.shape[3])
    args = (cfg["strides"], cfg["padding"])
    kwargs = dict(dilations=cfg["rate"], data_format=cfg["data_format"], activation=cfg["activation"])
    wl = separable_workload(x.shape, x.dtype, f.shape, f.dtype, p.shape, p.dtype, *args, **kwargs,
                            bias=None if bias is None else (bias.shape, bias.dtype))
    out = _poisoned(wl.output_shape, cfg["dtype"])
    tvmsep.separable_conv2d(x, f, p, *args, **kwargs, bias=bias, out=out)
    assert_close(out, separable_reference(x, f, p, wl, bias), cfg["dtype"])


@pytest.mark.parametrize("layer", network("public"), ids=lambda layer: layer.name)
def test_public_layers(layer, rng):
    wl = layer.workload("separable")
    x, f, p = (_random(rng, s, "float32") for s in (wl.input_shape, wl.filter_shape, wl.pointwise_shape))
    rate = [layer.rate, layer.rate]
    dw = tvmsep.depthwise_conv2d(x, f, layer.strides, layer.padding, rate)
    assert_close(dw, depthwise_reference(x, f, layer.workload("depthwise")), "float32")
    sep = tvmsep.separable_conv2d(x, f, p, layer.strides, layer.padding, rate)
    assert_close(sep, separable_reference(x, f, p, wl), "float32")


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_epilogue_clamps_where_the_reference_does(layout, rng):
    """relu6 with a bias on a real layer: results on both clamps and between, each one as the
    reference has it; the same arrays without the epilogue give the plain convolution."""
    wl = network("mobilenet_v1")[1].workload("separable")
    shapes = (wl.input_shape, wl.filter_shape, wl.pointwise_shape)
    if layout == "NCHW":
        shapes = ((wl.batch, wl.in_channels, wl.in_height, wl.in_width), *shapes[1:])
    x, f, p = (_random(rng, s, "float32") for s in shapes)
    bias = _random(rng, (wl.out_channels,), "float32")
    strides = [1, wl.stride_h, wl.stride_w, 1] if layout == "NHWC" else [1, 1, wl.stride_h, wl.stride_w]
    plain = tvmsep.separable_conv2d(x, f, p, strides, "SAME", data_format=layout)
    y = tvmsep.separable_conv2d(x, f, p, strides, "SAME", data_format=layout, bias=bias, activation="relu6")
    channels = (1, -1) + (1, 1) if layout == "NCHW" else (-1,)
    expected = np.clip(plain.astype(np.float64) + bias.reshape(channels), 0, 6)
    assert (expected == 0).mean() > 0.1 and (expected == 6).mean() > 0.1 and ((0 < expected) & (expected < 6)).any()
    assert_close(y, expected, "float32")
    relu = tvmsep.separable_conv2d(x, f, p, strides, "SAME", data_format=layout, activation="relu")
    assert_close(relu, np.maximum(plain, 0), "float32")
    assert (plain < 0).any(), "the memo must not hand the epilogue's kernel to a plain call"


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(activation="gelu"), ValueError, "`activation` must be None, 'relu' or 'relu6'"),
    (dict(bias=np.zeros(3, np.float32)), ValueError, "`bias` must have shape [8]"),
    (dict(bias=np.zeros(8, np.float64)), TypeError, "`bias` has dtype float64"),
    (dict(bias=np.zeros((8, 1), np.float32)), ValueError, "`bias` must be 1-D"),
])
def test_bad_epilogue(kwargs, error, words, rng):
    x, f = _random(rng, (1, 5, 5, 4), "float32"), _random(rng, (3, 3, 4, 2), "float32")
    with pytest.raises(error, match=re.escape(words)):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", **kwargs)


def test_empty_batch_gives_empty_result(rng):
    """Also when repeated: the second call takes the memo's short path, with and without `out=`."""
    x = np.zeros((0, 9, 9, 3), np.float32)
    f, p = _random(rng, (3, 3, 3, 2), "float32"), _random(rng, (1, 1, 6, 4), "float32")
    for _ in range(2):
        y = tvmsep.separable_conv2d(x, f, p, [1, 2, 2, 1], "SAME")
        assert y.shape == (0, 5, 5, 4) and y.dtype == np.float32
        out = np.empty((0, 5, 5, 4), np.float32)
        assert tvmsep.separable_conv2d(x, f, p, [1, 2, 2, 1], "SAME", out=out) is out


def test_nan_propagates_only_where_it_is_read(rng):
    x = _random(rng, (1, 9, 9, 2), "float32")
    x[0, 0, 0, 0] = np.nan
    y = tvmsep.depthwise_conv2d(x, _random(rng, (3, 3, 2, 1), "float32"), [1, 1, 1, 1], "SAME")
    nan = np.isnan(y)
    assert nan[0, :2, :2, 0].all() and nan.sum() == 4  # the 2x2 outputs whose window covers (0, 0)


def test_non_contiguous_and_nested_lists(rng):
    base = _random(rng, (1, 12, 16, 6), "float64")
    x = base[:, ::2, ::2, ::2]  # strided view, non-contiguous
    f = np.asfortranarray(_random(rng, (3, 3, 3, 1), "float64"))
    wl = depthwise_workload(x.shape, x.dtype, f.shape, f.dtype, [1, 1, 1, 1], "VALID")
    assert_close(tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "VALID"), depthwise_reference(x, f, wl), "float64")
    nested = tvmsep.depthwise_conv2d(x.tolist(), f.tolist(), [1, 1, 1, 1], "VALID")
    assert_close(nested, depthwise_reference(x, f, wl), "float64")


def test_read_only_inputs(rng):
    """Weights loaded from a file or a bytes buffer are read-only; numpy's DLPack export refuses those."""
    x = _random(rng, (1, 9, 9, 4), "float32")
    f = np.frombuffer(_random(rng, (3, 3, 4, 2), "float32").tobytes(), np.float32).reshape(3, 3, 4, 2)
    p = np.frombuffer(_random(rng, (1, 1, 8, 3), "float32").tobytes(), np.float32).reshape(1, 1, 8, 3)
    x.flags.writeable = False
    wl = separable_workload(x.shape, x.dtype, f.shape, f.dtype, p.shape, p.dtype, [1, 1, 1, 1], "SAME")
    assert_close(tvmsep.separable_conv2d(x, f, p, [1, 1, 1, 1], "SAME"), separable_reference(x, f, p, wl), "float32")


def test_misaligned_arrays_are_used_in_place(rng):
    raw = _random(rng, (1 + 8 * 8 * 16,), "float32")
    x = raw[1:].reshape(1, 8, 8, 16)  # 4 bytes past an allocation: not vector-aligned
    out = np.full(1 + 8 * 8 * 16, np.nan, np.float32)[1:].reshape(1, 8, 8, 16)
    f = _random(rng, (3, 3, 16, 1), "float32")
    wl = depthwise_workload(x.shape, x.dtype, f.shape, f.dtype, [1, 1, 1, 1], "SAME")
    assert tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", out=out) is out
    assert_close(out, depthwise_reference(x, f, wl), "float32")


@pytest.mark.parametrize("op", ["depthwise", "separable"])
def test_a_large_result_starts_on_a_cache_line(op, rng):
    """numpy allocates on 16 bytes; a depthwise kernel's vector stores would straddle lines, and
    so would the loads of the next layer's depthwise, which reads the result as its input."""
    x = _random(rng, (1, 32, 32, 64), "float32")  # a 256 KiB result, past PLACED_RESULT_MIN_BYTES
    f = _random(rng, (3, 3, 64, 1), "float32")
    p = _random(rng, (1, 1, 64, 64), "float32")
    if op == "depthwise":
        wl = depthwise_workload(x.shape, x.dtype, f.shape, f.dtype, [1, 1, 1, 1], "SAME")
        results = [tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME") for _ in range(8)]  # held: fresh arrays
        expected = depthwise_reference(x, f, wl)
    else:
        wl = separable_workload(x.shape, x.dtype, f.shape, f.dtype, p.shape, p.dtype, [1, 1, 1, 1], "SAME")
        results = [tvmsep.separable_conv2d(x, f, p, [1, 1, 1, 1], "SAME") for _ in range(8)]
        expected = separable_reference(x, f, p, wl)
    assert all(y.ctypes.data % runtime.CACHE_LINE_BYTES == 0 for y in results)
    assert all(y.flags.c_contiguous and y.flags.writeable and y.shape == wl.output_shape for y in results)
    assert_close(results[-1], expected, "float32")


@pytest.mark.parametrize("start", [0, 16, 2000, "read-only"])
def test_a_large_result_starts_two_lines_before_its_input_in_a_page(start, rng):
    """A CPU holds a load whose page offset matches a store in flight: a depthwise kernel of 256
    channels or more waits on most loads when its result starts a few lines past its input's
    place in a page, which numpy's placement gives by chance. Inputs on a line, off one, and
    read-only (which numpy does not export by DLPack) alike."""
    values = _random(rng, (1, 16, 16, 256), "float32")  # a 256 KiB result
    raw = np.empty(values.nbytes + 4096, np.uint8)
    skip = ((0 if start == "read-only" else start) - raw.ctypes.data) % 4096  # numpy allocates on 16 bytes
    x = raw[skip:skip + values.nbytes].view(np.float32).reshape(values.shape)
    x[...] = values
    x.flags.writeable = start != "read-only"
    f = _random(rng, (3, 3, 256, 1), "float32")
    wl = depthwise_workload(x.shape, x.dtype, f.shape, f.dtype, [1, 1, 1, 1], "SAME")
    results = [tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME") for _ in range(4)]  # held: fresh memory
    for y in results[1:]:  # the first may be made in memory kept from an earlier test, placed for its input
        before = (x.ctypes.data - y.ctypes.data) % 4096
        assert y.ctypes.data % runtime.CACHE_LINE_BYTES == 0
        assert runtime.RESULT_BEFORE_INPUT_BYTES <= before < runtime.RESULT_BEFORE_INPUT_BYTES + 64, before
    assert_close(results[-1], depthwise_reference(x, f, wl), "float32")


def test_a_large_result_is_written_where_the_last_one_was_only_when_nothing_refers_to_it(rng):
    """A kernel keeps the memory of its last large result for the next one. Every way a caller can
    still reach that memory keeps it from being written: the result, a view of it, an export."""
    f = _random(rng, (3, 3, 64, 1), "float32")
    wl = depthwise_workload((1, 32, 32, 64), "float32", f.shape, f.dtype, [1, 1, 1, 1], "SAME")
    inputs = [_random(rng, (1, 32, 32, 64), "float32") for _ in range(6)]

    def call(x):
        return tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME")

    address = call(inputs[0]).ctypes.data  # let go at once
    assert call(inputs[1]).ctypes.data == address  # let go too: its memory was taken again
    held = [call(inputs[1]), call(inputs[2])[0, 5], memoryview(call(inputs[3])), np.from_dlpack(call(inputs[4]))]
    last = call(inputs[5])
    for x, y in zip(inputs[1:], [*held, last]):
        assert_close(np.asarray(y), depthwise_reference(x, f, wl)[0, 5] if np.ndim(y) == 2 else
                     depthwise_reference(x, f, wl), "float32")
    assert len({np.asarray(y).ctypes.data for y in held}) == len(held)


def test_a_large_torch_result_is_never_written_over_while_held(rng):
    """A torch caller gets the result through DLPack, which holds the memory's owner too."""
    torch = pytest.importorskip("torch")
    f = torch.from_numpy(_random(rng, (3, 3, 64, 1), "float32"))
    wl = depthwise_workload((1, 32, 32, 64), "float32", tuple(f.shape), "float32", [1, 1, 1, 1], "SAME")
    inputs = [torch.from_numpy(_random(rng, (1, 32, 32, 64), "float32")) for _ in range(3)]
    held = [tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME") for x in inputs]
    assert len({y.data_ptr() for y in held}) == len(held)
    for x, y in zip(inputs, held):
        assert_close(y.numpy(), depthwise_reference(x.numpy(), f.numpy(), wl), "float32")


def test_threads_never_share_a_large_result(rng):
    """Two threads calling one kernel at once must each get memory of their own, also when the
    kernel's kept memory is free for one of them to take."""
    f = _random(rng, (3, 3, 64, 1), "float32")
    wl = depthwise_workload((1, 32, 32, 64), "float32", f.shape, f.dtype, [1, 1, 1, 1], "SAME")
    inputs = [_random(rng, (1, 32, 32, 64), "float32") for _ in range(4)]
    expected = [depthwise_reference(x, f, wl) for x in inputs]
    errors = []

    def work(i):
        try:
            for _ in range(50):
                y = tvmsep.depthwise_conv2d(inputs[i], f, [1, 1, 1, 1], "SAME")
                time.sleep(0)  # let another thread call while this result is held
                assert_close(y, expected[i], "float32")
        except Exception as e:  # collected: assertion errors in threads do not fail the test by themselves
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


@pytest.mark.parametrize("bad_out, error, words", [
    (np.empty((1, 8, 8, 3), np.float32), ValueError, "`out` has shape"),
    (np.empty((1, 8, 8, 4), np.float64), TypeError, "`out` has dtype float64"),
    (np.empty((1, 8, 4, 8), np.float32).transpose(0, 1, 3, 2), ValueError, "C-contiguous"),
    ([[0.0]], TypeError, "`out` must be a numpy array"),
    (np.empty((2, 8, 8, 4), np.float32), ValueError, "`out` has shape"),
    (np.empty((1, 8, 8, 4), np.float16), TypeError, "`out` has dtype float16"),
    (np.empty((1, 8, 8, 4), ">f4"), TypeError, "`out` has dtype >f4"),
    (np.empty((1, 8, 8, 8), np.float32)[..., ::2], ValueError, "C-contiguous"),
    (np.lib.stride_tricks.as_strided(np.empty((1, 8, 8, 4), np.float32), writeable=False), ValueError, "read-only"),
])
def test_bad_out(bad_out, error, words, rng):
    x, f = _random(rng, (1, 8, 8, 4), "float32"), _random(rng, (3, 3, 4, 1), "float32")
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", out=bad_out)


def test_out_may_not_alias_input(rng):
    x, f = _random(rng, (1, 8, 8, 4), "float32"), _random(rng, (1, 1, 4, 1), "float32")
    with pytest.raises(ValueError, match="overlaps an input"):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", out=x)
    shared = _random(rng, (2 * 8 * 8 * 4,), "float32")
    x, overlapping = shared[:256].reshape(1, 8, 8, 4), shared[128:384].reshape(1, 8, 8, 4)
    with pytest.raises(ValueError, match="overlaps an input"):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", out=overlapping)
    # Views of views of one array, and arrays in one buffer that numpy did not allocate.
    chained = shared.reshape(2, 256)[:, :].ravel()
    with pytest.raises(ValueError, match="overlaps an input"):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", out=chained[128:384].reshape(1, 8, 8, 4))
    through_dlpack = np.from_dlpack(shared)  # another array over the same memory, its base not `shared`
    with pytest.raises(ValueError, match="overlaps an input"):
        tvmsep.depthwise_conv2d(through_dlpack[:256].reshape(1, 8, 8, 4), f, [1, 1, 1, 1], "SAME",
                                out=shared[128:384].reshape(1, 8, 8, 4))
    foreign = bytearray(shared.tobytes())
    with pytest.raises(ValueError, match="overlaps an input"):
        tvmsep.depthwise_conv2d(np.frombuffer(foreign, np.float32, 256).reshape(1, 8, 8, 4), f, [1, 1, 1, 1],
                                "SAME", out=np.frombuffer(foreign, np.float32, 256, 512).reshape(1, 8, 8, 4))
    wl = depthwise_workload(x.shape, x.dtype, f.shape, f.dtype, [1, 1, 1, 1], "SAME")
    for out in (np.full((1, 8, 8, 4), np.nan, np.float32),  # owners apart: in place
                np.full((3, 256), np.nan, np.float32)[1].reshape(1, 8, 8, 4)):  # a view of another array
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", out=out)
        assert_close(out, depthwise_reference(x, f, wl), "float32")


def test_bad_target():
    x, f = np.ones((1, 4, 4, 1), np.float32), np.ones((1, 1, 1, 1), np.float32)
    with pytest.raises(TypeError, match="`target`"):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", target=42)


def test_memo_keeps_apart_values_that_compare_equal(rng):
    """Calls are remembered by their argument values, and a remembered call skips the
    checks; values equal to a remembered one but of another type must still be checked."""
    x, f = _random(rng, (1, 8, 8, 4), "float32"), _random(rng, (3, 3, 4, 1), "float32")
    pads = [[0, 0], [1, 1], [1, 1], [0, 0]]
    expected = tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], pads)
    assert_close(tvmsep.depthwise_conv2d(x, f, (1, 1, 1, 1), np.array(pads)), expected, "float32")
    for strides in ([True, 1, 1, 1], [1.0, 1, 1, 1]):
        with pytest.raises(ValueError, match="`strides` must be a list of 4 ints"):
            tvmsep.depthwise_conv2d(x, f, strides, pads)
    with pytest.raises(ValueError, match="explicit `padding` must be 4"):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], np.array(pads).ravel())


@pytest.mark.parametrize("op", ["depthwise", "separable"])
def test_a_repeated_numpy_call_runs_from_the_memo(op, rng, monkeypatch):
    """The second call with the same argument values finds its kernel by the short path's key,
    which must be the key the first call remembered: it never reaches `Dispatcher._find`."""
    x, f, p = _random(rng, (1, 8, 8, 4), "float32"), _random(rng, (3, 3, 4, 1), "float32"), \
        _random(rng, (1, 1, 4, 6), "float32")
    call = (lambda **kw: tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", **kw)) if op == "depthwise" else \
        (lambda **kw: tvmsep.separable_conv2d(x, f, p, [1, 1, 1, 1], "SAME", **kw))
    expected = call()
    found = []
    original = dispatch.Dispatcher._find
    monkeypatch.setattr(dispatch.Dispatcher, "_find", lambda self, *a: found.append(a) or original(self, *a))
    out = np.full(expected.shape, np.nan, np.float32)
    assert call(out=out) is out
    assert_close(call(), expected, "float32")
    assert_close(out, expected, "float32")
    assert found == []


def test_the_ops_pickle_by_name(rng):
    """As a module's functions do (multiprocessing sends them by name); a bundle's ops do not."""
    x, f = _random(rng, (1, 8, 8, 4), "float32"), _random(rng, (3, 3, 4, 1), "float32")
    for op in (tvmsep.depthwise_conv2d, tvmsep.separable_conv2d):
        assert pickle.loads(pickle.dumps(op)) == op
    call = pickle.loads(pickle.dumps(functools.partial(tvmsep.depthwise_conv2d, strides=[1, 1, 1, 1], padding="SAME")))
    assert_close(call(x, f), tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME"), "float32")


def test_torch_tensors_round_trip_zero_copy(rng):
    torch = pytest.importorskip("torch")
    x = torch.from_numpy(_random(rng, (2, 10, 10, 8), "float32"))
    f = torch.from_numpy(_random(rng, (3, 3, 8, 2), "float32")).requires_grad_()
    y = tvmsep.depthwise_conv2d(x, f, [1, 2, 2, 1], "SAME")
    assert isinstance(y, torch.Tensor) and y.dtype == torch.float32
    wl = depthwise_workload(tuple(x.shape), "float32", tuple(f.shape), "float32", [1, 2, 2, 1], "SAME")
    assert_close(y.numpy(), depthwise_reference(x.numpy(), f.detach().numpy(), wl), "float32")
    out = torch.full(tuple(y.shape), float("nan"))
    assert tvmsep.depthwise_conv2d(x, f, [1, 2, 2, 1], "SAME", out=out) is out
    assert_close(out.numpy(), depthwise_reference(x.numpy(), f.detach().numpy(), wl), "float32")
    # zero-copy: the result's memory is what numpy sees through DLPack
    assert np.from_dlpack(y).ctypes.data == y.data_ptr()


def test_threads_share_kernels_safely(rng):
    x = _random(rng, (1, 20, 20, 16), "float32")
    filters = [_random(rng, (3, 3, 16, 1), "float32") for _ in range(8)]
    wl = depthwise_workload(x.shape, x.dtype, filters[0].shape, "float32", [1, 1, 1, 1], "SAME")
    expected = [depthwise_reference(x, f, wl) for f in filters]
    errors = []

    def work(i):
        try:
            for _ in range(20):
                assert_close(tvmsep.depthwise_conv2d(x, filters[i], [1, 1, 1, 1], "SAME"), expected[i], "float32")
        except Exception as e:  # collected: assertion errors in threads do not fail the test by themselves
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[0]


def test_threads_asking_for_one_new_kernel_compile_it_once(tmp_path, monkeypatch):
    """With no disk cache to wait on, threads that ask for the same kernel at once still get
    it compiled once: the others wait for it in the ops' kernel memo."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("TVMSEP_CACHE_DIR", str(blocker / "cache"))
    wl = depthwise_workload((1, 9, 11, 13), "float32", (3, 3, 13, 1), "float32", [1, 1, 1, 1], "VALID")
    builds, kernels = ops.module_cache.builds, []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CacheWarning)  # the disk cache is off: that is the point
        threads = [threading.Thread(target=lambda: kernels.append(ops.get_kernel(wl))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert len(kernels) == 4 and all(k is kernels[0] for k in kernels)
    assert ops.module_cache.builds - builds == 1


def test_matches_tensorflow_to_the_index(rng):
    """TF itself, where installed: the even-kernel, stride-2 SAME case that TVM's helper gets wrong."""
    tf = pytest.importorskip("tensorflow")
    x = _random(rng, (1, 10, 11, 3), "float32")
    f, p = _random(rng, (4, 2, 3, 2), "float32"), _random(rng, (1, 1, 6, 5), "float32")
    for layout in ("NHWC", "NCHW"):
        xl = x if layout == "NHWC" else x.transpose(0, 3, 1, 2).copy()
        strides = [1, 2, 2, 1] if layout == "NHWC" else [1, 1, 2, 2]
        ours = tvmsep.depthwise_conv2d(xl, f, strides, "SAME", data_format=layout)
        theirs = tf.nn.depthwise_conv2d(x, f, [1, 2, 2, 1], "SAME").numpy()
        if layout == "NCHW":
            theirs = theirs.transpose(0, 3, 1, 2)
        np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)
    ours = tvmsep.separable_conv2d(x, f, p, [1, 1, 1, 1], "SAME", dilations=[2, 2])
    theirs = tf.nn.separable_conv2d(x, f, p, [1, 1, 1, 1], "SAME", dilations=[2, 2]).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-5)


def test_a_float16_depthwise_sums_as_tensorflows_cpu_kernel_on_this_cpu_does(rng):
    """TF's CPU kernel sums a float16 depthwise in one of two ways, by CPU. Its Eigen kernel sums
    in float16, each tap's sum taken in float32 and rounded, in the filter's row-major order: the
    reference with `rounded_taps` gives its results bit for bit. Where its oneDNN kernel takes
    float16 (x86-64 with AVX512-FP16), it sums in float32 and rounds once, as TF's float32
    kernel does. tvmsep's kernels sum per tap where the CPU has float16 arithmetic (NEON's FP16;
    the emulated aarch64 tests hold them to the rounded reference), in float32 elsewhere: within
    float16's tolerance of TF either way, apart from TF's per-tap sums in the last place in many
    results, and equal to TF's float32 sums."""
    tf = pytest.importorskip("tensorflow")
    native_float16 = BACKENDS["llvm"].arithmetic(host_target()).native_float16
    cases = [((1, 12, 13, 16), (3, 3, 16, 1), [1, 1, 1, 1], "SAME"),
             ((2, 19, 17, 24), (5, 5, 24, 2), [1, 2, 2, 1], "SAME"),
             ((1, 9, 9, 8), (3, 3, 8, 1), [1, 1, 1, 1], [[0, 0], [2, 1], [0, 3], [0, 0]])]
    for shape, filter_shape, strides, padding in cases:
        x, f = _random(rng, shape, "float16"), _random(rng, filter_shape, "float16")
        wl = depthwise_workload(shape, "float16", filter_shape, "float16", strides, padding)
        theirs = tf.nn.depthwise_conv2d(x, f, strides, padding).numpy()
        per_tap = reference_for(wl, [x, f], rounded_taps=True).astype(np.float16)
        in_float32 = tf.nn.depthwise_conv2d(x.astype(np.float32), f.astype(np.float32), strides,
                                            padding).numpy().astype(np.float16)
        sums_per_tap = np.array_equal(per_tap, theirs)
        assert sums_per_tap or np.array_equal(in_float32, theirs), \
            "TF's float16 depthwise neither rounds every tap nor sums in float32"
        assert not np.array_equal(per_tap, in_float32)  # each case tells the two apart
        ours = tvmsep.depthwise_conv2d(x, f, strides, padding)
        assert_close(ours, theirs.astype(np.float64), "float16")
        if native_float16:
            continue
        if sums_per_tap:
            assert np.mean(ours != theirs) > 0.1, "float32 sums round once, where TF rounds every tap"
        else:
            assert np.mean(ours == theirs) > 0.99, "float32 sums, as TF's, in the same order"


def test_a_remembered_call_still_checks_what_changes_between_calls(rng):
    """Once a call's argument values are remembered, the next one with the same values runs
    straight from the memo; its `out=`, a bias of another array type and new array values are
    still taken as a first call would take them."""
    x, f = _random(rng, (1, 8, 8, 4), "float32"), _random(rng, (3, 3, 4, 1), "float32")
    bias = _random(rng, (4,), "float32")
    wl = depthwise_workload(x.shape, x.dtype, f.shape, f.dtype, [1, 1, 1, 1], "SAME", bias=((4,), "float32"),
                            activation="relu")
    expected = reference_for(wl, [x, f, bias])
    for _ in range(2):
        assert_close(tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", bias=bias, activation="relu"), expected,
                     "float32")
    torch = pytest.importorskip("torch")  # another array type, the same values
    assert_close(tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", bias=torch.from_numpy(bias), activation="relu"),
                 expected, "float32")
    read_only = np.empty((1, 8, 8, 4), np.float32)
    read_only.flags.writeable = False
    for bad_out, words in ((read_only, "read-only"), (np.empty((1, 8, 8, 5), np.float32), "`out` has shape"),
                           (x, "overlaps an input")):
        with pytest.raises((ValueError, TypeError), match=words):
            tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", bias=bias, activation="relu", out=bad_out)
    x2 = _random(rng, (1, 8, 8, 4), "float32")
    out = np.full((1, 8, 8, 4), np.nan, np.float32)
    tvmsep.depthwise_conv2d(x2, f, [1, 1, 1, 1], "SAME", bias=bias, activation="relu", out=out)
    assert_close(out, reference_for(wl, [x2, f, bias]), "float32")


@pytest.mark.parametrize("activation", ["relu", "relu6"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("op", ["depthwise", "separable"])
def test_the_fused_activation_keeps_nan_as_tensorflow_does(op, layout, activation, rng):
    """relu(NaN) and relu6(NaN) are NaN in TF (a Keras layer with that activation keeps a NaN);
    Inf goes to 0 or 6. Checked against TensorFlow itself, the epilogue as Keras applies it."""
    tf = pytest.importorskip("tensorflow")
    x = _random(rng, (1, 9, 9, 16), "float32") * 4
    x[0, 4, 4, 3] = np.nan
    x[0, 1, 7, 5] = np.inf
    x[0, 7, 1, 9] = -np.inf
    f = _random(rng, (3, 3, 16, 1), "float32")
    p = _random(rng, (1, 1, 16, 8), "float32")
    bias = _random(rng, (16 if op == "depthwise" else 8,), "float32")
    conv = tf.nn.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME") if op == "depthwise" else \
        tf.nn.separable_conv2d(x, f, p, [1, 1, 1, 1], "SAME")
    expected = getattr(tf.nn, activation)(tf.nn.bias_add(conv, bias)).numpy()
    if layout == "NCHW":
        x, expected = np.ascontiguousarray(x.transpose(0, 3, 1, 2)), expected.transpose(0, 3, 1, 2)
    args = (x, f) if op == "depthwise" else (x, f, p)
    op_fn = tvmsep.depthwise_conv2d if op == "depthwise" else tvmsep.separable_conv2d
    y = op_fn(*args, [1, 1, 1, 1], "SAME", data_format=layout, bias=bias, activation=activation)
    assert np.isnan(expected).any() and (np.isinf(x).any())
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    finite = ~np.isnan(expected)
    np.testing.assert_allclose(y[finite], expected[finite], rtol=1e-4, atol=1e-4 * np.abs(expected[finite]).max())


@pytest.mark.parametrize("padding", ["SAME", [[0, 0], [2, 1], [0, 3], [0, 0]]], ids=["same", "explicit"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("op", ["depthwise", "separable"])
def test_filter_taps_over_the_padding_add_nothing_as_in_tensorflow(op, layout, padding, rng):
    """TF sums only the taps that lie on the input: an Inf or NaN tap over the padding leaves
    the border outputs finite (a product with the padding's zero would be NaN). A non-finite
    tap at each corner of the filter in turn, so each padded side meets one; checked against
    TensorFlow itself, and the float64 reference with it."""
    tf = pytest.importorskip("tensorflow")
    x = _random(rng, (1, 7, 6, 4), "float32")
    p = _random(rng, (1, 1, 8, 3), "float32")
    shape = (3, 3, 4, 2)
    wl = (depthwise_workload(x.shape, "float32", shape, "float32", [1, 1, 1, 1], padding) if op == "depthwise" else
          separable_workload(x.shape, "float32", shape, "float32", p.shape, "float32", [1, 1, 1, 1], padding))
    op_fn = tvmsep.depthwise_conv2d if op == "depthwise" else tvmsep.separable_conv2d
    ours = np.ascontiguousarray(x.transpose(0, 3, 1, 2)) if layout == "NCHW" else x
    our_padding = [padding[i] for i in (0, 3, 1, 2)] if layout == "NCHW" and not isinstance(padding, str) else padding
    for corner, value in zip([(0, 0), (0, 2), (2, 0), (2, 2)], [np.inf, -np.inf, np.nan, np.inf]):
        f = _random(rng, shape, "float32")
        f[corner + (1,)] = value
        args = (x, f) if op == "depthwise" else (x, f, p)
        expected = (tf.nn.depthwise_conv2d(x, f, [1, 1, 1, 1], padding) if op == "depthwise" else
                    tf.nn.separable_conv2d(x, f, p, [1, 1, 1, 1], padding)).numpy()
        assert np.isfinite(expected).any() and not np.isfinite(expected).all()
        references = {"tensorflow": expected, "float64 reference": reference_for(wl, list(args))}
        if layout == "NCHW":
            references = {k: v.transpose(0, 3, 1, 2) for k, v in references.items()}
        y = op_fn(ours, *args[1:], [1, 1, 1, 1], our_padding, data_format=layout)
        for name, ref in references.items():
            for special in (np.isnan, np.isposinf, np.isneginf):
                np.testing.assert_array_equal(special(y), special(ref), err_msg=f"{special.__name__}, {name}, {corner}")
            finite = np.isfinite(ref)
            np.testing.assert_allclose(y[finite], ref[finite], rtol=1e-4, atol=1e-4 * np.abs(ref[finite]).max(),
                                       err_msg=f"{name}, {corner}")


def _run_capped(script: str, tmp_path, timeout: float) -> str:
    """`script`'s output, run in a fresh process whose address space is capped at 12 GiB, so that
    a regression fails there instead of taking the machine's memory."""
    import subprocess
    import sys
    capped = "import resource; resource.setrlimit(resource.RLIMIT_AS, (12 << 30, 12 << 30))\n" + script
    done = subprocess.run([sys.executable, "-c", capped], env=dict(os.environ, TVMSEP_CACHE_DIR=str(tmp_path)),
                          capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_a_result_larger_than_memory_is_refused_before_compiling(tmp_path):
    """An output and intermediate that cannot fit in this machine's memory are refused up front
    with the sizes, before anything is compiled or allocated (the input here takes no memory)."""
    import psutil
    if psutil.virtual_memory().total > 30 * 2**30:
        pytest.skip("the largest result tvmsep indexes fits in this machine's memory")
    out = _run_capped(
        "import numpy as np, tvmsep\n"
        "from tvmsep import ops\n"
        "x = np.lib.stride_tricks.as_strided(np.zeros(1), (1, 8192, 8192, 30), (0, 0, 0, 0))\n"
        "try:\n"
        "    tvmsep.separable_conv2d(x, np.ones((3, 3, 30, 1)), np.ones((1, 1, 30, 30)), [1, 1, 1, 1], 'SAME')\n"
        "except ValueError as e:\n"
        "    print(ops.module_cache.builds, e)\n", tmp_path, timeout=120)
    assert re.match(r"0 separable_conv2d: the result of .* needs 30\.0 GiB, more than", out), out


def test_large_filters_compile_in_bounded_time(tmp_path):
    """A 31x31 filter and TF's valid 1000x1000 one compile without unrolling every tap (which
    took minutes, or all the memory) and match the reference."""
    out = _run_capped(
        "import numpy as np, tvmsep\n"
        "from tvmsep.reference import depthwise_reference, scaled_error\n"
        "from tvmsep.spec import depthwise_workload\n"
        "rng = np.random.default_rng()\n"
        "for shape, k in (((1, 40, 40, 16), 31), ((1, 8, 8, 4), 1000)):\n"
        "    x = rng.standard_normal(shape).astype(np.float32)\n"
        "    f = rng.standard_normal((k, k, shape[3], 1)).astype(np.float32)\n"
        "    y = tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], 'SAME')\n"
        "    wl = depthwise_workload(x.shape, 'float32', f.shape, 'float32', [1, 1, 1, 1], 'SAME')\n"
        "    print(scaled_error(y, depthwise_reference(x, f, wl)))\n", tmp_path, timeout=60)
    assert all(float(e) < 1e-4 for e in out.split()), out
