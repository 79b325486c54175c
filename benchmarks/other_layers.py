"""Layers of real networks that are in neither of the project's lists (`tvmsep.networks`).

The schedules are rules over shapes, not a table of the listed layers, so their speed should
carry over to layers nobody listed. `peers.py --layers other` measures that on these: depthwise
and projection layers of MobileNetV1 at smaller inputs, MobileNetV3, EfficientNet-B0, Keras'
MobileNetV2 (VALID padding after explicit zero-padding), Xception, ConvNeXt-T and DeepLabV3
(dilated), and narrow channel counts that no SIMD vector divides. None of them was tuned. The
rule that a GEMM copying weights many times its intermediate copies each panel once
(schedules/llvm.py) was found on the Xception and MobileNetV1 ones (benchmarks/panel_outer.py);
no other rule was written with these in view.
"""

from __future__ import annotations

from tvmsep.networks import Layer

# Layer(name, batch, input size, channels, stride, pointwise output channels, ...): the depthwise
# stage of the block, and its projection as the separable's pointwise.
OTHER_LAYERS = [
    # MobileNetV1 at the smaller inputs it ships for, 192x192 and 128x128
    Layer("mnv1_192_12x512", 1, 12, 512, 1, 512),
    Layer("mnv1_192_6x1024", 1, 6, 1024, 1, 1024),
    Layer("mnv1_128_4x1024", 1, 4, 1024, 1, 1024),
    # MobileNetV3-Large, 224x224 input
    Layer("mnv3l_112x16", 1, 112, 16, 1, 16),
    Layer("mnv3l_112x64_s2", 1, 112, 64, 2, 24),
    Layer("mnv3l_56x72", 1, 56, 72, 1, 24),
    Layer("mnv3l_56x72_k5_s2", 1, 56, 72, 2, 40, kernel=5),
    Layer("mnv3l_28x120_k5", 1, 28, 120, 1, 40, kernel=5),
    Layer("mnv3l_28x240_s2", 1, 28, 240, 2, 80),
    Layer("mnv3l_14x200", 1, 14, 200, 1, 80),
    Layer("mnv3l_14x184", 1, 14, 184, 1, 80),
    Layer("mnv3l_14x480", 1, 14, 480, 1, 112),
    Layer("mnv3l_14x672_k5_s2", 1, 14, 672, 2, 160, kernel=5),
    Layer("mnv3l_7x960_k5", 1, 7, 960, 1, 160, kernel=5),
    # MobileNetV3-Small
    Layer("mnv3s_112x16_s2", 1, 112, 16, 2, 16),
    Layer("mnv3s_28x96_k5_s2", 1, 28, 96, 2, 40, kernel=5),
    Layer("mnv3s_14x240_k5", 1, 14, 240, 1, 40, kernel=5),
    Layer("mnv3s_7x576_k5", 1, 7, 576, 1, 96, kernel=5),
    # EfficientNet-B0
    Layer("effb0_28x240_k5", 1, 28, 240, 1, 40, kernel=5),
    Layer("effb0_7x1152_k5", 1, 7, 1152, 1, 192, kernel=5),
    # Keras MobileNetV2: ZeroPadding2D, then a VALID stride-2 depthwise
    Layer("keras_v2_57x144_valid", 1, 57, 144, 2, 32, padding="VALID"),
    Layer("keras_v2_29x192_valid", 1, 29, 192, 2, 64, padding="VALID"),
    Layer("keras_v2_15x576_valid", 1, 15, 576, 2, 160, padding="VALID"),
    # Xception, entry and exit flows
    Layer("xception_147x64", 1, 147, 64, 1, 128),
    Layer("xception_74x128", 1, 74, 128, 1, 256),
    Layer("xception_37x256", 1, 37, 256, 1, 728),
    Layer("xception_10x1024", 1, 10, 1024, 1, 1536),
    Layer("xception_10x1536", 1, 10, 1536, 1, 2048),
    # ConvNeXt-T: a 7x7 depthwise, then the block's first pointwise (4x wider)
    Layer("convnext_28x192_k7", 1, 28, 192, 1, 768, kernel=7),
    Layer("convnext_14x384_k7", 1, 14, 384, 1, 1536, kernel=7),
    # DeepLabV3 on MobileNetV2, 513x513 input, output stride 8 (65x65) and 16 (33x33)
    Layer("deeplab_65x384_r2", 1, 65, 384, 1, 64, rate=2),
    Layer("deeplab_65x960_r4", 1, 65, 960, 1, 160, rate=4),
    Layer("deeplab_33x960_r2", 1, 33, 960, 1, 320, rate=2),
    # channel counts no SIMD vector divides
    Layer("c11_112", 1, 112, 11, 1, 22),
    Layer("c22_56", 1, 56, 22, 1, 44),
    Layer("c44_28_s2", 1, 28, 44, 2, 88),
    Layer("c88_14", 1, 14, 88, 1, 88),
]
