"""The latency-floor benchmark's kernels run and give the right answers (``--smoke``: the Triton
interpreter where there is no GPU), so the script a GPU visit relies on works before the visit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_latency_floor_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "benchmarks/bench_latency_floor.py", "--smoke", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert list(tmp_path.glob("bench_latency_floor-*.json"))


def test_plan_sass_counts_the_round_trips_a_loop_waits_for() -> None:
    """Two id loads in flight together, then a row load that needs one of them (a second round trip),
    a third whose register is read before the fourth is issued, and cp.async, which waits for nothing."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.plan_sass import instructions, load_waves, main_loop

    sass = """
        /*0010*/                   MOV R2, RZ ;
        /*0020*/              @!P0 LDG.E R4, desc[UR4][R2.64] ;
        /*0030*/                   LDG.E R5, desc[UR4][R2.64+0x4] ;
        /*0040*/                   IMAD.WIDE R6, R4, 0x240, R8 ;
        /*0050*/                   LDG.E.128 R12, desc[UR4][R6.64] ;
        /*0060*/                   LDGSTS.E.BYPASS.128 [R20+0x100], desc[UR4][R6.64+0x10] ;
        /*0070*/                   F2FP.BF16.F32.PACK_AB R30, R15, R14 ;
        /*0080*/                   LDG.E.128 R16, desc[UR4][R6.64+0x20] ;
        /*0090*/              @P1 BRA 0x20 ;
    """
    ins = instructions(sass)
    assert main_loop(ins) == (0x20, 0x90)
    assert load_waves(ins) == [[0x20, 0x30], [0x50], [0x80]]
