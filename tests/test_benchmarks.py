"""The scripts a GPU visit relies on work before the visit (``--smoke``: the Triton interpreter where
there is no GPU): the latency-floor benchmark's kernels give the right answers, the plan SASS reader
counts round trips, and the kernel A/B runs each arm on its own files."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def test_plan_sass_names_the_loops_that_pay_for_spills() -> None:
    """A local load inside a loop is paid every trip and named with its loop; the one before the
    loops is not counted."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.plan_sass import instructions, local_in_loops

    sass = """
        /*0010*/                   STL [R1], R2 ;
        /*0020*/                   LDL R5, [R1] ;
        /*0030*/                   IMAD R6, R5, 0x2, RZ ;
        /*0040*/              @P1 BRA 0x30 ;
        /*0050*/                   LDL.LU R7, [R1+0x4] ;
        /*0060*/                   STL [R1+0x4], R8 ;
        /*0070*/              @P2 BRA 0x50 ;
        /*0080*/                   EXIT ;
        /*0090*/                   SYNCS.PHASECHK.TRANS64.TRYWAIT P0, [R3], R4 ;
        /*00a0*/                   BRA 0x20 ;
    """
    assert local_in_loops(instructions(sass)) == [(0x50, 0x70, 2)]  # the retry past EXIT is no loop


