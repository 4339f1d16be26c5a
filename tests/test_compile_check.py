"""Cross-compilation for sm90 / gfx942 / gfx950 without a GPU, and the per-arch rules it yields."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from dsv4_tune import Plan, Workload
from dsv4_tune.registry import arch as arch_mod
from dsv4_tune.registry.launches import kernel_key, plan_kernels
from dsv4_tune.registry.variants import VARIANTS, plan_problems
from dsv4_tune.tuner.compile_check import run_check, with_problems, write_rules
from dsv4_tune.tuner.crosscompile import problems_of

W = Workload(1, 128, 128, 1024)


def test_fp8_flavour_follows_the_arch() -> None:
    plan = VARIANTS["fused"].default(W)
    flavours = {arch: dict(plan_kernels(plan, W, arch)[0][1])["FP8"] for arch in ("sm90", "gfx942", "gfx950")}
    assert flavours == {"sm90": "e4m3fn", "gfx942": "e4m3fnuz", "gfx950": "e4m3fn"}


def test_a_plan_lists_every_kernel_it_launches() -> None:
    gta = Plan.make("gather_attend", VARIANTS["gather_attend"].default(W).as_dict(), ONE_LAUNCH=0, SPLIT_K=2,
                    COMBINE_BLOCK_H=8, combine_warps=4)
    names = [k[0] for k in plan_kernels(gta, W, "gfx950")]
    assert names == ["_gather_dequant_kernel", "_gathered_attention_kernel", "_combine_kernel"]


def test_oversized_config_exceeds_lds_on_gfx942_and_is_pruned(tmp_path, monkeypatch) -> None:
    # Far outside the tuned space: 4 stages of 128-candidate tiles, 64 heads.
    launch = ("_gathered_attention_kernel",
              (("BLOCK_H", 64), ("BLOCK_N", 128), ("DOT", "bf16"), ("HAS_SINK", True), ("SPLIT", False)), 8, 4)
    (row,) = run_check([("gfx942", launch)], jobs=1)
    assert row["status"] == "ok" and row["shared"] > 64 * 1024
    problems = problems_of(row)
    assert any("shared memory" in p and "gfx942" in p for p in problems)
    # A rule recorded for a kernel of a plan in the space prunes that plan on that arch only.
    plan = VARIANTS["gather_attend"].default(W)
    bad_launch = plan_kernels(plan, W, "gfx942")[-1]
    rules = tmp_path / "rules.json"
    write_rules([{**row, "key": kernel_key("gfx942", bad_launch), "problems": problems}], rules)
    monkeypatch.setattr(arch_mod, "ARCH_RULES_FILE", rules)
    arch_mod.arch_rules.cache_clear()
    try:
        assert any("shared memory" in p for p in plan_problems(W, plan, "gfx942"))
        assert plan_problems(W, plan, "gfx950") == [] and plan_problems(W, plan) == []
        assert plan not in VARIANTS["gather_attend"].space(W, "gfx942")
        assert plan in VARIANTS["gather_attend"].space(W, "gfx950")
    finally:
        arch_mod.arch_rules.cache_clear()


def test_a_compile_failure_is_a_row_and_the_check_goes_on() -> None:
    broken = ("gfx950", ("_combine_kernel", (("BLOCK_H", 3), ("HAS_SINK", True)), 4, 1))  # arange of 3
    fine = ("gfx950", ("_combine_kernel", (("BLOCK_H", 8), ("HAS_SINK", True)), 4, 1))
    rows = {r["key"]: r for r in with_problems(run_check([broken, fine], jobs=2))}
    bad, good = rows[kernel_key(*broken)], rows[kernel_key(*fine)]
    assert bad["status"] == "compile_error" and "power of 2" in bad["error"]
    assert bad["problems"] and "does not compile for gfx950" in bad["problems"][0]
    assert good["status"] == "ok" and good["regs"] and good["problems"] == []


@pytest.mark.parametrize("path", sorted(arch_mod.ARCH_RULES_FILE.parent.glob("arch_rules.json")))
def test_shipped_rules_file_is_well_formed(path) -> None:
    data = json.loads(path.read_text())
    assert set(data["bad_kernels"]) <= {"sm90", "gfx942", "gfx950"}
    for arch, kernels in data["bad_kernels"].items():
        assert all(k.startswith(f"{arch}:") and v for k, v in kernels.items())


def test_pdl_split_k_compiles_griddepcontrol_for_sm90_only_where_on() -> None:
    """fused_splitk with PDL = 1: the split kernel lets its dependents go and the combine waits
    (the PTX instructions); the same plan without it has neither.  Compiled in a fresh process
    (kernels imported compiled, not interpreted)."""
    script = """
