"""The store and the sweep on the interpreter: resumable, safe against a kill, failures as rows."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from dsv4_tune import Plan
from dsv4_tune.cache.store import Store, sweep_key
from dsv4_tune.cli import app
from dsv4_tune.kernels.kv_layout import num_slots
from dsv4_tune.policies.gpu import detect
from dsv4_tune.policies.schema import load_policy
from dsv4_tune.registry.ops import OPS
from dsv4_tune.registry.variants import VARIANTS
from dsv4_tune.runtime.workspace import Workspace
from dsv4_tune.tuner import sweep as sweep_mod
from dsv4_tune.tuner.grid import Grid, GridClass
from dsv4_tune.tuner.inputs import INPUTS_VERSION, make_scope
from dsv4_tune.tuner.kernel_versions import kernel_versions
from dsv4_tune.tuner.select import select_eager, select_winner

GRID = Grid((GridClass(16, 64, 64, True, 64, 64),), (1, 2))


def _grid_file(tmp_path: Path, grid: Grid = GRID) -> Path:
    path = tmp_path / "grid.json"
    path.write_text(json.dumps(grid.to_json()))
    return path


def _sweep_cmd(db: Path, grid: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "dsv4_tune.cli", "sweep", "--db", str(db), "--grid", str(grid), *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "TRITON_INTERPRET": "1", "COLUMNS": "200"}


def _rows(db: Path) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("select workload, stage, plan, status from measurements order by id").fetchall()


def test_killed_sweep_loses_nothing_and_resumes_without_duplicates(tmp_path: Path) -> None:
    db, grid = tmp_path / "s.db", _grid_file(tmp_path)
    proc = subprocess.Popen(_sweep_cmd(db, grid), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and (not db.exists() or len(_safe_rows(db)) < 12):
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = _safe_rows(db)
    assert len(before) >= 12, "the sweep should have committed rows before the kill"
    done = subprocess.run(_sweep_cmd(db, grid), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after = _rows(db)
    assert len(after) > len(before), "the kill came before the sweep ended"
    assert after[: len(before)] == before, "rows committed before the kill are kept as they were"
    keys = [(w, s, p) for w, s, p, _ in after]
    assert len(keys) == len(set(keys)), "no duplicates after resuming"
    store = Store(db)
    (sweep,) = store.sweeps()
    assert sweep["status"] == "done" and sweep["interpreter"] == 1
    assert {w["workload"][-3:] for w in store.winners(sweep["id"])} == {"-T1", "-T2"}


def _safe_rows(db: Path) -> list[tuple]:
    try:
        return _rows(db)
    except sqlite3.OperationalError:
        return []


def test_two_sweeps_share_one_store(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    small = Grid((GridClass(16, 64, 0, False, 64, 64),), (1,))
    grid = _grid_file(tmp_path, small)
    procs = [subprocess.Popen(_sweep_cmd(db, grid, "--fresh"), env=_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=300)
        assert p.returncode == 0, out
    with sqlite3.connect(db) as conn:
        assert conn.execute("pragma integrity_check").fetchone()[0] == "ok"
        assert conn.execute("select count(*) from sweeps").fetchone()[0] == 2


def test_the_check_fails_a_plan_that_reads_scratch_it_never_wrote(monkeypatch) -> None:
    """The sweep's check gives a plan a workspace whose float buffers start as NaN (one call on the
    interpreter; on a GPU a second call on the used workspace, poisoned again)."""
    ws = Workspace(poisoned=True)
    cpu = torch.device("cpu")
    assert torch.isnan(ws.get("o", (2, 3), torch.float32, cpu)).all()
    assert torch.isnan(ws.get("o", (5, 3), torch.float32, cpu)).all(), "a grown buffer starts poisoned too"
    assert (ws.get("n", (4,), torch.int32, cpu, zeroed=True) == 0).all(), "counters start at zero"
    case = GridClass(16, 64, 0, True, 64, 64).build_case(1, "cpu")
    plan = Plan.make("fused", BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=1)
    assert case.check(plan)[0] == "ok"
    run = type(case).run

    def reads_unwritten(self, plan, ws, out) -> None:
        run(self, plan, ws, out)
        out[0].add_(ws.get("never_written", (1,), torch.float32, self.q.device).to(out[0].dtype))

    monkeypatch.setattr(type(case), "run", reads_unwritten)
    status, error, _ = case.check(plan)
    assert status == "mismatch" and "NaN" in error, error


def test_the_interpreter_times_a_just_checked_plan_by_its_checked_call(monkeypatch) -> None:
    """On the interpreter the stand-in timing of a plan checked on the same inputs is that check's
    call (one interpretation fewer); a plan not checked there is run once."""
    case = GridClass(16, 64, 0, True, 64, 64).build_case(1, "cpu")
    checked = Plan.make("fused", BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=1)
    other = Plan.make("fused", BLOCK_H=16, BLOCK_N=32, num_warps=4, num_stages=1)
    assert case.check(checked)[0] == "ok"
    us = case.checked_us[checked]
    assert us > 0
    timed = []
    monkeypatch.setattr(type(case), "timer", lambda self, p: (lambda: timed.append(p)))
    samples, flag = sweep_mod.time_plans(case, [checked, other], False, rounds=3, reps=10)
    assert timed == [other] and samples[0] == [us] and len(samples[1]) == 1 and "not a real" in flag
    assert checked not in case.checked_us, "a check's time stands in for one timing only"


def test_failing_candidates_are_rows_and_the_sweep_goes_on(tmp_path: Path, monkeypatch) -> None:
    good = Plan.make("fused", BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=1)
    bad = Plan.make("fused_splitk", good.as_dict(), SPLIT_K=17, COMBINE_BLOCK_H=8, combine_warps=4)
    monkeypatch.setattr(sweep_mod, "coarse_candidates", lambda w, arch=None, limit=None: [good, bad])
    monkeypatch.setattr(sweep_mod, "refine_candidates", lambda w, seeds, arch=None, limit=None: seeds)
    monkeypatch.setattr(sweep_mod.registry_plans, "problems", lambda *a, **k: [])  # let the bad plan reach its launch
    store = Store(tmp_path / "s.db")
    sweep_id = sweep_mod.run_sweep(store, Grid((GridClass(16, 64, 0, True, 64, 64),), (1,)), detect())
    rows = {r["plan"]: r for r in store.measurements(sweep_id, "coarse")}
    assert rows[str(bad)]["status"] == "launch_error" and "split_k" in rows[str(bad)]["error"].lower()
    assert rows[str(good)]["status"] == "ok"
    assert [w["plan"] for w in store.winners(sweep_id)] == [str(good)]


def test_more_refine_rounds_follow_the_best_plan_further(tmp_path: Path, monkeypatch) -> None:
    """Round 2 searches the neighbours of round 1's best plan: a plan two steps from the coarse
    seed is found with two rounds (or by deepening a finished one-round sweep), not with one."""
    a = Plan.make("fused", BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=1)
    b = Plan.make("fused", BLOCK_H=16, BLOCK_N=32, num_warps=4, num_stages=1)
    c = Plan.make("fused", BLOCK_H=16, BLOCK_N=32, num_warps=8, num_stages=1)
    chain, times = {a: [b], b: [c], c: []}, {a: 3.0, b: 2.0, c: 1.0}
    monkeypatch.setattr(sweep_mod, "coarse_candidates", lambda w, arch=None, limit=None: [a])
    monkeypatch.setattr(sweep_mod, "refine_candidates",
                        lambda w, seeds, arch=None, limit=None: [*seeds, *[n for p in seeds for n in chain[p]]])
    monkeypatch.setattr(sweep_mod, "time_plans", lambda case, plans, real, rounds, reps: ([[times[p]] for p in plans],
                                                                                          None))
    grid = Grid((GridClass(16, 64, 0, True, 64, 64),), (1,))

    def winner(store: Store, **kw: object) -> str:
        return store.winners(sweep_mod.run_sweep(store, grid, detect(), **kw))[0]["plan"]

    assert winner(Store(tmp_path / "one.db")) == str(b)
    assert winner(Store(tmp_path / "two.db"), refine_rounds=3) == str(c)
    deepened = Store(tmp_path / "one.db")
    assert winner(deepened, refine_rounds=2) == str(c)
    refined = [r["plan"] for r in deepened.measurements(deepened.sweeps()[-1]["id"], "refine")]
    assert sorted(refined) == sorted([str(a), str(b), str(c)]), "each plan timed once"
    with pytest.raises(ValueError, match="refine_rounds"):
        sweep_mod.run_sweep(Store(tmp_path / "x.db"), grid, detect(), refine_rounds=0)


def test_gpu_mismatch_exits_2_naming_both(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["sweep", "--gpu", "gfx950", "--db", str(tmp_path / "s.db")])
    assert result.exit_code == 2
    assert "gfx950" in result.output and "does not match the detected GPU" in result.output


def test_export_writes_a_valid_policy_and_refuses_gaps(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    grid = Grid((GridClass(16, 64, 0, True, 64, 64),), (1, 2))
    store = Store(db)
    sweep_id = sweep_mod.run_sweep(store, grid, detect())
    out = tmp_path / "p.json"
    result = CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(out)])
    assert result.exit_code == 0, result.output
    policy = load_policy(out)
    assert policy.provenance.source == f"sweep:{sweep_id}" and policy.classes[0].h_q == 16
    winners = {w["workload"][-2:]: w for w in store.winners(sweep_id)}
    assert [(m.total_tokens, m.runner_up) for m in policy.classes[0].measured] == [
        (1, winners["T1"]["runner_up"]), (2, winners["T2"]["runner_up"])]
    shown = CliRunner().invoke(app, ["show", str(out), "--buckets"], terminal_width=250)
    assert shown.exit_code == 0 and "runner-up" in shown.output
    # A two-launch winner with a one-launch eager winner at T=1, and an eager winner that saves no
    # launch at T=2 (dropped): T=1 is its own segment, T=2 has no eager plan.
    fused = Plan.make("fused", BLOCK_H=16, BLOCK_N=32, num_warps=4, num_stages=1)
    split = Plan.make("fused_splitk", fused.as_dict(), SPLIT_K=2, COMBINE_BLOCK_H=8, combine_warps=4)
    store.db.execute("update winners set variant = 'fused_splitk', config = ?, eager_variant = 'fused', "
                     "eager_config = ?, eager_us = 1.0 where workload like '%-T1'",
                     [json.dumps(split.as_dict()), json.dumps(fused.as_dict())])
    other = Plan.make("fused", fused.as_dict(), BLOCK_N=64)
    store.db.execute("update winners set variant = 'fused', config = ?, eager_variant = 'fused', eager_config = ?, "
                     "eager_us = 1.0 where workload like '%-T2'",
                     [json.dumps(fused.as_dict()), json.dumps(other.as_dict())])
    assert CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(out)]).exit_code == 0
    segments = load_policy(out).classes[0].segments
    assert segments[0].max_tokens == 1 and segments[0].plan.to_plan() == split
    assert segments[0].eager_plan.to_plan() == fused and segments[-1].eager_plan is None
    store.db.execute("delete from winners where workload like '%-T2'")
    result = CliRunner().invoke(app, ["export", "--db", str(db), "--out", str(tmp_path / "q.json")])
    assert result.exit_code == 1 and "no measured winner" in result.output


def test_selection_prefers_a_simpler_plan_within_noise() -> None:
    fused = Plan.make("fused", BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=1)
    split = Plan.make("fused_splitk", fused.as_dict(), SPLIT_K=4, COMBINE_BLOCK_H=8, combine_warps=4)
    noisy = [10.0, 10.4, 9.8, 10.1, 10.3, 9.9, 10.2, 10.0]
    assert select_winner({fused: [x + 0.05 for x in noisy], split: noisy})["plan"] == fused
    win = select_winner({fused: [x * 1.5 for x in noisy], split: noisy})
    assert win["plan"] == split and win["margin"] > 0.4


def test_eager_winner_counts_the_host_time_of_each_launch() -> None:
    fused = Plan.make("fused", BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=1)
    split = Plan.make("fused_splitk", fused.as_dict(), SPLIT_K=4, COMBINE_BLOCK_H=8, combine_warps=4)
    gpu = {fused: [10.0, 10.4, 9.8, 10.1, 10.3, 9.9], split: [6.0, 6.2, 5.9, 6.1, 6.0, 6.3]}
    graph = select_winner(gpu)["plan"]
    assert graph == split
    eager = select_eager(gpu, {fused: 14.0, split: 19.0}, graph)  # host-bound: one launch wins
    assert eager is not None and eager["plan"] == fused and eager["median_us"] == 14.0
    assert select_eager(gpu, {fused: 3.0, split: 4.0}, graph) is None  # GPU-bound: the graph winner
    assert select_eager(gpu, {}, graph) is None  # not measured
    # Host time is charged by launch count: a noisy host reading never makes a GPU-slower plan
    # with as many launches the eager winner.
    other = Plan.make("fused_splitk", split.as_dict(), SPLIT_K=2)
    gpu[other] = [x + 1.0 for x in gpu[split]]
    assert select_eager(gpu, {fused: 30.0, split: 19.0, other: 9.0}, graph) is None
    # Charged per plan, `other` (9 us) would beat fused (12 us); pooled, both two-launch plans cost
    # median(19, 9) = 14 us and fused wins.
    eager = select_eager(gpu, {fused: 12.0, split: 19.0, other: 9.0}, graph)
    assert eager is not None and eager["plan"] == fused


def test_verify_policy_and_warmup_run_on_the_interpreter(tmp_path: Path) -> None:
    from dsv4_tune.policies.baseline import BASELINE_FILE

    result = CliRunner().invoke(app, ["verify-policy", str(BASELINE_FILE), "--max-points", "1"], terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "interpreter" in result.output and "no" in result.output
    result = CliRunner().invoke(app, ["warmup", str(BASELINE_FILE)])
    assert result.exit_code == 0 and "nothing to compile" in result.output


def test_refine_neighbours_change_one_knob_and_stay_valid() -> None:
    from dsv4_tune.registry.variants import VARIANTS, plan_problems
    from dsv4_tune.serving.variants import variant_problem
    from dsv4_tune.tuner.candidates import neighbours, refine_candidates

    w = GridClass(128, 128, 1024).workload(64)
    for v in VARIANTS.values():
        seed = v.default(w)
        if variant_problem(v.name):  # a variant this Triton cannot build (ws_sm90 on CI's): its neighbours are
            found = [seed, *(p for p in neighbours(seed) if not plan_problems(w, p, "sm90"))]  # still the rules'
        else:
            found = refine_candidates(w, [seed], "sm90")
        assert found[0] == seed and len(found) > 1, v.name
        for plan in found[1:]:
            assert not plan_problems(w, plan, "sm90"), plan
            a, b = seed.as_dict(), plan.as_dict()
            changed = {k for k in a.keys() | b.keys() if a.get(k) != b.get(k)}
            assert 1 <= len(changed - {"COMBINE_BLOCK_H", "combine_warps", "gather_warps"}) <= 1 or \
                changed <= {"COMBINE_BLOCK_H", "combine_warps"}, (seed, plan)
    split = Plan.make("gather_attend", VARIANTS["gather_attend"].default(w).as_dict(), SPLIT_K=2,
                      COMBINE_BLOCK_H=8, combine_warps=4)
    unsplit = [p for p in neighbours(split) if p["SPLIT_K"] == 1]
    assert unsplit and "COMBINE_BLOCK_H" not in unsplit[0].as_dict()
    # fused_splitk's PDL is switched on and off (absent <-> 1); an arch without it drops the plan.
    sk = VARIANTS["fused_splitk"].default(w)
    with_pdl = Plan.make("fused_splitk", sk.as_dict(), PDL=1)
    assert with_pdl in neighbours(sk) and sk in neighbours(with_pdl)
    assert with_pdl in refine_candidates(w, [sk], "sm90")
    assert with_pdl not in refine_candidates(w, [sk], "gfx950")


def test_sweep_runs_coarse_refine_final_and_resumes_each(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    grid = Grid((GridClass(16, 64, 0, True, 64, 64),), (1,))
    sweep_id = sweep_mod.run_sweep(store, grid, detect())
    stages = {r["stage"] for r in store.measurements(sweep_id)}
    assert stages == {"coarse", "refine", "final"}
    checked = [r for r in store.measurements(sweep_id) if r["stage"] != "final"]
    assert all(r["max_error"] is not None and r["max_error"] < 2e-2 for r in checked), "error vs reference kept"
    refine = store.measurements(sweep_id, "refine")
    coarse_best = min((r for r in store.measurements(sweep_id, "coarse") if r["status"] == "ok"),
                      key=lambda r: r["median_us"])
    assert coarse_best["plan"] in {r["plan"] for r in refine}, "the best coarse plan is re-timed beside its neighbours"
    rows = len(store.measurements(sweep_id))
    assert sweep_mod.run_sweep(store, grid, detect()) == sweep_id
    assert len(store.measurements(sweep_id)) == rows, "a finished sweep resumes to nothing"


def test_compile_table_rules_prune_candidates(tmp_path: Path) -> None:
    from dsv4_tune.registry.launches import kernel_key, plan_kernels
    from dsv4_tune.registry.variants import VARIANTS, plan_problems

    w = GridClass(64, 128, 512).workload(8)
    plan = next(p for p in VARIANTS["fused"].space(w) if not plan_problems(w, p, "sm90"))  # the shipped rules allow it
    store = Store(tmp_path / "s.db")
    assert store.unfit_kernels("sm90") == {}
    key = kernel_key("sm90", plan_kernels(plan, w, "sm90")[0])
    store.add_compile_rows([{"key": key, "arch": "sm90", "toolchain": "triton x", "problems": ["spills 999 B"]}])
    unfit = store.unfit_kernels("sm90")
    assert unfit == {key: ["spills 999 B"]}
    assert plan_problems(w, plan, "sm90", unfit) and not plan_problems(w, plan, "sm90")


def test_export_and_verify_cover_op_classes(tmp_path: Path) -> None:
    from dsv4_tune.tuner.grid import OpGridClass
    from dsv4_tune.tuner.select import build_policy
    from dsv4_tune.tuner.verify import policy_plans, verify

    grid = Grid((GridClass(16, 64, 0, True, 64, 64),), (1,),
                (OpGridClass.make("qk_norm", (2, 4), h_q=4, h_k=1, head_dim_q=128, head_dim_k=128),))
    store = Store(tmp_path / "s.db")
    sweep_id = sweep_mod.run_sweep(store, grid, detect())
    policy = build_policy(grid, store.winners(sweep_id), store.sweep(sweep_id), "test")
    (op,) = policy.ops
    assert op.op == "qk_norm" and [m.total_tokens for m in op.measured] == [2, 4]
    assert any(type(g).__name__ == "OpGridClass" for g, _ in policy_plans(policy))
    rows = verify(policy, real=False, max_points=4)
    assert any(r["class"][0] == "qk_norm" for r in rows) and not any(r["stale"] for r in rows)


def test_resume_reopens_the_final_stage_when_new_candidates_appear(tmp_path: Path, monkeypatch) -> None:
    store = Store(tmp_path / "s.db")
    grid = Grid((GridClass(16, 64, 0, True, 64, 64),), (1,))
    sweep_id = sweep_mod.run_sweep(store, grid, detect())
    store.db.execute("delete from measurements where stage = 'final'")
    base = sweep_mod.coarse_candidates
    extra = Plan.make("fused", BLOCK_H=16, BLOCK_N=16, num_warps=8, num_stages=1)
    monkeypatch.setattr(sweep_mod, "coarse_candidates", lambda w, arch=None, limit=None: [*base(w, arch, limit), extra])
    assert sweep_mod.run_sweep(store, grid, detect()) == sweep_id
    assert str(extra) in {r["plan"] for r in store.measurements(sweep_id, "coarse")}
    assert store.measurements(sweep_id, "final"), "the new candidate re-opened the final stage"


def test_verify_keeps_the_policy_class_flags() -> None:
    from dsv4_tune.tuner.verify import grid_class

    for key in ((64, 128, 512, True, False, False), (128, 128, 0, False, False, True), (64, 128, 64, True, True, True)):
        assert grid_class(key).workload(4).key == key
    assert "has_sink" not in GridClass(64).to_json(), "default grids keep their hash"


def test_a_noisy_timing_batch_is_measured_again_and_each_plan_keeps_its_cleaner_samples(monkeypatch) -> None:
    """Bursts of interference put some rounds of some plans in a slow mode; a batch where a plan's
    p80 / p20 exceeds the limit is timed again, each plan keeping its faster measurement (by
    median), and the batch is flagged."""
    a, b = Plan.make("fused", BLOCK_H=16), Plan.make("fused", BLOCK_H=32)
    runs = [
        [[10.0] * 24, [10.0] * 12 + [20.0] * 12],  # b: half its samples slowed down
        [[11.0] * 24, [10.5] * 24],
    ]
    calls = []

    def fake_times(fns, *, rounds, reps, seed=0):
        calls.append(seed)
        return runs[len(calls) - 1]

    monkeypatch.setattr(sweep_mod, "interleaved_times", fake_times)
    monkeypatch.setattr(sweep_mod, "gpu_state", lambda: None)
    samples, flag = sweep_mod.time_plans(_NO_CASE, [a, b], True, rounds=3, reps=8)
    assert len(calls) == 2 and samples == [[10.0] * 24, [10.5] * 24] and flag == "noisy: re-timed"
    calls.clear()
    runs[0] = [[10.0] * 24, [10.0] * 20 + [10.4] * 4]  # quiet: one measurement, no flag
    assert sweep_mod.time_plans(_NO_CASE, [a, b], True, rounds=3, reps=8) == (runs[0], None) and calls == [0]
    calls.clear()
    runs[0], runs[1] = [[10.0] * 24, [10.0] * 12 + [20.0] * 12], [[10.0] * 24, [10.0] * 10 + [30.0] * 14]
    samples, flag = sweep_mod.time_plans(_NO_CASE, [a, b], True, rounds=3, reps=8)
    assert samples == runs[0] and flag == "noisy: re-timed, still noisy"
    calls.clear()  # slow all through its second slot: the faster (if noisier) first run stays
    runs[0], runs[1] = [[10.0] * 24, [10.0] * 12 + [20.0] * 12], [[10.0] * 24, [21.0] * 24]
    assert sweep_mod.time_plans(_NO_CASE, [a, b], True, rounds=3, reps=8)[0] == runs[0]


class _TimerOnly:
    """A case whose plans do nothing (the timing tests fake the timings)."""

    def timer(self, plan: Plan):
        return lambda: None


_NO_CASE = _TimerOnly()


def test_a_resumed_sweep_fills_the_identity_an_older_store_lacks(tmp_path: Path) -> None:
    """A sweep made before the SM count, FP8 flavour, PCI id and driver version were recorded gets
    them from the GPU that resumes it (same key: same GPU id and toolchain); recorded ones stay."""
    grid = Grid((GridClass(16, 64, 0, True, 64, 64),), (1,))
    meta = sweep_mod.sweep_meta(detect(), grid)
    store = Store(tmp_path / "s.db")
    sweep_id, _ = store.open_sweep(meta)
    store.db["sweeps"].update(sweep_id, {"multiprocessors": None, "fp8": None, "driver_version": "old"})
    assert store.open_sweep({**meta, "multiprocessors": 132, "fp8": "e4m3fn", "driver_version": "new"}) == (
        sweep_id, True)
    row = store.db["sweeps"].get(sweep_id)
    assert (row["multiprocessors"], row["fp8"], row["driver_version"]) == (132, "e4m3fn", "old")


def test_timed_cases_see_serving_lengths_not_a_lone_uniform_draw() -> None:
    """At T = 1 a uniform [0, topk] length made one draw decide a winner (a plan timed on 307 of 1152
    candidates won the class); timing sees full windows and extra counts in [topk / 2, topk]."""
    for t in (1, 2, 8):
        for seed in range(4):
            case = GridClass(16, 128, 1024, True, 64, 64).build_case(t, "cpu", seed=seed, with_ref=False)
            assert case.kw["topk_length"].tolist() == [128] * t
            assert all(512 <= n <= 1024 for n in case.kw["extra_topk_length"].tolist())
    assert GridClass(16, 128, 64, False, 64, 64).build_case(1, "cpu", with_ref=False).kw["topk_length"] is None


def test_window_ids_run_through_a_requests_pages() -> None:
    """A sliding window's ids (bench_decode --windows): consecutive positions, so consecutive slots
    inside a page and a page break at most every page_size ids, every slot in the pool."""
    gen = torch.Generator().manual_seed(3)
    for topk, page in ((128, 64), (128, 61), (64, 2)):
        sc = make_scope(2, 3, topk, page, fp8="e4m3fn", window=True, invalid_frac=0.0, topk_length="full", gen=gen)
        ids = sc.indices.reshape(-1, topk).long()
        assert int(ids.min()) >= 0 and int(ids.max()) < num_slots(sc.kv_cache)
        within = (ids[:, 1:] % page) != 0  # the next id's position is not the first of a page
        assert torch.equal((ids[:, 1:] - ids[:, :-1])[within], torch.ones_like(ids[:, 1:][within]))
        assert int((~within).sum(1).max()) <= topk // page + 1


def test_forgotten_workloads_are_measured_again_and_only_they(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    grid = Grid((GridClass(16, 64, 0, True, 64, 64), GridClass(16, 64, 0, False, 64, 64)), (1,))
    sweep_id = sweep_mod.run_sweep(store, grid, detect())
    before = {(r["workload"], r["stage"], r["plan"]): r["taken"] for r in store.measurements(sweep_id)}
    forgot = "h16-m64-x0-len10-sink1-T1"
    assert forgot in {w for w, _, _ in before}
    assert store.forget(sweep_id, [forgot]) == sum(w == forgot for w, _, _ in before)
    assert store.sweep(sweep_id)["status"] == "interrupted" and not store.has_winner(sweep_id, forgot)
    assert sweep_mod.run_sweep(store, grid, detect()) == sweep_id
    after = {(r["workload"], r["stage"], r["plan"]): r["taken"] for r in store.measurements(sweep_id)}
    assert {k: v for k, v in after.items() if k[0] != forgot} == {k: v for k, v in before.items() if k[0] != forgot}
    assert any(k[0] == forgot for k in after) and store.has_winner(sweep_id, forgot)
    assert store.sweep(sweep_id)["status"] == "done"


def test_a_variant_whose_kernels_changed_is_timed_again_and_the_rest_stands(tmp_path: Path) -> None:
    """A sweep records each variant's kernel version; resumed after one changed, it forgets that
    variant's rows (Store.forget_variant, also benchmarks/forget_variant.py), times it again and
    re-chooses every workload it was a candidate of; the other variants' rows stand."""
    store = Store(tmp_path / "s.db")
    grid = Grid((GridClass(16, 64, 0, False, 64, 64),), (1,))
    sweep_id = sweep_mod.run_sweep(store, grid, detect())
    assert json.loads(store.sweep(sweep_id)["kernels"]) == kernel_versions()
    op_row = "compress-head_dim512-mode_decode-ratio4-R1"  # an op's variant of the same name is not the decode one
    store.add_measurement(sweep_id, op_row, "coarse", Plan.make("fused", BLOCK_H=16, BLOCK_N=16, num_warps=4,
                                                                num_stages=1), "ok", median_us=1.0)
    before = {(r["workload"], r["stage"], r["plan"]): (r["variant"], r["id"]) for r in store.measurements(sweep_id)
              if r["workload"] != op_row}
    gone = sum(v == "fused" for v, _ in before.values())
    store.db.execute("update sweeps set kernels = ? where id = ?",
                     [json.dumps({**kernel_versions(), "fused": "an older one"}), sweep_id])
    assert sweep_mod.run_sweep(store, grid, detect()) == sweep_id
    assert gone and store.stale == {"fused": gone}
    after = {(r["workload"], r["stage"], r["plan"]): (r["variant"], r["id"]) for r in store.measurements(sweep_id)}
    kept = {k: v for k, v in before.items() if v[0] != "fused" and k[1] != "final"}
    assert {k: after[k] for k in kept} == kept, "the other variants' rows are not measured again"
    again = {k: v for k, v in after.items() if v[0] == "fused" and k[0] != op_row}
    assert again and all(v[1] > max(i for _, i in before.values()) for v in again.values()), "new rows"
    assert all(store.has_winner(sweep_id, w) for w, _, _ in before) and store.sweep(sweep_id)["status"] == "done"
    assert json.loads(store.sweep(sweep_id)["kernels"]) == kernel_versions()
    assert (op_row, "coarse") in {(r["workload"], r["stage"]) for r in store.measurements(sweep_id)}
    assert store.forget_variant(sweep_id, "fused", op="compress") == 1


