"""Real-network layers, as data: where each comes from is noted beside it.

A `Layer` holds public-API arguments (TF filter layouts; NHWC unless its
`layout` says NCHW); `workload()` resolves it through the same validation as
a user call.
"""

from __future__ import annotations

import dataclasses

from .spec import LAYOUTS, LayerArguments, Workload

__all__ = ["Layer", "NETWORKS", "network"]


@dataclasses.dataclass(frozen=True)
class Layer:
    name: str
    batch: int
    size: int  # square input height = width
    channels: int
    stride: int = 1
    out_channels: int | None = None  # None: depthwise only; else the pointwise width
    kernel: int = 3
    multiplier: int = 1
    rate: int = 1
    padding: str = "SAME"
    dtype: str = "float32"
    layout: str = "NHWC"

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        return LAYOUTS[self.layout].arrange(self.batch, self.size, self.size, self.channels)

    @property
    def filter_shape(self) -> tuple[int, int, int, int]:
        return (self.kernel, self.kernel, self.channels, self.multiplier)

    @property
    def pointwise_shape(self) -> tuple[int, int, int, int]:
        return (1, 1, self.channels * self.multiplier, self.out_channels or 0)

    @property
    def strides(self) -> list[int]:
        return LAYOUTS[self.layout].strides(self.stride, self.stride)

    def arguments(self, op: str | None = None, bias: bool = False, activation: str | None = None) -> LayerArguments:
        """The layer as the public API takes it, as `op` ("depthwise" or "separable"; default:
        separable when out_channels is set), with the epilogue given."""
        op = op or ("separable" if self.out_channels else "depthwise")
        return LayerArguments(self.input_shape, self.filter_shape, self.strides, self.padding,
                              pointwise_shape=self.pointwise_shape if op == "separable" else None,
                              rate=[self.rate, self.rate], data_format=self.layout, dtype=self.dtype, bias=bias,
                              activation=activation)

    def workload(self, op: str | None = None) -> Workload:
        """The layer's workload as `op` (see `arguments`), without an epilogue."""
        return self.arguments(op).workload()


def _mobilenet_v1(batch: int = 1) -> list[Layer]:
    # Howard et al. 2017, Table 1 (224x224, width 1.0): the 13 depthwise-separable blocks.
    blocks = [(112, 32, 1, 64), (112, 64, 2, 128), (56, 128, 1, 128), (56, 128, 2, 256),
              (28, 256, 1, 256), (28, 256, 2, 512)] + [(14, 512, 1, 512)] * 5 + \
             [(14, 512, 2, 1024), (7, 1024, 1, 1024)]
    return [Layer(f"v1_{i + 1:02d}", batch, size, c, s, out) for i, (size, c, s, out) in enumerate(blocks)]


def _mobilenet_v2(batch: int = 1) -> list[Layer]:
    # Sandler et al. 2018, Table 2 (224x224): each bottleneck's depthwise layer and its
    # linear 1x1 projection; repeated identical blocks appear once.
    blocks = [(112, 32, 1, 16), (112, 96, 2, 24), (56, 144, 1, 24), (56, 144, 2, 32), (28, 192, 1, 32),
              (28, 192, 2, 64), (14, 384, 1, 64), (14, 384, 1, 96), (14, 576, 1, 96), (14, 576, 2, 160),
              (7, 960, 1, 160), (7, 960, 1, 320)]
    return [Layer(f"v2_{i + 1:02d}", batch, size, c, s, out) for i, (size, c, s, out) in enumerate(blocks)]


def _extras() -> list[Layer]:
    # The public list's stress cases: batch 8 (a MobileNetV1 block), atrous rate 2
    # (DeepLabV3's MobileNetV2 backbone at output stride 16), and channel multiplier 2.
    return [Layer("b8_56x128", 8, 56, 128, 1, 128),
            Layer("rate2_28x384", 1, 28, 384, 1, 64, rate=2),
            Layer("mult2_56x64", 1, 56, 64, 1, 128, multiplier=2)]


def _unseen() -> list[Layer]:
    # Real layers of other networks, absent from the public list and never tuned: what a
    # user brings. EfficientNet-B0 (Tan & Le 2019, Table 1): MBConv6 5x5 blocks, the
    # stride-2 one of stage 3 and a stage-5 one; Xception (Chollet 2017, Fig. 5): a
    # middle-flow separable convolution at 19x19x728 (299x299 input). MobileNetV3-Small
    # (Howard et al. 2019, Table 2): the bottlenecks with expansion 88 (3x3, 28x28) and 120
    # (5x5, 14x14), channel counts that are not whole AVX-512 vectors. ConvNeXt-T (Liu et al.
    # 2022): the 7x7 depthwise and 4x pointwise expansion of its first and last stages.
    # Keras' MobileNetV2: a stride-2 block as Keras builds it, explicit zero padding to
    # 113x113 and then VALID.
    return [Layer("effb0_56x144_k5", 1, 56, 144, 2, 40, kernel=5),
            Layer("effb0_14x672_k5", 1, 14, 672, 1, 112, kernel=5),
            Layer("xception_19x728", 1, 19, 728, 1, 728),
            Layer("mnv3s_28x88", 1, 28, 88, 1, 24),
            Layer("mnv3s_14x120_k5", 1, 14, 120, 1, 48, kernel=5),
            Layer("convnext_56x96_k7", 1, 56, 96, 1, 384, kernel=7),
            Layer("convnext_7x768_k7", 1, 7, 768, 1, 3072, kernel=7),
            Layer("keras_v2_113x96_valid", 1, 113, 96, 2, 24, padding="VALID")]


NETWORKS = {
    "mobilenet_v1": _mobilenet_v1,
    "mobilenet_v2": _mobilenet_v2,
    "public": lambda: _mobilenet_v1() + _mobilenet_v2() + _extras(),
    "unseen": _unseen,
}


def network(name: str) -> list[Layer]:
    """The layers of a named network preset."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; known: {', '.join(NETWORKS)}")
    return NETWORKS[name]()