import json
from dsv4_tune import Plan, Workload
from dsv4_tune.tuner.crosscompile import KernelSpec, build
from dsv4_tune.registry.launches import plan_kernels
w = Workload(1, 64, 128, 64, True, True, True)
plain = Plan.make("fused_splitk", BLOCK_H=16, BLOCK_N=32, num_warps=4, num_stages=1, SPLIT_K=2,
                  COMBINE_BLOCK_H=8, combine_warps=4)
out = {}
for plan, on in ((plain, 0), (Plan.make("fused_splitk", plain.as_dict(), PDL=1), 1)):
    for launch in plan_kernels(plan, w, "sm90"):
        ptx = build(KernelSpec("sm90", launch)).asm["ptx"]
        out[f"{launch[0]}:{on}"] = [i for i in ("launch_dependents", "wait") if "griddepcontrol." + i in ptx]
print(json.dumps(out))
"""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout.strip().splitlines()[-1]) == {
        "_sparse_decode_kernel:0": [], "_combine_kernel:0": [],
        "_sparse_decode_kernel:1": ["launch_dependents"], "_combine_kernel:1": ["wait"],
    }


def test_rules_record_their_toolchain_and_a_check_replaces_only_its_own(tmp_path) -> None:
    """sm90's rules come from CI's Triton and the GPU machine's: each rule names the toolchain that
    found it, and a check by one toolchain keeps the other's rules on the same kernel."""
    from dsv4_tune.tuner.compile_check import rule_toolchain

    key = "sm90:_sparse_decode_kernel[BLOCK_H=64]w8s1"

    def row(toolchain: str, problems: list[str], status: str = "ok") -> dict:
        return {"arch": "sm90", "key": key, "toolchain": toolchain, "status": status, "problems": problems}

    path = tmp_path / "rules.json"
    write_rules([row("triton 3.9.0", ["spills 300 B on sm90 (budget 256)"])], path)
    write_rules([row("triton 3.6.0", ["spills 812 B on sm90 (budget 256)"])], path)
    data = json.loads(path.read_text())
    rules = data["bad_kernels"]["sm90"][key]
    assert rules == ["spills 300 B on sm90 (budget 256) [triton 3.9.0]",
                     "spills 812 B on sm90 (budget 256) [triton 3.6.0]"]
    assert data["toolchains"] == ["triton 3.6.0", "triton 3.9.0"] and rule_toolchain(rules[1]) == "triton 3.6.0"
    write_rules([row("triton 3.9.0", [])], path)  # 3.9 now finds it fine: 3.6's rule stays
    assert json.loads(path.read_text())["bad_kernels"]["sm90"][key] == [rules[1]]
    write_rules([row("triton 3.6.0", [], "skipped")], path)  # a kernel 3.6 skips changes nothing
    assert json.loads(path.read_text())["bad_kernels"]["sm90"][key] == [rules[1]]
    write_rules([row("triton 3.6.0", [])], path)
    assert json.loads(path.read_text())["bad_kernels"] == {}


def test_shipped_rules_name_their_toolchain() -> None:
    from dsv4_tune.tuner.compile_check import rule_toolchain

    data = json.loads(arch_mod.ARCH_RULES_FILE.read_text())
    found = {rule_toolchain(p) for kernels in data["bad_kernels"].values() for ps in kernels.values() for p in ps}
    assert found and None not in found and found <= set(data["toolchains"])