def test_a_sweep_on_older_inputs_is_not_resumed_until_brought_up_to_date(tmp_path: Path) -> None:
    """A sweep records the version of its timed inputs, which keys it: a store timed on the old
    lengths (version 1, recorded as none) is not resumed by today's sweep, which would mix the two,
    until ``forget`` + ``mark_inputs`` (benchmarks/forget_length_workloads.py) bring it up to date."""
    store = Store(tmp_path / "s.db")
    grid = Grid((GridClass(16, 64, 0, False, 64, 64),), (1,))
    sweep_id = sweep_mod.run_sweep(store, grid, detect())
    row = store.sweep(sweep_id)
    assert row["inputs"] == INPUTS_VERSION > 1 and row["key"] == sweep_key(row)
    old = {**row, "inputs": None}
    store.db.execute("update sweeps set inputs = null, key = ? where id = ?", [sweep_key(old), sweep_id])
    assert sweep_key(old) != row["key"]
    meta = sweep_mod.sweep_meta(detect(), grid)
    assert store.open_sweep(meta)[1] is False, "a sweep on other inputs is not resumed"
    store.db.execute("delete from sweeps where id != ?", [sweep_id])
    store.mark_inputs(sweep_id, INPUTS_VERSION)
    assert store.open_sweep(meta) == (sweep_id, True)


