"""What the hot loops of a compiled kernel do, read from its assembly.

    python benchmarks/hot_loops.py [--target JSON] [--network mobilenet_v1] [--layers v1_03,v1_13]
                                   [--dtype float16]

For each layer's depthwise and separable kernel, compiled as `tvmsep` compiles it for the
target (x86-64 or aarch64, this machine's or another's: nothing runs), every loop whose body
holds vector FMAs is listed with its instructions, its FMAs, its memory loads and stores, its
vector spills (vector registers moved to or from the stack: a register tile that does not
fit the register file shows up there) and its vector selects (a padding test per product
where the FMA takes no mask: a blend, or an and with a comparison's mask). A loop is the code
from a label to a later branch back to it, with no such loop inside (`loops`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Vector FMAs: aarch64's fmla (vector and by-element), x86's vfmadd/vfnmadd of packed operands.
_FMA = re.compile(r"^(fmla|fmls|v?fn?madd\d{3}p[sdh])\b")
_LABEL = re.compile(r"^([.\w$]+):")
_BRANCH = re.compile(r"^(b|b\.\w+|cbn?z|tbn?z|j\w+)\s+(?:.*,\s*)?([.\w$]+)\s*$")
# Vector selects: x86's variable blends (AVX2) and masked blends (AVX-512), aarch64's bitwise selects,
# and either's and of a value with a comparison's all-ones or all-zeros mask (a select of the value or
# zero); a depthwise kernel has no other use for a vector and.
_SELECT = re.compile(r"^(?:v?p?blendv\w*|vp?blendm\w*|bif|bit|bsl)\b|^v?p?andn?(?:p[sd]|[dq])?\s.*%[xyz]mm"
                     r"|^and\s+v\d+\.16b")
# Vector registers moved to or from the stack (sp on aarch64, rsp or rbp on x86-64): a
# register tile that does not fit. Addresses and counters spilled to the stack are not.
_VECTOR_STACK = re.compile(r"^\S+\s+(?:[qdsb]\d+|%[xyz]mm\d+).*(?:\[sp\b|%[re]?[sb]p\))"
                           r"|^\S+\s+.*(?:\[sp\b|%[re]?[sb]p\)).*%[xyz]mm\d+\s*$")


@dataclasses.dataclass(frozen=True)
class Loop:
    label: str
    instructions: int
    fmas: int
    loads: int
    stores: int
    spills: int  # vector registers stored to or loaded from the stack
    selects: int  # vector selects: a padding test per product where there is no masked FMA


def _memory_operand(instruction: str) -> tuple[bool, bool]:
    """(reads memory, writes memory) for one instruction, from its mnemonic and operands."""
    mnemonic, _, operands = instruction.replace("\t", " ").partition(" ")
    if "[" in operands:  # aarch64: ld* read, st* write
        return mnemonic.startswith("ld"), mnemonic.startswith("st")
    if "(" in operands and not mnemonic.startswith(("prefetch", "lea")):  # AT&T: the destination comes last
        writes = "(" in operands.rsplit(",", 1)[-1]
        return not writes, writes
    return False, False


def loops(assembly: str) -> list[Loop]:
    """The innermost loops of `assembly` that hold vector FMAs: the code from a label to a later
    branch back to it (the body may span blocks: padding tests branch inside it), without
    another such loop inside."""
    code: list[str] = []
    labels: dict[str, int] = {}  # label -> index of the instruction it precedes
    spans = []  # (label, first, last instruction index) of each backward branch
    for line in assembly.splitlines():
        text = line.split("//")[0].split(";")[0].strip()
        if (match := _LABEL.match(text)) is not None:
            labels[match.group(1)] = len(code)
        elif text and not text.startswith("."):
            code.append(text)
            branch = _BRANCH.match(text)
            if branch is not None and branch.group(2) in labels:
                spans.append((branch.group(2), labels[branch.group(2)], len(code) - 1))
    with_fmas = [(label, first, last) for label, first, last in spans
                 if any(_FMA.match(i) for i in code[first:last + 1])]
    found = []
    for label, first, last in with_fmas:
        if any(first <= f and l <= last and (f, l) != (first, last) for _, f, l in with_fmas):
            continue  # not innermost
        body = code[first:last + 1]
        memory = [_memory_operand(i) for i in body]
        found.append(Loop(label, len(body), sum(bool(_FMA.match(i)) for i in body), sum(r for r, _ in memory),
                          sum(w for _, w in memory), sum(bool(_VECTOR_STACK.search(i)) for i in body),
                          sum(bool(_SELECT.match(i)) for i in body)))
    return found


def kernel_assembly(wl: Any, target: Any) -> str:
    """The assembly of `wl`'s kernel as tvmsep compiles it for `target` (hand-written or tuned)."""
    from tvmsep import build
    from tvmsep.target import resolve_target
    target = resolve_target(target)
    executable = build.compile_module(wl, target, build.tuned_trace(wl, target))
    return executable.mod.inspect_source("asm")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target", default="llvm", help="llvm (this CPU) or a TVM target as JSON")
    parser.add_argument("--network", default="mobilenet_v1")
    parser.add_argument("--layers", help="comma-separated layer names (default: all)")
    parser.add_argument("--dtype", default="float32", choices=["float16", "float32", "float64"])
    args = parser.parse_args(argv)
    from tvmsep.networks import network
    target = json.loads(args.target) if args.target.lstrip().startswith("{") else args.target
    chosen = set(args.layers.split(",")) if args.layers else None
    print(f"target {args.target}, {args.dtype}")
    print(f"{'layer':8} {'op':10} {'loop':10} {'instr':>6} {'FMAs':>5} {'loads':>6} {'stores':>6} {'spills':>6} "
          f"{'selects':>7}")
    for layer in network(args.network):
        if chosen is not None and layer.name not in chosen:
            continue
        for op in ("depthwise", "separable"):
            wl = dataclasses.replace(layer.workload(op), dtype=args.dtype)
            for loop in loops(kernel_assembly(wl, target)):
                print(f"{layer.name:8} {op:10} {loop.label:10} {loop.instructions:6d} {loop.fmas:5d} "
                      f"{loop.loads:6d} {loop.stores:6d} {loop.spills:6d} {loop.selects:7d}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