def test_a_shipped_plan_whose_kernel_became_unfit_fails_the_policy_check(monkeypatch) -> None:
    """compile-check --policy exits 1 and names the kernel when one of a shipped plan's kernels now
    spills past the budget (a kernel change the rules file does not know of yet); fine rows pass."""
    from typer.testing import CliRunner

    from dsv4_tune.cli import app
    from dsv4_tune.policies.dispatcher import shipped_policies
    from dsv4_tune.tuner import compile_check as cc

    gfx950 = next(p for p in shipped_policies() if p.stem.startswith("gfx950"))

    def fake(targets, jobs, on_row=None):
        rows = [{"arch": a, "kernel": spec[0], "key": kernel_key(a, spec), "status": "ok", "error": None,
                 "toolchain": "fake", "regs": 128, "sgprs": None, "spills": 0, "shared": 1024, "occupancy": 8}
                for a, spec in targets]
        return rows

    monkeypatch.setattr(cc, "run_check", fake)
    ok = CliRunner().invoke(app, ["compile-check", "--policy", str(gfx950), "--json"])
    assert ok.exit_code == 0 and json.loads(ok.stdout)["unfit"] == [], ok.output

    def spilling(targets, jobs, on_row=None):
        rows = fake(targets, jobs)
        rows[0]["spills"] = 1000
        return rows

    monkeypatch.setattr(cc, "run_check", spilling)
    bad = CliRunner().invoke(app, ["compile-check", "--policy", str(gfx950)], terminal_width=200)
    assert bad.exit_code == 1 and "UNFIT" in bad.stdout and "spills 1000" in bad.stdout, bad.output


def test_ptxas_report_reads_registers_spills_and_serialized_wgmma() -> None:
    """The note ptxas gives when it serializes every wgmma (a silent 10-20% on the warp-specialized
    kernel's pipelined mode) is read as such; its absence, and output that says nothing, are not."""
    from dsv4_tune.tuner.crosscompile import ptxas_report

    plain = ("ptxas info    : Function properties for k\n    0 bytes stack frame, 12 bytes spill stores, "
             "16 bytes spill loads\nptxas info    : Used 168 registers, used 4 barriers\n")
    serialized = plain + ("ptxas info    : (C7513) Potential Performance Loss: wgmma.mma_async instructions "
                          "are serialized due to non wgmma instructions defining input registers\n")
    # A wgmma_wait(N > 0) whose pending groups cross a loop's back edge (ptxas 12.8, Triton 3.6).
    reading = plain + ("ptxas info    : (C7514) Potential Performance Loss: wgmma.mma_async instructions are "
                       "serialized due to non wgmma instructions reading accumulator registers of  a wgmma "
                       "between start and end of the pipeline stage in the function 'k'\n")
    other = plain + "ptxas info    : (C7514) Potential Performance Loss: something else\n"
    assert ptxas_report(plain) == (168, 12, False)
    assert ptxas_report(serialized) == (168, 12, True)
    assert ptxas_report(reading) == (168, 12, True)
    assert ptxas_report(other) == (168, 12, False)
    assert ptxas_report("") == (None, None, False)


def test_compile_check_names_kernels_whose_wgmma_ptxas_serialized(monkeypatch) -> None:
    from typer.testing import CliRunner

    from dsv4_tune.cli import app
    from dsv4_tune.policies.dispatcher import shipped_policies
    from dsv4_tune.tuner import compile_check as cc

    sm90 = next(p for p in shipped_policies() if p.stem.startswith("sm90"))

    def fake(targets, jobs, on_row=None):
        return [{"arch": a, "kernel": spec[0], "key": kernel_key(a, spec), "status": "ok", "error": None,
                 "toolchain": "fake", "regs": 168, "sgprs": None, "spills": 0, "shared": 1024, "occupancy": 12,
                 "wgmma_serialized": i == 0} for i, (a, spec) in enumerate(targets)]

    monkeypatch.setattr(cc, "run_check", fake)
    out = CliRunner().invoke(app, ["compile-check", "--policy", str(sm90), "--json"])
    assert out.exit_code == 0, out.output
    assert len(json.loads(out.stdout)["wgmma_serialized"]) == 1
    text = CliRunner().invoke(app, ["compile-check", "--policy", str(sm90)], terminal_width=200)
    said = "1 kernels have every wgmma serialized by ptxas (its note C7513"
    assert text.exit_code == 0 and said in text.stdout, text.output
