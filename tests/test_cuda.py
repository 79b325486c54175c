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
import tvmsep.ops
from tvmsep import build
from tvmsep.matrix import CASES, case_workload, matrix
from tvmsep.networks import network
from tvmsep.schedules import cuda
from tvmsep.spec import depthwise_workload

pytestmark = pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")

SM90 = Target({"kind": "cuda", "arch": "sm_90"})
# The same, with the per-block limits VerifyGPUCode checks against.
SM90_LIMITS = Target({"kind": "cuda", "arch": "sm_90", "max_threads_per_block": cuda.MAX_THREADS,
                      "max_shared_memory_per_block": cuda.MAX_SHARED_BYTES})

def _passes_gpu_verification(wl, limits: Target = SM90_LIMITS) -> bool:
    sch = build.hand_schedule(wl, SM90)
    verify = ms.postproc.VerifyGPUCode()
    verify._initialize_with_tune_context(ms.TuneContext(mod=sch.mod, target=limits))
    return verify.apply(sch)


def _source(wl) -> str:
    return build.compile_module(wl, SM90).mod.imports[0].inspect_source()


@pytest.mark.parametrize("name, wl", matrix(), ids=[name for name, _ in matrix()])
def test_compiles_verifies_and_exports(name, wl, tmp_path):
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
    assert not _passes_gpu_verification(case_workload(CASES[0], "NHWC", "float32"), small)


@pytest.mark.parametrize("dtype, vector", [("float32", "float4"), ("float16", "half4")])
def test_mobilenet_depthwise_stages_input_tiles_in_shared_memory_with_vector_loads(dtype, vector):
    for layer in network("mobilenet_v1")[:4]:
        wl = layer.workload("depthwise")
        wl = depthwise_workload(wl.input_shape, dtype, wl.filter_shape, dtype, layer.strides, layer.padding)
        src = _source(wl)
        assert "__shared__" in src, wl.describe()
        assert f"*({vector}*)(input_ptr" in src, f"{wl.describe()}: no {vector} loads of the input"


def test_separable_gemm_stages_both_operands_in_shared_memory():
    src = _source(case_workload(CASES[6], "NHWC", "float32"))
    assert src.count("__global__ void") >= 2 * 2  # depthwise and pointwise kernels (declaration + definition)
    assert "depthwise_shared" in src and "pointwise_filter_shared" in src


def test_a_named_cuda_target_without_a_device_says_so_before_compiling():
    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    x = np.random.rand(1, 8, 8, 4).astype(np.float32)
    f = np.random.rand(3, 3, 4, 1).astype(np.float32)
    builds = tvmsep.ops.module_cache.builds
    with pytest.raises(RuntimeError, match="no CUDA device"):
        tvmsep.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME", target={"kind": "cuda", "arch": "sm_90"})
    assert tvmsep.ops.module_cache.builds == builds


def test_cuda_without_a_device_asks_for_the_architecture():
    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="arch"):
        tvmsep.depthwise_conv2d(np.ones((1, 4, 4, 2), np.float32), np.ones((3, 3, 2, 1), np.float32),
                                [1, 1, 1, 1], "SAME", target="cuda")
