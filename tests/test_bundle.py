"""Bundles: compiled ahead of time, checked before loading, run with the TVM runtime alone."""

import dataclasses
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tvm

import tvmsep
from tvmsep.bundle import LIBRARY, MANIFEST, BundleError
from tvmsep.export import compile_bundle
from tvmsep.networks import network
from tvmsep.reference import depthwise_reference, reference_for, separable_reference

from conftest import assert_close

LAYERS = ("v1_02", "v2_05")


@pytest.fixture(scope="module")
def bundle_path(tmp_path_factory):
    layers = [layer for layer in network("public") if layer.name in LAYERS]
    named = [(layer.name, layer.workload()) for layer in layers]
    named += [(f"{layer.name}_dw", layer.workload("depthwise")) for layer in layers]
    named.append(("v1_02_relu6", dataclasses.replace(layers[0].workload(), bias=True, activation="relu6")))
    path = tmp_path_factory.mktemp("bundles") / "small"
    compile_bundle(named, None, path, progress=lambda line: None)
    return path


def _copy(bundle_path, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(bundle_path, copy)
    return copy


def _edit_manifest(path, **changes):
    manifest = json.loads((path / MANIFEST).read_text())
    manifest.update(changes)
    (path / MANIFEST).write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def mobilenet_v1_bundle(tmp_path_factory):
    """MobileNetV1 compiled by the command line, as a user would."""
    path = tmp_path_factory.mktemp("cli") / "mobilenet_v1.bundle"
    done = subprocess.run([sys.executable, "-m", "tvmsep.cli", "compile", "--network", "mobilenet_v1",
                           "--out", str(path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "[13/13] scheduled v1_13" in done.stdout
    functions = {line.split()[0]: line.split()[1] for line in done.stdout.splitlines() if line.startswith("v1_")}
    assert functions["v1_08"] == functions["v1_09"] != functions["v1_13"], "identical layers share a function"
    return path


def test_a_runtime_only_process_reproduces_the_reference_for_every_mobilenet_v1_layer(mobilenet_v1_bundle):
    """The loading process never maps TVM's compiler, and all 13 layers match float64 numpy."""
    script = textwrap.dedent(f"""
        import numpy as np, tvmsep
        from tvmsep.reference import scaled_error, depthwise_reference, separable_reference
        bundle = tvmsep.load({str(mobilenet_v1_bundle)!r})
        rng = np.random.default_rng()
        for name, kernel in bundle.kernels.items():
            wl = kernel.workload
            x = rng.standard_normal(wl.input_shape).astype(np.float32)
            f = rng.standard_normal(wl.filter_shape).astype(np.float32)
            out = np.full(wl.output_shape, np.nan, np.float32)
            strides = [1, wl.stride_h, wl.stride_w, 1]
            if wl.op == "depthwise":
                bundle.depthwise_conv2d(x, f, strides, "SAME", out=out)
                expected = depthwise_reference(x, f, wl)
            else:
                p = rng.standard_normal(wl.pointwise_shape).astype(np.float32)
                bundle.separable_conv2d(x, f, p, strides, "SAME", out=out)
                expected = separable_reference(x, f, p, wl)
            print(name, scaled_error(out, expected))
        print("compiler mapped:", any("libtvm_compiler" in line for line in open("/proc/self/maps")))
    """)
    env = {**os.environ, "TVM_USE_RUNTIME_LIB": "1"}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.split("\n")
    assert "compiler mapped: False" in lines
    errors = {line.split()[0]: float(line.split()[1]) for line in lines if line.startswith("v1_")}
    assert sorted(errors) == [f"v1_{i:02d}" for i in range(1, 14)]
    assert all(e <= 1e-4 for e in errors.values()), errors


def test_kernels_by_name_and_by_arguments(bundle_path, rng):
    bundle = tvmsep.load(bundle_path)
    kernel = bundle.kernel("v2_05_dw")
    wl = kernel.workload
    x = rng.standard_normal(wl.input_shape, dtype=np.float32)
    f = rng.standard_normal(wl.filter_shape, dtype=np.float32)
    out = np.full(wl.output_shape, np.nan, np.float32)
    assert kernel.run([x, f], out) is out
    assert_close(out, depthwise_reference(x, f, wl), "float32")
    strided = bundle.depthwise_conv2d(x, f, [1, wl.stride_h, wl.stride_w, 1], "SAME")
    assert_close(strided, depthwise_reference(x, f, wl), "float32")
    assert_close(bundle.run("v2_05_dw", x, f), depthwise_reference(x, f, wl), "float32")
    with pytest.raises(ValueError, match="layer 'v2_05_dw' .* takes arrays of shapes"):
        bundle.run("v2_05_dw", x[:, 1:], f)
    with pytest.raises(KeyError, match="it holds: v1_02"):
        bundle.kernel("v9_99")
    with pytest.raises(TypeError, match="run on the target they were compiled for"):
        bundle.depthwise_conv2d(x, f, [1, wl.stride_h, wl.stride_w, 1], "SAME", target="llvm")
    with pytest.raises(TypeError, match="a bundle's ops do not pickle"):
        pickle.dumps(bundle.depthwise_conv2d)


def test_arguments_that_match_no_kernel_list_what_the_bundle_holds(bundle_path):
    bundle = tvmsep.load(bundle_path)
    x, f = np.ones((1, 10, 10, 4), np.float32), np.ones((3, 3, 4, 1), np.float32)
    with pytest.raises(BundleError, match=r"(?s)no kernel for dw NHWC 1x10x10x4.*v1_02: sep NHWC"):
        bundle.depthwise_conv2d(x, f, [1, 1, 1, 1], "SAME")


def test_separable_by_arguments_matches_the_reference(bundle_path, rng):
    bundle = tvmsep.load(bundle_path)
    wl = bundle.kernel("v1_02").workload
    x = rng.standard_normal(wl.input_shape, dtype=np.float32)
    f = rng.standard_normal(wl.filter_shape, dtype=np.float32)
    p = rng.standard_normal(wl.pointwise_shape, dtype=np.float32)
    result = bundle.separable_conv2d(x, f, p, [1, 2, 2, 1], "SAME")
    assert_close(result, separable_reference(x, f, p, wl), "float32")


def test_a_layer_with_an_epilogue_by_name_and_by_arguments(bundle_path, rng):
    bundle = tvmsep.load(bundle_path)
    wl = bundle.kernel("v1_02_relu6").workload
    arrays = [rng.standard_normal(shape, dtype=np.float32) for shape in wl.arg_shapes]
    expected = reference_for(wl, arrays)
    assert_close(bundle.run("v1_02_relu6", *arrays), expected, "float32")
    x, f, p, bias = arrays
    assert_close(bundle.separable_conv2d(x, f, p, [1, 2, 2, 1], "SAME", bias=bias, activation="relu6"), expected,
                 "float32")
    plain = bundle.separable_conv2d(x, f, p, [1, 2, 2, 1], "SAME")  # the same shapes, the kernel without
    assert_close(plain, separable_reference(x, f, p, bundle.kernel("v1_02").workload), "float32")
    with pytest.raises(BundleError, match="no kernel for sep NHWC .* relu "):
        bundle.separable_conv2d(x, f, p, [1, 2, 2, 1], "SAME", bias=bias, activation="relu")


def test_a_truncated_library_is_refused(bundle_path, tmp_path):
    copy = _copy(bundle_path, tmp_path)
    library = copy / LIBRARY
    library.write_bytes(library.read_bytes()[: library.stat().st_size // 2])
    with pytest.raises(BundleError, match="checksum"):
        tvmsep.load(copy)


def test_a_tampered_library_is_refused(bundle_path, tmp_path):
    copy = _copy(bundle_path, tmp_path)
    data = bytearray((copy / LIBRARY).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / LIBRARY).write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        tvmsep.load(copy)


def test_a_newer_format_is_refused(bundle_path, tmp_path):
    copy = _copy(bundle_path, tmp_path)
    _edit_manifest(copy, format=99)
    with pytest.raises(BundleError, match="format 99, newer"):
        tvmsep.load(copy)


def test_another_tvm_abi_is_refused(bundle_path, tmp_path):
    copy = _copy(bundle_path, tmp_path)
    _edit_manifest(copy, tvm="0.26.0")
    with pytest.raises(BundleError, match="TVM 0.26.0"):
        tvmsep.load(copy)


def test_a_folder_that_is_no_bundle_is_refused(tmp_path):
    with pytest.raises(BundleError, match="not a tvmsep bundle"):
        tvmsep.load(tmp_path)
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(BundleError, match="not a tvmsep bundle"):
        tvmsep.load(tmp_path)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="needs nvcc")
def test_a_cuda_bundle_cross_compiles_and_is_refused_without_its_gpu(tmp_path):
    spec = [{"name": "dw", "input_shape": [1, 56, 56, 128], "filter_shape": [3, 3, 128, 1],
             "strides": [1, 1, 1, 1], "padding": "SAME", "dtype": "float16"}]
    (tmp_path / "layers.json").write_text(json.dumps(spec))
    done = subprocess.run([sys.executable, "-m", "tvmsep.cli", "compile", "--layers", str(tmp_path / "layers.json"),
                           "--target", '{"kind": "cuda", "arch": "sm_90"}', "--out", str(tmp_path / "cuda")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tmp_path / "cuda" / MANIFEST).read_text())
    assert manifest["arch"] == "sm_90" and manifest["kernels"][0]["workload"]["dtype"] == "float16"
    if tvm.cuda(0).exist:
        pytest.skip("this machine has a GPU")
    with pytest.raises(BundleError, match="sm_90.*has none"):
        tvmsep.load(tmp_path / "cuda")


def test_rewriting_a_bundle_replaces_it_whole(bundle_path, tmp_path):
    layer = network("mobilenet_v1")[0]
    path = _copy(bundle_path, tmp_path)
    compile_bundle([(layer.name, layer.workload("depthwise"))], None, path, progress=lambda line: None)
    assert list(tvmsep.load(path).kernels) == [layer.name]
    assert sorted(p.name for p in path.parent.iterdir()) == ["copy"]  # no staging folder left behind


# Instruction-set flags, as Linux names them, that some x86 CPUs have and others lack.
_SOME_CPUS_FLAGS = ("avx512_fp16", "avx512_bf16", "avx512_vnni", "avx_vnni", "avx512f", "avx2", "amx_fp16",
                    "avx_ifma", "avx_ne_convert", "cmpccxadd")


def test_a_bundle_for_a_cpu_with_other_instructions_is_refused(tmp_path):
    """Compiled for a CPU with instructions this one lacks, a bundle is refused, naming them.
    Where every CPU LLVM knows has only instructions this host has, the bundle compiled for a
    newer CPU says in its manifest that it needs one this host lacks."""
    from tvmsep.backends import BACKENDS, host_cpu_features
    host = host_cpu_features()
    if host is None:
        pytest.skip("this machine's CPU flags cannot be read")
    layer = network("mobilenet_v1")[2]
    cpu = next((mcpu for mcpu in ("graniterapids", "sapphirerapids", "znver5", "znver4", "skylake-avx512")
                if set(BACKENDS["llvm"].manifest_fields(tvm.target.Target({"kind": "llvm", "mcpu": mcpu}))
                       ["cpu_flags"]) - host), "graniterapids")
    path = tmp_path / "foreign"
    manifest = compile_bundle([(layer.name, layer.workload())], {"kind": "llvm", "mcpu": cpu}, path,
                              progress=lambda line: None)
    lacking = sorted(set(manifest.cpu_flags) - host)
    if not lacking:
        lacking = [next(flag for flag in _SOME_CPUS_FLAGS if flag not in host)]
        _edit_manifest(path, cpu_flags=[*manifest.cpu_flags, *lacking])
    with pytest.raises(BundleError, match=f"{cpu}.*lacks.*{lacking[0]}"):
        tvmsep.load(path)


def test_bad_layer_files_are_clear_errors(tmp_path):
    from tvmsep.export import layers_from_file
    path = tmp_path / "layers.json"
    path.write_text(json.dumps([{"name": "a", "input_shape": [1, 8, 8, 4], "filter_shape": [3, 3, 4, 1],
                                 "padding": "SAME"}]))
    with pytest.raises(ValueError, match="layer 'a': missing field 'strides'"):
        layers_from_file(path)
    path.write_text(json.dumps([{"name": "b", "input_shape": [1, 8, 8, 4], "filter_shape": [3, 3, 5, 1],
                                 "strides": [1, 1, 1, 1], "padding": "SAME", "stride": 2}]))
    with pytest.raises(ValueError, match="unknown fields \\['stride'\\]"):
        layers_from_file(path)
    layer = {"name": "c", "input_shape": [1, 8, 8, 4], "filter_shape": [3, 3, 4, 2], "strides": [1, 1, 1, 1],
             "padding": "SAME"}
    path.write_text(json.dumps([{**layer, "bias": "yes"}]))
    with pytest.raises(ValueError, match="layer 'c': `bias` must be true or false"):
        layers_from_file(path)
    path.write_text(json.dumps([{**layer, "activation": "tanh"}]))
    with pytest.raises(ValueError, match="layer 'c': .*`activation` must be None, 'relu' or 'relu6'"):
        layers_from_file(path)
    path.write_text(json.dumps([{**layer, "bias": True, "activation": "relu"}]))
    (_, wl), = layers_from_file(path)
    assert wl.bias and wl.activation == "relu" and wl.arg_shapes[-1] == (8,)


def _one_layer_file(tmp_path):
    spec = [{"name": "dw", "input_shape": [1, 6, 6, 4], "filter_shape": [3, 3, 4, 1], "strides": [1, 1, 1, 1],
             "padding": "SAME"}]
    (tmp_path / "layers.json").write_text(json.dumps(spec))
    return str(tmp_path / "layers.json")


def test_compile_out_refuses_a_folder_that_is_not_a_bundle(tmp_path, capsys):
    from tvmsep.cli import main as cli_main
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "notes.txt").write_text("mine")
    (project / "src" / "main.py").write_text("print('mine')")
    assert cli_main(["compile", "--layers", _one_layer_file(tmp_path), "--out", str(project)]) == 2
    assert "not part of a tvmsep bundle (notes.txt, src)" in capsys.readouterr().err
    assert (project / "notes.txt").read_text() == "mine" and (project / "src" / "main.py").exists()

    # Only a manifest and a library, but not a manifest tvmsep wrote: still the user's.
    lookalike = tmp_path / "lookalike"
    lookalike.mkdir()
    (lookalike / MANIFEST).write_text(json.dumps({"name": "my package"}))
    (lookalike / LIBRARY).write_bytes(b"my library")
    assert cli_main(["compile", "--layers", _one_layer_file(tmp_path), "--out", str(lookalike)]) == 2
    assert "is not a tvmsep bundle" in capsys.readouterr().err
    assert (lookalike / LIBRARY).read_bytes() == b"my library"


def test_compile_out_that_is_a_file_or_a_link_is_a_clear_error(bundle_path, tmp_path, capsys):
    from tvmsep.cli import main as cli_main
    layers = _one_layer_file(tmp_path)
    regular = tmp_path / "a_file"
    regular.write_text("keep me")
    assert cli_main(["compile", "--layers", layers, "--out", str(regular)]) == 2
    assert "exists and is not a folder" in capsys.readouterr().err
    assert regular.read_text() == "keep me"

    bundle = _copy(bundle_path, tmp_path)
    link = tmp_path / "link"
    link.symlink_to(bundle)
    assert cli_main(["compile", "--layers", layers, "--out", str(link)]) == 2
    assert "is a symbolic link" in capsys.readouterr().err
    assert link.is_symlink() and sorted(tvmsep.load(link).kernels) == sorted(tvmsep.load(bundle_path).kernels)

    under_a_file = regular / "bundle"
    assert cli_main(["compile", "--layers", layers, "--out", str(under_a_file)]) == 2
    assert "cannot write the bundle" in capsys.readouterr().err


def test_compile_out_replaces_an_empty_folder(tmp_path):
    from tvmsep.cli import main as cli_main
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli_main(["compile", "--layers", _one_layer_file(tmp_path), "--out", str(empty)]) == 0
    assert list(tvmsep.load(empty).kernels) == ["dw"]


@pytest.mark.parametrize("damage, words", [
    (lambda m: m.pop("sha256"), "lacks `sha256`"),
    (lambda m: m.pop("kernels"), "lacks `kernels`"),
    (lambda m: m.pop("target"), "lacks `target`"),
    (lambda m: m.update(kernels=[42]), "kernel entry 0 is not a JSON object"),
    (lambda m: m["kernels"][0].pop("name"), "kernel entry 0 lacks `name`"),
    (lambda m: m["kernels"][0].pop("function"), "kernel entry 0 lacks `function`"),
    (lambda m: m["kernels"][0].pop("workload"), "kernel entry 0 lacks `workload`"),
    (lambda m: m["kernels"][0].update(function="tvmsep_k99"), "not the one its workload compiles to"),
    (lambda m: m["kernels"][0]["workload"].pop("op"), "has a workload that does not parse"),
    (lambda m: m["kernels"][0]["workload"].update(pad_top=m["kernels"][0]["workload"]["pad_top"] + 1),
     "not the one its workload compiles to"),
    (lambda m: m["kernels"][0]["workload"].update(activation="relu"), "not the one its workload compiles to"),
    (lambda m: m.update(format=2), "from an older tvmsep"),
])
def test_a_damaged_manifest_is_a_bundle_error(bundle_path, tmp_path, damage, words):
    copy = _copy(bundle_path, tmp_path)
    manifest = json.loads((copy / MANIFEST).read_text())
    damage(manifest)
    (copy / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=re.escape(words)):
        tvmsep.load(copy)


def test_a_deeply_nested_manifest_is_a_bundle_error(tmp_path):
    (tmp_path / MANIFEST).write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(BundleError, match="not a tvmsep bundle"):
        tvmsep.load(tmp_path)


def test_a_library_linked_from_outside_the_bundle_is_refused(bundle_path, tmp_path):
    copy = _copy(bundle_path, tmp_path)
    outside = tmp_path / "elsewhere.so"
    os.replace(copy / LIBRARY, outside)
    (copy / LIBRARY).symlink_to(outside)
    with pytest.raises(BundleError, match="outside the bundle"):
        tvmsep.load(copy)


def test_a_library_from_another_bundle_is_refused_even_with_its_checksum(bundle_path, tmp_path):
    """The kernels are bound to their workloads by name: another bundle's library, its checksum
    copied into this manifest, holds none of the functions this manifest names."""
    from tvmsep.files import file_sha256
    other = tmp_path / "other"
    layer = network("mobilenet_v2")[3]
    compile_bundle([(layer.name, layer.workload())], None, other, progress=lambda line: None)
    copy = _copy(bundle_path, tmp_path)
    shutil.copy(other / LIBRARY, copy / LIBRARY)
    _edit_manifest(copy, sha256=file_sha256(copy / LIBRARY))
    with pytest.raises(BundleError, match="does not match its library"):
        tvmsep.load(copy)


def test_a_bundle_compiled_again_in_place_loads_its_new_code(tmp_path, rng):
    """Loading again in the same process runs the library whose checksum was checked, not the
    one the dynamic loader already had open for that path."""
    path = tmp_path / "again"
    first, second = network("mobilenet_v1")[2], network("mobilenet_v2")[4]
    compile_bundle([("layer", first.workload("depthwise"))], None, path, progress=lambda line: None)
    assert tvmsep.load(path).kernel("layer").workload == first.workload("depthwise")
    compile_bundle([("layer", second.workload("depthwise"))], None, path, progress=lambda line: None)
    bundle = tvmsep.load(path)
    wl = bundle.kernel("layer").workload
    assert wl == second.workload("depthwise")
    x = rng.standard_normal(wl.input_shape, dtype=np.float32)
    f = rng.standard_normal(wl.filter_shape, dtype=np.float32)
    out = np.full(wl.output_shape, np.nan, np.float32)
    bundle.run("layer", x, f, out=out)
    assert_close(out, depthwise_reference(x, f, wl), "float32")