def test_ab_kernels_runs_each_arm_on_its_own_files(tmp_path: Path) -> None:
    """An arm whose combine doubles its output fails its check there and only there; the checkout's
    kernels are left as they were (``--in-graph``, a timing option, reaches each arm's run)."""
    kernels = ROOT / "dsv4_tune" / "kernels"
    before = (kernels / "combine.py").read_text()
    for arm in ("good", "bad"):
        shutil.copytree(kernels, tmp_path / arm / "dsv4_tune" / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    bad = tmp_path / "bad" / "dsv4_tune" / "kernels" / "combine.py"
    merged = "to_bf16_rne(acc * scale[:, None])"
    assert merged in bad.read_text()
    bad.write_text(bad.read_text().replace(merged, merged.replace("])", "] * 2)")))
    split = json.dumps([["fused_splitk", {"BLOCK_H": 16, "BLOCK_N": 16, "SPLIT_K": 2, "COMBINE_BLOCK_H": 4,
                                          "combine_warps": 4, "num_stages": 1, "num_warps": 4}]])
    arms = ["--arm", f"good={tmp_path / 'good'}", "--arm", f"bad={tmp_path / 'bad'}"]
    done = subprocess.run([sys.executable, "benchmarks/ab_kernels.py", "--smoke", "--rounds", "1", "--cases",
                           "16:SWA 64:1", *arms, "--plans", split, "--in-graph", "--out", str(tmp_path / "out")],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    failed = [line for line in done.stdout.splitlines() if line.startswith("!!! ")]
    assert failed and all(line.startswith("!!! bad: ") and "fused_splitk" in line for line in failed), done.stdout
    assert (kernels / "combine.py").read_text() == before
    (saved,) = (tmp_path / "out").glob("ab_kernels-*.json")
    points = json.loads(saved.read_text())["points"]
    assert len(points) == 2 and all(p["good_checks"] == ["ok"] for p in points), points
    assert sorted(p["bad_checks"][0] == "ok" for p in points) == [False, True], "only the split plan fails in bad"
    crashed = tmp_path / "crashed" / "dsv4_tune" / "kernels"
    shutil.copytree(tmp_path / "good" / "dsv4_tune" / "kernels", crashed)
    (crashed / "combine.py").write_text("this is not Python\n")
    done = subprocess.run([sys.executable, "benchmarks/ab_kernels.py", "--smoke", "--rounds", "1", "--cases",
                           "16:SWA 64:1", "--arm", f"good={tmp_path / 'good'}", "--arm",
                           f"crashed={tmp_path / 'crashed'}", "--out", str(tmp_path / "out2")],
                          cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 1 and "!!! crashed: round 1 exited 1" in done.stdout, done.stdout[-2000:]


def test_ab_kernels_cut_by_sigterm_prints_what_ran_and_saves_nothing(tmp_path: Path) -> None:
    """A device visit's ``timeout`` stops the run mid-round: the plans of the runs that ended are in
    the log as they end, the summary follows, marked as cut, and no JSON is written."""
    arm = tmp_path / "a" / "dsv4_tune" / "kernels"
    shutil.copytree(ROOT / "dsv4_tune" / "kernels", arm, ignore=shutil.ignore_patterns("__pycache__"))
    run = subprocess.Popen([sys.executable, "benchmarks/ab_kernels.py", "--smoke", "--rounds", "2", "--cases",
                            "16:SWA 64:1", "--arm", f"a={tmp_path / 'a'}", "--arm", f"b={tmp_path / 'a'}",
                            "--out", str(tmp_path / "out")],
                           cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    seen = []
    for line in run.stdout:  # the first arm's run has ended: stop the second one mid-run
        seen.append(line)
        if line.startswith("round 1 a: 1 plans"):
            # b's child is starting (a Python importing torch: ~2 s); half a second keeps the
            # signal from landing between the two runs on a loaded machine (it once did, under a compile)
            time.sleep(0.5)
            run.send_signal(signal.SIGTERM)
            break
    out, err = run.communicate(timeout=120)
    log = "".join(seen) + out
    assert run.returncode == 1, log + err[-2000:]
    assert "round 1 a: h16 SWA 64 T=1 " in log and "!!! cut by SIGTERM in round 1's run of b" in log, log
    summary = [line for line in out.splitlines() if line.startswith("h16 SWA 64 T=1 ")]
    assert summary and summary[0].endswith("checks cut") and "Traceback" not in err, log + err[-2000:]
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").glob("*.json"))


def test_ab_kernels_arms_keep_the_path_they_were_given(tmp_path: Path) -> None:
    """An arm's package copy comes first, and the path it was started with (where the device machine's
    wheels are) stays after it."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.ab_kernels import child_env

    env = child_env(tmp_path / "arm0", {"PYTHONPATH": f"/tmp/site{os.pathsep}/repo", "HOME": "/root"})
    assert env["PYTHONPATH"].split(os.pathsep) == [str(tmp_path / "arm0"), "/tmp/site", "/repo"]
    assert env["HOME"] == "/root" and env["TRITON_CACHE_DIR"] == str(tmp_path / "arm0" / ".triton")
    assert child_env(tmp_path, {})["PYTHONPATH"] == str(tmp_path)


def test_ab_kernels_refuses_arms_it_cannot_compare(tmp_path: Path) -> None:
    """One line each: a name given twice, a folder with nothing under dsv4_tune/, an arm's own reference."""
    good, flat, own_ref = tmp_path / "good", tmp_path / "flat", tmp_path / "ref"
    (good / "dsv4_tune" / "kernels").mkdir(parents=True)
    shutil.copy(ROOT / "dsv4_tune" / "kernels" / "combine.py", good / "dsv4_tune" / "kernels" / "combine.py")
    (flat / "kernels").mkdir(parents=True)
    (flat / "kernels" / "combine.py").write_text("")
    (own_ref / "dsv4_tune" / "kernels").mkdir(parents=True)
    (own_ref / "dsv4_tune" / "kernels" / "reference.py").write_text("# another reference\n")
    for arms, says in (([f"a={good}", f"a={good}"], "given twice"), ([f"a={good}", f"b={flat}"], "no file under"),
                       ([f"a={good}", f"b={own_ref}"], "same reference")):
        done = subprocess.run([sys.executable, "benchmarks/ab_kernels.py", "--smoke",
                               *[x for arm in arms for x in ("--arm", arm)]],
                              cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=120)
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 2 and says in lines[-1] and "Traceback" not in done.stderr, done.stderr


def test_ws_anatomy_fits_the_fixed_part_and_the_per_block_slope() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.ws_anatomy import (
        DECODE_MODULE,
        DIAGNOSTICS,
        KERNEL,
        SOLO_DIAGNOSTICS,
        SOLO_KERNEL,
        SOLO_MODULE,
        blocks,
        fit_blocks,
        full_blocks,
        patched_modules,
    )

    # 128 main candidates then the extra scope's, each scope in whole 64-candidate tiles.
    assert [blocks(n, 128, 64) for n in (0, 1, 64, 65, 128, 129, 640, 1152)] == [0, 1, 1, 2, 2, 3, 10, 18]
    intercept, slope = fit_blocks([(1, 14.0), (2, 17.0), (10, 41.0), (18, 65.0)])
    assert abs(intercept - 11.0) < 1e-9 and abs(slope - 3.0) < 1e-9
    assert fit_blocks([(1, 14.0), (1, 15.0)]) is None
    # Only rows of whole tiles enter the fit: 1 candidate is a 64-candidate tile's cost with 63 masked.
    assert [full_blocks(n, 128, 64) for n in (0, 1, 64, 100, 128, 640, 1000, 1152)] == [
        True, False, True, False, True, True, False, True]
    # Each diagnostic's edit point is in today's kernel exactly once: a kernel change that moves one
    # fails here, not on the GPU.
    src = KERNEL.read_text()
    assert all(src.count(old) == 1 for edits in DIAGNOSTICS.values() for old, _ in edits)
    solo = SOLO_KERNEL.read_text()
    assert all(len(re.findall(pat, solo)) == n for edits in SOLO_DIAGNOSTICS.values() for pat, _, n in edits)
    # A SOLO copy runs on the decode module of its diagnostic: no-convert's edit reaches SOLO's tiles.
    mods = patched_modules("no-convert")
    assert mods[SOLO_MODULE]._dequant_sub is mods[DECODE_MODULE]._dequant_sub
    assert "y = gl.join(x, x | sb)" in Path(mods[DECODE_MODULE].__file__).read_text()
    qk = Path(patched_modules("solo-no-qk")[SOLO_MODULE].__file__).read_text()
    assert "warpgroup_mma(q.slice" not in qk and qk.count("s = s\n") == 4


def test_ws_anatomy_without_its_gpu_says_so_in_one_line(tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would time")
    done = subprocess.run([sys.executable, "benchmarks/ws_anatomy.py", "--out", str(tmp_path)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert not list(tmp_path.iterdir()), "no result file from a run that timed nothing"
    assert done.returncode == 2 and done.stderr == "", done.stderr[-2000:]
    assert done.stdout.count("\n") == 1 and done.stdout.startswith("ws_anatomy: needs a CUDA sm90 GPU"), done.stdout
    done = subprocess.run([sys.executable, "benchmarks/ws_anatomy.py", "--config", '{"BLOCK_N": 16}', "--out",
                           str(tmp_path)], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 2 and done.stdout.count("\n") == 1 and "BLOCK_N=16 not in" in done.stdout, done.stdout
    # A diagnostic of the other kernel is named as such, before any GPU is looked for.
    done = subprocess.run([sys.executable, "benchmarks/ws_anatomy.py", "--config", '{"SOLO": 1, "BLOCK_N": 32}',
                           "--staged", "0", "--diag", "no-mma", "solo-no-pv", "--out", str(tmp_path)], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stdout.count("\n") == 1, done.stdout
    assert done.stdout.startswith("ws_anatomy: no-mma: not a diagnostic of the one-warpgroup"), done.stdout


def _store_copy(tmp_path: Path) -> Path:
    """A copy of the H100's committed sweep store to forget rows in."""
    db = tmp_path / "s.db"
    shutil.copy(ROOT / "benchmarks/results/sweep-sm90-h100.sqlite", db)
    return db


def _forget(db: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "benchmarks/forget_variant.py", str(db), *args], cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)


def test_forget_variant_all_forgets_every_op_and_asks_for_one_target(tmp_path: Path) -> None:
    """``forget_variant.py --all`` (a store that recorded no kernel versions) drops every decode and op
    measurement and the winners, so a resume times everything again; a call naming both a variant and
    ``--all``, or neither, is refused in one line."""
    db = _store_copy(tmp_path)

    def count(table: str) -> int:
        with sqlite3.connect(db) as conn:
            return conn.execute(f"select count(*) from {table}").fetchone()[0]

    assert count("measurements") and count("winners")
    for bad in (("ws_sm90", "--all"), (), ("--all", "--op", "compress")):
        done = _forget(db, *bad)
        assert done.returncode == 2 and done.stderr.strip().splitlines()[-1].startswith("forget_variant.py: error:")
    assert count("measurements")
    done = _forget(db, "--all")
    assert done.returncode == 0, done.stderr
    assert "qk_norm variant fused" in done.stdout and "ws_sm90" in done.stdout
    assert count("measurements") == 0 and count("winners") == 0


def test_forget_variant_decode_keeps_the_ops_rows(tmp_path: Path) -> None:
    """``forget_variant.py --decode`` (a store without kernel versions whose decode kernels alone
    changed) drops every decode measurement and keeps the ops' (compress, qk_norm) rows."""
    db = _store_copy(tmp_path)

    def rows(ops: bool) -> int:  # decode workloads are named by their heads (h64-..., h128-...)
        with sqlite3.connect(db) as conn:
            return conn.execute(f"select count(*) from measurements where workload {'not ' if ops else ''}like 'h%'"
                                ).fetchone()[0]

    ops_before = rows(ops=True)
    assert ops_before and rows(ops=False)
    done = _forget(db, "--decode")
    assert done.returncode == 0, done.stderr
    assert "ws_sm90" in done.stdout and "qk_norm" not in done.stdout
    assert rows(ops=False) == 0 and rows(ops=True) == ops_before


def test_run_plans_names_a_bad_case_in_one_line() -> None:
    """The profiling driver refuses a case it cannot read (or a machine without a GPU) with one line."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "benchmarks/run_plans.py", "--case", "64:SWA 99:8", "--plans", "[]"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout.count("\n") == 1 and "SWA 99" in done.stdout and not done.stderr


def test_bench_cold_refuses_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    """A case it cannot read, a missing policy and (here, without a GPU) any run: one line, exit 2, no file."""
    import torch

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = [(["--cases", "64:SWA 99:8"], "'64:SWA 99:8' is not HEADS:LAYER:T"),
            (["--policy", str(tmp_path / "none.json")], "--policy")]
    if not torch.cuda.is_available():
        runs.append(([], "bench_cold: needs a CUDA GPU"))
    for argv, message in runs:
        done = subprocess.run([sys.executable, "benchmarks/bench_cold.py", *argv, "--out", str(tmp_path / "out")],
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and not done.stderr, done.stdout + done.stderr
        assert done.stdout.count("\n") == 1 and message in done.stdout, done.stdout
    assert not (tmp_path / "out").exists()


def test_ws_trace_edits_apply_and_its_timelines_read_the_stamps() -> None:
    """Each stamp's edit point is in today's kernel once, and a program's stamps (cycles from its
    start, scaled by its own globaltimer pair) read back as us; unstamped slots (-1) are left out."""
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.ws_anatomy import KERNEL
    from benchmarks.ws_trace import EDITS, SLOTS, summary, timelines

    src = KERNEL.read_text()
    for old, new in EDITS:  # in order, as the patch applies them: each still there once, and Python after
        assert src.count(old) == 1, old
        src = src.replace(old, new)
    compile(src, "ws_trace-patched", "exec")
    stamps = torch.full((3, SLOTS), -1, dtype=torch.int64)
    for p, (scale, span) in enumerate(((1, 2000), (2, 2000), (2, 4000))):  # ns a cycle; cycles to WG0's end
        stamps[p, 255], stamps[p, 254], stamps[p, 252], stamps[p, 253] = 1000, 0, 1000 + span, span * scale
        stamps[p, 192], stamps[p, 193] = 1000, 1500  # item 0: producer start, end
        stamps[p, 2], stamps[p, 6] = 1100, 1600 + 100 * p  # item 0 tile 0: k_ready reached, passed
    lines = timelines(stamps)  # at the median rate, 2 ns a cycle
    assert [e["item 0: P end"] for e in lines] == [1.0, 1.0, 1.0]
    assert lines[0]["item 0 tile 0: k_ready passed"] == 1.2 and "item 0: WG0 start" not in lines[0]
    rows = {r["event"]: r for r in summary(lines)}
    assert rows["item 0 tile 0: k_ready reached"]["programs"] == 3
    assert rows["item 0 tile 0: k_ready passed"]["median_us"] == 1.4
    assert rows["kernel end (WG0)"]["median_us"] == 4.0 and rows["kernel end (WG0)"]["p90_us"] == 4.0
    assert next(iter(rows)) == "item 0: P start"


def test_ws_trace_refuses_what_it_cannot_trace_in_one_line() -> None:
    """A split or PIPE plan, and (here, without an sm90 GPU) a plan it could trace."""
    import torch

    cases = [('{"SPLIT_K": 2}', "ws_trace: only an unsplit plan"), ('{"PIPE": 1}', "ws_trace: only an unsplit plan")]
    if not torch.cuda.is_available():
        cases.append(('{"PERSIST": 1}', "ws_trace: needs a CUDA sm90 GPU"))
    for config, says in cases:
        done = subprocess.run([sys.executable, "benchmarks/ws_trace.py", "--case", "64:SWA 128:64", "--config",
                               config], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr == "", done.stderr[-2000:]
        assert done.stdout.count("\n") == 1 and done.stdout.startswith(says), done.stdout


def test_plan_sass_reads_the_scoreboards_from_the_encodings() -> None:
    """Control bits of four instructions of a Triton 3.6 sm90 kernel: a load that sets scoreboard 5,
    its first use waiting for it, a shared-memory load (sets 4, its operands read when 1 clears) and
    cp.async's commit (sets 0); an instruction with none is left out."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.plan_sass import control, scoreboards

    assert control(0x000F62000C1E1900) == (5, 7, 0)
    assert control(0x020FE2000BF06270) == (7, 7, 0b100000)
    assert control(0x0003280000000C00) == (4, 1, 0)
    sass = """
        /*4810*/                   LDGDEPBAR ;                                  /* 0x00000000000079af */
                                                                                /* 0x000e220000000000 */
        /*4840*/              @!P3 LDG.E R95, desc[UR14][R14.64] ;              /* 0x0000000e0e5fb981 */
                                                                                /* 0x000f62000c1e1900 */
        /*4850*/                   MOV R2, RZ ;                                 /* 0x000000ff00027202 */
                                                                                /* 0x000fe20000000f00 */
        /*4c70*/                   ISETP.GE.AND P0, PT, R95, UR25, PT ;         /* 0x0000001f5f007c0c */
                                                                                /* 0x020fe2000bf06270 */
    """
    assert scoreboards(sass) == ["004810  W0               LDGDEPBAR",
                                 "004840  W5               @!P3 LDG.E R95, desc[UR14][R14.64]",
                                 "004c70  wait{5}          ISETP.GE.AND P0, PT, R95, UR25, PT"]


def test_parse_point_reads_heads_layer_and_t() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.bench_decode import parse_point

    h, layer, t = parse_point("128:SWA+C4 640:256")
    assert (h, layer.name, layer.extra, t) == (128, "SWA+C4 640", (512, 64), 256)
    assert [parse_point(x) for x in ("64:SWA 99:8", "64:SWA 128", "x:SWA 128:1", "64:SWA 128:-1")] == [None] * 4
