"""CUDA kernels without a GPU: every configuration compiles and exports for
sm_90, passes TVM's GPU verification (threads and shared memory per block),
and its generated source has the intended structure. Running them needs a
GPU: benchmarks/gpu_check.py."""

import shutil

import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.target import Target

import tvmsep
from tvmsep import build
from tvmsep.networks import network
from tvmsep.schedules import cuda
from tvmsep.spec import depthwise_workload, separable_workload

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")

SM90 = Target({"kind": "cuda", "arch": "sm_90"})
# The same, with the per-block limits VerifyGPUCode checks against.
SM90_LIMITS = Target({"kind": "cuda", "arch": "sm_90", "max_threads_per_block": cuda.MAX_THREADS,
                      "max_shared_memory_per_block": cuda.MAX_SHARED_BYTES})

# (input HxW, channels, multiplier, stride, padding (NHWC pairs), rate, pointwise outputs or None)
CASES = [
    (56, 128, 1, 1, "SAME", 1, None),
    (112, 32, 1, 2, "SAME", 1, None),
    (13, 5, 3, 1, "VALID", 1, None),
    (9, 7, 2, 2, [[0, 0], [1, 2], [0, 3], [0, 0]], 1, None),
    (17, 6, 1, 1, "SAME", 2, None),
    (28, 64, 1, 1, "SAME", 1, 96),
    (7, 10, 2, 2, "VALID", 1, 5),
]


def _workload(case, layout, dtype):
    size, channels, mult, stride, padding, rate, outputs = case
    nhwc = layout == "NHWC"
    shape = (1, size, size, channels) if nhwc else (1, channels, size, size)
    strides = [1, stride, stride, 1] if nhwc else [1, 1, stride, stride]
    if isinstance(padding, list) and not nhwc:
        padding = [padding[0], padding[3], padding[1], padding[2]]
    common = dict(rate=[rate, rate], data_format=layout)
    if outputs is None:
        return depthwise_workload(shape, dtype, (3, 3, channels, mult), dtype, strides, padding, **common)
    return separable_workload(shape, dtype, (3, 3, channels, mult), dtype, (1, 1, channels * mult, outputs), dtype,
                              strides, padding, **common)


def _passes_gpu_verification(wl, limits: Target = SM90_LIMITS) -> bool:
    sch = build.hand_schedule(wl, SM90)
    verify = ms.postproc.VerifyGPUCode()
    verify._initialize_with_tune_context(ms.TuneContext(mod=sch.mod, target=limits))
    return verify.apply(sch)


def _source(wl) -> str:
    return build.compile_module(wl, SM90).mod.imports[0].inspect_source()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:3])) + f"-s{c[3]}-r{c[5]}-o{c[6]}")
def test_compiles_verifies_and_exports(case, layout, dtype, tmp_path):
    wl = _workload(case, layout, dtype)
    assert _passes_gpu_verification(wl)
    module = build.compile_module(wl, SM90)
    path = tmp_path / "kernel.so"
    module.export_library(str(path))
    assert path.stat().st_size > 0
    assert "__global__" in module.mod.imports[0].inspect_source()


def test_verification_can_fail():
    """The check is real: the same kernels break a 128-thread limit."""
    small = Target({"kind": "cuda", "arch": "sm_90", "max_threads_per_block": 128,
                    "max_shared_memory_per_block": cuda.MAX_SHARED_BYTES})
    assert not _passes_gpu_verification(_workload(CASES[0], "NHWC", "float32"), small)


@pytest.mark.parametrize("dtype, vector", [("float32", "float4"), ("float16", "half4")])
def test_mobilenet_depthwise_stages_input_tiles_in_shared_memory_with_vector_loads(dtype, vector):
    for layer in network("mobilenet_v1")[:4]:
        wl = layer.workload("depthwise")
        wl = depthwise_workload(wl.input_shape, dtype, wl.filter_shape, dtype, layer.strides, layer.padding)
        src = _source(wl)
        assert "__shared__" in src, wl.describe()
        assert f"*({vector}*)(input_ptr" in src, f"{wl.describe()}: no {vector} loads of the input"


def test_separable_gemm_stages_both_operands_in_shared_memory():
    src = _source(_workload(CASES[5], "NHWC", "float32"))
    assert src.count("__global__ void") >= 2 * 2  # depthwise and pointwise kernels (declaration + definition)
    assert "depthwise_shared" in src and "pointwise_filter_shared" in src


def test_the_ops_refuse_cuda_until_they_can_run_it():
    x = np.random.rand(1, 8, 8, 4).astype(np.float32)
    f = np.random.rand(3, 3, 4, 1).astype(np.float32)
    with pytest.raises(ValueError, match="`target`"):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", target={"kind": "cuda", "arch": "sm_90"})


def test_cuda_without_a_device_asks_for_the_architecture():
    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="arch"):
        tvmsep.depthwise_conv2d(np.ones((1, 4, 4, 2), np.float32), np.ones((3, 3, 2, 1), np.float32),
                                [1, 1, 1, 1], "SAME", target="cuda")
