"""What the property tests draw: configurations of the public ops, and array seeds."""

import os

from hypothesis import strategies as st

__all__ = ["EXAMPLES", "SEEDS", "configs"]

EXAMPLES = int(os.environ.get("TVMSEP_TEST_EXAMPLES", "40"))


@st.composite
def configs(draw):
    layout = draw(st.sampled_from(["NHWC", "NCHW"]))
    dtype = draw(st.sampled_from(["float32", "float64", "float16"]))
    kh, kw = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    rate = draw(st.integers(1, 3))
    strides = (1, 1) if rate > 1 else (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding_kind = draw(st.sampled_from(["SAME", "VALID", "explicit"]))
    span_h, span_w = (kh - 1) * rate + 1, (kw - 1) * rate + 1
    pads = [[draw(st.integers(0, 3)), draw(st.integers(0, 3))] for _ in range(2)]
    need_h = span_h if padding_kind == "VALID" else 1
    need_w = span_w if padding_kind == "VALID" else 1
    h = draw(st.integers(max(need_h, strides[0]), max(need_h, strides[0]) + 9))
    w = draw(st.integers(max(need_w, strides[1]), max(need_w, strides[1]) + 9))
    if padding_kind == "explicit":
        pads[0][1] += max(0, span_h - h - sum(pads[0]))
        pads[1][1] += max(0, span_w - w - sum(pads[1]))
        zero = [0, 0]
        padding = [zero, pads[0], pads[1], zero] if layout == "NHWC" else [zero, zero, pads[0], pads[1]]
    else:
        padding = padding_kind
    c, m = draw(st.integers(1, 20)), draw(st.integers(1, 4))
    batch = draw(st.integers(1, 2))
    x_shape = (batch, h, w, c) if layout == "NHWC" else (batch, c, h, w)
    stride_list = [1, *strides, 1] if layout == "NHWC" else [1, 1, *strides]
    rate_arg = draw(st.sampled_from([None, [rate, rate]])) if rate == 1 else [rate, rate]
    out_channels = draw(st.integers(1, 24))
    # The optional epilogue, in about half of the examples.
    activation = draw(st.sampled_from([None, None, "relu", "relu6"]))
    bias = draw(st.booleans())
    return dict(x_shape=x_shape, f_shape=(kh, kw, c, m), p_shape=(1, 1, c * m, out_channels),
                strides=stride_list, padding=padding, rate=rate_arg, data_format=layout, dtype=dtype,
                activation=activation, bias=bias)


# The arrays' random values come from a seed Hypothesis draws, so that a failure it reports
# can be replayed exactly.
SEEDS = st.integers(0, 2**32 - 1)
