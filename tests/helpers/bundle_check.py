"""Check every kernel of a bundle against the float64 reference, in a process of its own:

    python tests/helpers/bundle_check.py BUNDLE [--tf-cpu-float16]

Run by the emulated-aarch64 tests with an aarch64 Python and the TVM runtime alone. Each
kernel gets fresh random inputs and a NaN-poisoned `out=` through the bundle's public op;
one line per kernel, `<layer> <scaled error>`, then this process's architecture and CPU
features; exit 1 if any kernel is outside its dtype's tolerance. With `--tf-cpu-float16`, a
float16 kernel's line adds how many of its results differ from those of TF's CPU kernel,
which rounds its depthwise sums after every tap (`reference_for`'s `rounded_taps`), and how
many results it has: a second reference, which under emulation takes about as long as the first.
"""

import platform
import sys

import numpy as np

import tvmsep
from tvmsep.backends import host_cpu_features
from tvmsep.reference import TOLERANCE, reference_for, scaled_error
from tvmsep.spec import split_bias


def main(path: str, tf_cpu_float16: bool = False) -> int:
    bundle = tvmsep.load(path)
    rng = np.random.default_rng()
    failed = 0
    for name, kernel in bundle.kernels.items():
        wl = kernel.workload
        arrays = [rng.standard_normal(shape).astype(wl.dtype) for shape in wl.arg_shapes]
        out = np.full(wl.output_shape, np.nan, wl.dtype)
        strides, padding, rate, layout = wl.call_arguments()
        inputs, bias = split_bias(wl.op, arrays)
        op = bundle.depthwise_conv2d if wl.op == "depthwise" else bundle.separable_conv2d
        result = op(*inputs, strides, padding, rate, data_format=layout, bias=bias, activation=wl.activation,
                    out=out)
        error = scaled_error(out, reference_for(wl, arrays)) if result is out else float("inf")
        failed += not error <= TOLERANCE[wl.dtype]
        if tf_cpu_float16 and wl.dtype == "float16":
            tf_cpu = reference_for(wl, arrays, rounded_taps=True).astype(np.float16)
            print(name, error, np.count_nonzero(out != tf_cpu), out.size, flush=True)
        else:
            print(name, error, flush=True)
    print("machine:", platform.machine(), " ".join(sorted(host_cpu_features() or ())))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], "--tf-cpu-float16" in sys.argv[2:]))
