"""The SASS of a plan's kernels, and how many dependent global-load round trips their main loop waits
for: what stands between a latency-bound (small-T) plan and its floor, read without a GPU.

Each kernel of the plan is cross-compiled for the arch (CUDA only: SASS) with this Python's Triton,
as the compile check builds it; use the GPU machine's Triton (``../shared/tools/device-toolchain``)
for what runs there.  A *wave* is a run of global loads that are in flight together: it ends where
an instruction reads a register one of its loads writes (the warp waits for the data there), and
the next load starts a new wave, one more round trip.  Counted over the main loop (the longest
backward branch), else the whole kernel.  Also named: each loop with spill traffic (local loads and
stores) inside, and a kernel whose wgmma ptxas serialized (its note C7513, C7514, ...).  Beside each
kernel's ``.sass``, a ``.sb.txt`` lists every instruction that sets, reads or waits for a scoreboard (from
the encodings' control bits): which loads share one, and where a warp waits for them.

    PY=$(bash ../shared/tools/device-toolchain)
    PYTHONPATH=$PWD $PY benchmarks/plan_sass.py OUT --workload 1 64 128 64 --lengths 1 1 \\
        --variant fused_splitk --config '{"BLOCK_H": 16, "BLOCK_N": 32, "SPLIT_K": 4, ...}'
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

_INSTR = re.compile(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_HI = re.compile(r"^\s*/\* (0x[0-9a-f]{16}) \*/\s*$")
_PRED = re.compile(r"^@!?U?P[T0-9]+\s+")
_BRANCH = re.compile(r"BRA\s+(?:`\()?(?:0x)?([0-9a-f]+)")


def instructions(sass: str) -> list[tuple[int, str]]:
    """(address, instruction text without its predicate) of each SASS instruction."""
    return [(int(m.group(1), 16), _PRED.sub("", m.group(2)).strip()) for m in map(_INSTR.match, sass.splitlines())
            if m]


def control(hi: int) -> tuple[int, int, int]:
    """(write scoreboard, read scoreboard, wait mask) of an instruction, from the high word of its
    encoding (Volta on: bits 41-63 hold stall, yield, write and read scoreboard, wait mask, reuse);
    scoreboard 7 is none.  A variable-latency instruction (a load, MUFU, ...) sets its write
    scoreboard until its result is in; an instruction waits for every scoreboard in its mask."""
    c = hi >> 41
    return (c >> 5) & 7, (c >> 8) & 7, (c >> 11) & 0x3F


def scoreboards(sass: str) -> list[str]:
    """The lines of ``cuobjdump --dump-sass`` output (with encodings) whose instruction sets, reads or
    waits for a scoreboard, each as ``ADDRESS  W5 R1 wait{0,5}  INSTRUCTION``: which loads share a
    scoreboard, and where a warp waits for them (the first use of one load waits for all of its
    scoreboard's loads issued before)."""
    lines = sass.splitlines()
    out = []
    for i, line in enumerate(lines[:-1]):
        m, hi = _INSTR.match(line), _HI.match(lines[i + 1])
        if not m or not hi:
            continue
        write, read, wait = control(int(hi.group(1), 16))
        tags = [f"W{write}"] * (write != 7) + [f"R{read}"] * (read != 7)
        if wait:
            tags.append("wait{" + ",".join(str(b) for b in range(6) if wait >> b & 1) + "}")
        if tags:
            out.append(f"{int(m.group(1), 16):06x}  {' '.join(tags):<16} {m.group(2)}")
    return out


def main_loop(ins: list[tuple[int, str]]) -> tuple[int, int] | None:
    """[start, end] addresses of the longest backward branch's loop, None without one."""
    return max(loops(ins), key=lambda lo_hi: lo_hi[1] - lo_hi[0], default=None)


def loops(ins: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """[start, end] addresses of every backward branch's loop, in address order.  A branch back from
    past an EXIT is no loop: ptxas puts an mbarrier wait's retry after the function's end, and its
    branch back would make the whole kernel one loop."""
    exits = [addr for addr, text in ins if text.startswith("EXIT")]
    return sorted((lo, hi) for hi, text in ins if (m := _BRANCH.search(text)) if (lo := int(m.group(1), 16)) < hi
                  if not any(lo <= e <= hi for e in exits))


def local_in_loops(ins: list[tuple[int, str]]) -> list[tuple[int, int, int]]:
    """(start, end, local loads and stores) of each loop with spill traffic inside: a spill outside
    every loop costs once, one inside costs every trip (a warp-specialized kernel's partitions are
    loops of their own, so this names the partition that pays)."""
    out = []
    for lo, hi in loops(ins):
        n = sum(1 for addr, text in ins if lo <= addr <= hi and text.split(" ", 1)[0].startswith(("LDL", "STL")))
        if n:
            out.append((lo, hi, n))
    return out


def _regs(operand: str) -> set[int]:
    return {int(r) for r in re.findall(r"\bR(\d+)\b", operand)}


def load_waves(ins: list[tuple[int, str]]) -> list[list[int]]:
    """The global loads (LDG; cp.async's LDGSTS writes no register) grouped into waves, by address."""
    waves: list[list[int]] = []
    pending: set[int] = set()
    closed = False
    for addr, text in ins:
        opcode, _, rest = text.partition(" ")
        operands = rest.split(",")
        if opcode.startswith("LDG") and not opcode.startswith("LDGSTS") and not opcode.startswith("LDGDEPBAR"):
            sources = set().union(*map(_regs, operands[1:]))
            if not waves or closed or sources & pending:
                waves.append([])
                pending, closed = set(), False
            dst = re.match(r"\s*R(\d+)", operands[0])
            if dst:
                width = 4 if ".128" in opcode else 2 if ".64" in opcode else 1
                pending |= set(range(int(dst.group(1)), int(dst.group(1)) + width))
            waves[-1].append(addr)
        elif pending:
            read = operands if opcode.startswith("ST") else operands[1:]
            if set().union(*map(_regs, read)) & pending:
                closed = True
    return waves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder for the cubin and SASS files (created)")
    ap.add_argument("--workload", nargs=4, type=int, required=True, metavar=("T", "H_Q", "TOPK", "X_TOPK"))
    ap.add_argument("--lengths", nargs=2, type=int, default=(1, 1), metavar=("MAIN", "EXTRA"),
                    help="whether each scope has a topk_length (1 / 0)")
    ap.add_argument("--variant", required=True)
    ap.add_argument("--config", required=True, help="the plan's config as JSON")
    ap.add_argument("--arch", default="sm90")
    args = ap.parse_args()

    import triton  # after the arguments: --help needs no Triton

    from dsv4_tune.registry.variants import plan_problems
    from dsv4_tune.registry.workload import Plan, Workload
    from dsv4_tune.tuner.crosscompile import build, compile_kernel, plan_specs

    t, h, topk, x_topk = args.workload
    w = Workload(t, h, topk, x_topk, has_len_main=bool(args.lengths[0]), has_len_extra=bool(args.lengths[1]))
    plan = Plan.make(args.variant, json.loads(args.config))
    if problems := plan_problems(w, plan, args.arch):
        sys.exit(f"plan: {problems[0]}")
    tools = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    args.out.mkdir(parents=True, exist_ok=True)
    for i, spec in enumerate(plan_specs(plan, w, args.arch)):
        usage = compile_kernel(spec)
        kernel = build(spec)  # the same build, from Triton's cache
        path = args.out / f"{i}-{spec.launch[0]}"
        path.with_suffix(".cubin").write_bytes(kernel.asm["cubin"])
        sass = subprocess.run([os.fspath(tools / "cuobjdump"), "--dump-sass", os.fspath(path.with_suffix(".cubin"))],
                              capture_output=True, text=True, check=True).stdout
        path.with_suffix(".sass").write_text(sass)
        path.with_suffix(".sb.txt").write_text("\n".join(scoreboards(sass)) + "\n")
        ins = instructions(sass)
        loop = main_loop(ins)
        body = [x for x in ins if loop is None or loop[0] <= x[0] <= loop[1]]
        waves = load_waves(body)
        where = f"main loop {loop[0]:#x}-{loop[1]:#x}" if loop else "whole kernel"
        print(f"{spec.key}: {usage['regs']} registers, {usage['spills']} B of spills; {where}: {len(waves)} load waves "
              f"({', '.join(str(len(wv)) for wv in waves)} loads)")
        for lo, hi, n in local_in_loops(ins):
            print(f"  loop {lo:#x}-{hi:#x}: {n} local loads / stores a trip")
        if usage.get("wgmma_serialized"):
            print("  ptxas serialized every wgmma (its note C7513, C7514, ...): a register an async wgmma uses is "
                  "touched before its wait; name it in the wait's deps, wait for it before other wgmma are issued")


if __name__ == "__main__":
    main()