def test_kernel_versions_follow_the_sources_each_variant_is_built_from(tmp_path: Path, monkeypatch) -> None:
    """A variant's version moves with the source of its kernels and of the kernel modules they import
    (the combine, which every decode kernel module imports, moves every decode variant's), and the
    other ops' stay."""
    import shutil

    from dsv4_tune.tuner import kernel_versions as kv

    def versions() -> dict[str, str]:
        for cached in (kv._definitions, kv._imports, kv.kernel_versions):
            cached.cache_clear()
        return kv.kernel_versions()

    shutil.copytree(kv.KERNELS_DIR, tmp_path / "kernels", ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(kv, "KERNELS_DIR", tmp_path / "kernels")
    try:
        before = versions()
        assert set(before) == set(VARIANTS) | {f"{op}:{v}" for op, spec in OPS.items() for v in spec.variants}
        combine = tmp_path / "kernels" / "combine.py"
        combine.write_text(combine.read_text() + "\n# a change\n")
        after = versions()
    finally:
        monkeypatch.undo()
        versions()
    assert {k for k in before if before[k] != after[k]} == set(VARIANTS)
    assert kv.variant_kernels("fused") == {"_sparse_decode_kernel"}
    assert kv.variant_kernels("ws_sm90") == {"_ws_decode_kernel", "_solo_decode_kernel", "_solo_pipe_decode_kernel",
                                            "_combine_kernel"}
