"""Serving integration (issue 21): every tuned op dispatched, the policy chosen in-process, the FP8
flavour of the GPU's arch by default and through the tuner."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import dsv4_tune
from dsv4_tune import Plan
from dsv4_tune.cache.store import Store
from dsv4_tune.policies import dispatcher as dispatcher_mod
from dsv4_tune.policies.baseline import BASELINE_FILE
from dsv4_tune.policies.dispatcher import Dispatcher, get_dispatcher, policy_scope, shipped_policies, use_policy
from dsv4_tune.policies.gpu import detect
from dsv4_tune.policies.schema import PolicyError, load_policy
from dsv4_tune.registry.ops import op_default_plan
from dsv4_tune.registry.variants import default_plan
from dsv4_tune.registry.workload import OpWorkload
from dsv4_tune.runtime import target
from dsv4_tune.serving import compressor as compressor_mod
from dsv4_tune.serving import decode as decode_mod
from dsv4_tune.serving import qk_norm as qk_norm_mod
from dsv4_tune.tuner import sweep as sweep_mod
from dsv4_tune.tuner.export import export_policy
from dsv4_tune.tuner.grid import Grid, GridClass
from dsv4_tune.tuner.op_cases import make_compress_inputs, make_qk_inputs
from tests.test_sparse_decode import make_case

H100 = load_policy(next(p for p in shipped_policies() if p.stem == "sm90-h100"))


@pytest.fixture(autouse=True)
def clean_dispatcher():
    dispatcher_mod.reset_dispatcher()
    yield
    dispatcher_mod.reset_dispatcher()


def _interpreter_policy(tmp_path: Path) -> Path:
    """The seed's rules as a policy of this CPU box (arch 'interpreter')."""
    data = json.loads(BASELINE_FILE.read_text())
    data["gpu"] = {"id": "interpreter", "arch": "interpreter"}
    path = tmp_path / "interpreter.json"
    path.write_text(json.dumps(data))
    return path


# ------------------------------------------------------------------ the other ops are dispatched
def _launched(monkeypatch, module, name: str) -> list[tuple]:
    seen: list[tuple] = []
    monkeypatch.setattr(module, name, lambda *a, **k: seen.append(a[:2]))
    return seen


@pytest.mark.parametrize(("params", "rows"), [(dict(ratio=4, head_dim=512, mode="decode"), 2),
                                              (dict(ratio=128, head_dim=512, mode="decode"), 4),
                                              (dict(ratio=4, head_dim=512, mode="prefill"), 2048)])
def test_the_compressor_takes_the_policy_plan(monkeypatch, params: dict, rows: int) -> None:
    w = OpWorkload.make("compress", rows, **params)
    d = Dispatcher(H100, "h100")
    want = d.lookup_op(w)
    assert want != op_default_plan(w), "the test needs a tuned plan that is not the default"
    x = make_compress_inputs(params, rows, "cpu")
    name = "launch_decode" if params["mode"] == "decode" else "launch_prefill"
    seen = _launched(monkeypatch, compressor_mod, name)
    fn = compressor_mod.compress_decode if params["mode"] == "decode" else compressor_mod.compress_prefill
    fn(*x.args, **x.kw, dispatcher=d)
    with policy_scope(d):
        fn(*x.args, **x.kw)
    assert seen == [(want.variant, want.as_dict())] * 2
    fn(*x.args, **x.kw, config=op_default_plan(w).as_dict(), variant=op_default_plan(w).variant)  # explicit: kept
    assert seen[-1] == (op_default_plan(w).variant, op_default_plan(w).as_dict())


def test_qk_norm_takes_the_policy_plan(monkeypatch) -> None:
    params = dict(h_q=64, h_k=1, head_dim_q=512, head_dim_k=512)
    w = OpWorkload.make("qk_norm", 4, **params)
    d = Dispatcher(H100, "h100")
    assert d.lookup_op(w) != op_default_plan(w)
    seen: list[dict] = []
    monkeypatch.setattr(qk_norm_mod, "launch_qk_norm", lambda *a: seen.append(a[6]))
    x = make_qk_inputs(params, 4, "cpu")
    qk_norm_mod.qk_norm(x.q, x.k, x.wq, x.wk, dispatcher=d)
    assert seen == [d.lookup_op(w).as_dict()]


# ------------------------------------------------------------------ the policy chosen in-process
def test_use_policy_and_policy_scope(tmp_path: Path, monkeypatch, device, gen) -> None:
    path = _interpreter_policy(tmp_path)
    chosen = dsv4_tune.use_policy(path)
    assert get_dispatcher() is chosen and chosen.policy is not None and chosen.source == str(path)
    case = make_case(device, gen, b=2, s_q=1, h=64, topk=128, x_topk=0, sink="finite")
    ran: list[Plan] = []  # the plans sparse_decode launches
    monkeypatch.setattr(decode_mod, "LAUNCHERS", {
        n: (lambda x, cfg, *a, _n=n, _f=f: ran.append(Plan.make(_n, cfg)) or _f(x, cfg, *a))
        for n, f in decode_mod.LAUNCHERS.items()})
    w = case.workload
    assert chosen.lookup(w) != default_plan(w), "the test needs a policy plan that is not the default"
    with dsv4_tune.policy_scope(None) as scoped:  # no policy inside: the built-in default
        assert get_dispatcher() is scoped and scoped.policy is None
        case.check(None)
    assert ran[-1] == default_plan(w)
    assert get_dispatcher() is chosen, "the scope ends with its block"
    case.check(None)
    assert ran[-1] == chosen.lookup(w)
    explicit = Dispatcher()
    out = torch.empty(2, 1, 64, 512, dtype=torch.bfloat16, device=device)
    lse = torch.empty(2, 64, 1, device=device)
    decode_mod.sparse_decode(case.q, case.main.kv_cache, case.main.indices, out=(out, lse), dispatcher=explicit,
                             **case.kw)
    assert ran[-1] == explicit.lookup(w)


def test_an_explicit_choice_that_cannot_be_used_raises(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="for arch sm90"):
        use_policy(H100)  # this box is the interpreter
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    with pytest.raises(PolicyError, match="not JSON"), policy_scope(bad):
        pass
    with pytest.raises(TypeError, match="expected a path"):
        use_policy(42)  # type: ignore[arg-type]
    assert use_policy(None).policy is None and get_dispatcher().policy is None


# ------------------------------------------------------------------ FP8 flavour of the arch
def test_the_default_flavour_is_the_arch_s(monkeypatch) -> None:
    assert target.device_flavour(torch.zeros(1)) == "e4m3fn"
    monkeypatch.setattr(target, "_FLAVOUR", {})
    fake = SimpleNamespace(device=torch.device("cuda", 0))
    monkeypatch.setattr(torch.version, "hip", "6.3")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(gcnArchName="gfx942:sramecc+"))
    assert target.device_flavour(fake) == "e4m3fnuz"
    monkeypatch.setattr(target, "_FLAVOUR", {})
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(gcnArchName="gfx950"))
    assert target.device_flavour(fake) == "e4m3fn"


@pytest.mark.parametrize("fp8", ["e4m3fn", "e4m3fnuz"])
def test_a_sweep_measures_pools_of_its_flavour_and_the_policy_records_it(tmp_path: Path, fp8: str) -> None:
    grid = Grid((GridClass(16, 64, 64, True, 64, 64),), (1,))
    store = Store(tmp_path / "s.db")
    sweep_id = sweep_mod.run_sweep(store, grid, detect(), fp8=fp8)
    rows = store.measurements(sweep_id, "coarse")
    assert rows and all(r["status"] == "ok" for r in rows), [r["error"] for r in rows if r["status"] != "ok"]
    policy, sweep = export_policy(store, sweep_id, "test")
    assert sweep["fp8"] == fp8 and policy.gpu.fp8 == fp8
    again = sweep_mod.run_sweep(store, grid, detect(), fp8="e4m3fnuz" if fp8 == "e4m3fn" else "e4m3fn")
    assert again != sweep_id, "a sweep of the other flavour is another sweep"


def test_a_case_of_the_wrong_flavour_fails_its_check() -> None:
    """The flavour reaches the kernels: pools written as e4m3fnuz and read as e4m3fn mismatch."""
    case = GridClass(16, 64, 0, True, 64, 64).build_case(1, "cpu", fp8="e4m3fnuz")
    plan = Plan.make("fused", BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=1)
    assert case.check(plan)[0] == "ok"
    case.fp8 = "e4m3fn"
    assert case.check(plan)[0] == "mismatch"



# ------------------------------------------------------------------ GPU identity
def test_gpu_ids_tell_gh200_and_pcie_cards_apart() -> None:
    from dsv4_tune.registry.gpus import gpu_id

    assert gpu_id("sm90", "NVIDIA GH200 480GB", 132) == "sm90-gh200"
    assert gpu_id("sm90", "NVIDIA H200", 132) == "sm90-h200"
    assert gpu_id("sm90", "NVIDIA H100 PCIe", 114) == "sm90-h100-pcie"
    assert gpu_id("sm90", "NVIDIA H100 80GB HBM3", 132) == "sm90-h100"
    assert gpu_id("sm90", "NVIDIA H800 PCIe", 114) == "sm90-h800-pcie"


def test_a_same_arch_fallback_says_what_answered_and_how_far_to_trust_it() -> None:
    from dsv4_tune.policies.gpu import GpuInfo

    d, notes = dispatcher_mod.select_policy(GpuInfo("sm90", "NVIDIA H200", 132, "cuda"))
    assert d.policy is not None and d.policy.gpu.id == "sm90-h200", "its own shipped policy"
    assert not [n for n in notes if "no policy for GPU id" in n]
    # 114 SMs: the H100 and H200 policies (132 each) are equally near; the name decides
    d, notes = dispatcher_mod.select_policy(GpuInfo("sm90", "NVIDIA H100 PCIe", 114, "cuda"))
    assert d.policy is not None and d.policy.gpu.id == "sm90-h100"
    (note,) = [n for n in notes if "no policy for GPU id" in n]
    assert "sm90-h100-pcie" in note and "sm90-h100.json" in note and "verify-policy" in note and "timings" in note


def test_a_sweep_records_the_gpu_it_ran_on_and_export_keeps_it() -> None:
    from dsv4_tune.policies.gpu import GpuInfo
    from dsv4_tune.tuner.select import build_policy

    grid = Grid((GridClass(16, 64, 0, True, 64, 64),), (1,))
    gpu = GpuInfo("gfx942", "AMD Instinct MI300X", 304, "hip")
    meta = sweep_mod.sweep_meta(gpu, grid)
    assert meta["multiprocessors"] == 304 and meta["fp8"] == "e4m3fnuz" and meta["driver"]
    plan = Plan.make("fused", BLOCK_H=16, BLOCK_N=64, num_warps=4, num_stages=1)
    winners = [{"workload": "h16-m64-x0-len10-sink1-T1", "winner_plan": plan, "eager_plan": None, "margin": None,
                "median_us": 1.0, "runner_up": None}]
    sweep = {**meta, "id": "x-1", "started": "2026-12-01T00:00:00+00:00", "finished": None}
    policy = build_policy(grid, winners, sweep, "test")
    assert policy.gpu.multiprocessors == 304 and policy.gpu.fp8 == "e4m3fnuz"


# ------------------------------------------------------------------ memory
@pytest.mark.parametrize("mode", ["decode", "prefill"])
def test_the_split_compressor_takes_its_scratch_from_the_workspace(mode: str) -> None:
    from dsv4_tune.runtime.workspace import Workspace

    rows = 3 if mode == "decode" else 40
    w = OpWorkload.make("compress", rows, ratio=128, head_dim=512, mode=mode)
    plan = op_default_plan(w)
    assert plan.variant == "split"
    x = make_compress_inputs(w.params_dict, rows, "cpu", boundary_every=1)
    fn = compressor_mod.compress_decode if mode == "decode" else compressor_mod.compress_prefill
    ws = Workspace()
    fn(*x.args, **x.kw, config=plan.as_dict(), variant=plan.variant, workspace=ws)
    (scratch,) = ws.buffers()
    fn(*x.args, **x.kw, config=plan.as_dict(), variant=plan.variant, workspace=ws)
    assert len(ws.buffers()) == 1 and ws.buffers()[0] is scratch, "the second step allocates nothing"


@pytest.mark.parametrize("plan", [
    Plan.make("fused_splitk", BLOCK_H=16, BLOCK_N=32, num_warps=4, num_stages=1, SPLIT_K=3, COMBINE_BLOCK_H=8,
              combine_warps=4),
    Plan.make("fused_splitk_inline", BLOCK_H=16, BLOCK_N=32, num_warps=4, num_stages=1, SPLIT_K=2),
    Plan.make("gather_attend", BLOCK_H=16, BLOCK_N=32, num_warps=4, num_stages=1, ONE_LAUNCH=1, BLOCK_TK=64,
              gather_warps=4, SPLIT_K=2, COMBINE_BLOCK_H=8, combine_warps=4),
], ids=lambda p: p.variant)
def test_the_scratch_registry_names_what_the_launchers_take(plan: Plan, device, gen) -> None:
    from dsv4_tune.registry.scratch import buffer_bytes, plan_buffers
    from dsv4_tune.runtime.workspace import Workspace

    case = make_case(device, gen, b=3, s_q=1, h=32, topk=64, x_topk=32, sink="finite")
    ws = Workspace()
    case.run(plan, ws)
    want = plan_buffers(plan, case.workload)
    assert want and ws.nbytes() == sum(map(buffer_bytes, want.values()))
    assert sorted(b.numel() for b in ws.buffers()) == sorted(
        math.prod(shape) for shape, _ in want.values())


def _split_policy(tmp_path: Path) -> Path:
    """The H100 policy with split plans (runnable here) for h64's 128-candidate classes: 8 splits of
    16 candidates up to T = 2, whose partials outgrow T = 4's 2 splits, then 2 (the shipped policies'
    small-batch plans move with every sweep, and their ``ws_sm90`` plans cannot run here)."""
    data = json.loads(next(p for p in shipped_policies() if p.stem == "sm90-h100").read_text())
    cfg = {"BLOCK_H": 16, "COMBINE_BLOCK_H": 8, "combine_warps": 4, "num_stages": 1, "num_warps": 4}
    for c in data["classes"]:
        if (c["h_q"], c["topk_main"], c["topk_extra"]) == (64, 128, 0):
            c["segments"] = [{"margin": 0.0, "max_tokens": m, "plan": {"variant": "fused_splitk",
                                                                       "config": {**cfg, "SPLIT_K": k, "BLOCK_N": n}}}
                             for m, k, n in ((2, 8, 16), (None, 2, 32))]
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(data))
    return path


def test_a_reserved_workspace_never_grows(tmp_path: Path, device, gen) -> None:
    """The scratch query's buffers, reserved up front, hold every later step of the policy's plans up
    to the batch it was asked for, the largest at a segment's end below it (T = 2); smaller steps reuse
    the same buffers."""
    from dsv4_tune.serving.memory import Workspace, scratch_buffers, scratch_bytes

    d = Dispatcher(load_policy(_split_policy(tmp_path)), "h100")
    cases = [make_case(device, gen, b=t, s_q=1, h=64, topk=128, x_topk=0, sink="finite") for t in (4, 2, 3)]
    buffers = scratch_buffers(4, dispatcher=d, workloads=[cases[0].workload])
    assert scratch_bytes(buffers) > 0, "these plans split"
    ws = Workspace()
    held = ws.reserve(buffers, device)
    assert held == scratch_bytes(buffers)
    kept = ws.buffers()
    for case in cases:
        out = torch.full((case.q.shape[0], 1, 64, 512), float("nan"), dtype=torch.bfloat16, device=device)
        lse = torch.full((case.q.shape[0], 64, 1), float("nan"), device=device)
        decode_mod.sparse_decode(case.q, case.main.kv_cache, case.main.indices, out=(out, lse), workspace=ws,
                                 dispatcher=d, **case.kw)
        assert ws.nbytes() == held and all(a is b for a, b in zip(ws.buffers(), kept, strict=True))
    ws2 = Workspace()  # without the reservation: grows once per doubling, and keeps what it outgrew
    for case in reversed(cases):
        case.run(d.lookup(case.workload), ws2)
    assert ws2.nbytes() >= held


def test_one_workspace_per_device_and_stream() -> None:
    from dsv4_tune.serving.memory import stream_workspace

    a, b = stream_workspace("cuda:0", 11), stream_workspace("cuda:0", 12)
    assert a is not b and stream_workspace("cuda:0", 11) is a and stream_workspace("cuda:1", 11) is not a
    assert stream_workspace("cpu") is stream_workspace("cpu")


def test_detect_reads_the_device_s_pci_id_and_the_driver_falls_back(monkeypatch, tmp_path) -> None:
    from dsv4_tune.policies import gpu as gpu_mod

    monkeypatch.setattr(gpu_mod, "interpreting", lambda: False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "hip", None)
    # torch's pci_device_id is the slot on the bus; the product id is the sysfs file of that address
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(
        major=9, minor=0, name="NVIDIA H200", multi_processor_count=132, pci_domain_id=0, pci_bus_id=0x1b,
        pci_device_id=6, gcnArchName=""))
    monkeypatch.setattr(gpu_mod, "PCI_DEVICES", tmp_path)
    assert gpu_mod.detect().pci_device_id == 0, "no sysfs entry: unknown, not the slot"
    (tmp_path / "0000:1b:06.0").mkdir()
    (tmp_path / "0000:1b:06.0" / "device").write_text("0x2335\n")
    info = gpu_mod.detect()
    assert info.id == "sm90-h200" and info.pci_device_id == 0x2335 and info.fp8 == "e4m3fn"
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    monkeypatch.setattr(gpu_mod.ctypes, "CDLL", lambda name: (_ for _ in ()).throw(OSError(name)))
    assert gpu_mod.driver_version() == "cuda 12.8", "no NVML: the runtime torch was built with"


def test_prefill_scratch_is_counted_only_when_asked_for() -> None:
    from dsv4_tune.serving.memory import scratch_buffers

    d = Dispatcher(H100, "h100")
    prefill = OpWorkload.make("compress", 1, ratio=128, head_dim=512, mode="prefill")
    assert scratch_buffers(256, dispatcher=d, workloads=[prefill]) == {}
    assert scratch_buffers(256, max_prefill_tokens=8192, dispatcher=d, workloads=[prefill])["compress_pooled"] == (
        (8192, 512), "float32")


def test_outgrown_buffers_are_kept_until_released() -> None:
    from dsv4_tune.runtime.workspace import Workspace

    ws = Workspace()
    ws.get("part_o", (4,), torch.float32, torch.device("cpu"))
    ws.get("part_o", (5,), torch.float32, torch.device("cpu"))  # grows to 8, keeps the 4
    assert ws.nbytes() == (4 + 8) * 4 and ws.release_outgrown() == 16 and ws.nbytes() == 32
    assert ws.get("part_o", (3, 2), torch.float32, torch.device("cpu")).shape == (3, 2) and ws.nbytes() == 32


def test_a_scope_of_the_same_file_reuses_its_dispatcher(tmp_path: Path) -> None:
    path = _interpreter_policy(tmp_path)
    with policy_scope(path) as a, policy_scope(path) as b:
        assert a is b, "the same tables and replays, scope after scope"


def test_the_qk_norm_fake_is_contiguous_like_the_op() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    import dsv4_tune.serving.torch_ops  # noqa: F401

    with FakeTensorMode():
        q = torch.empty(16, 4, 512, dtype=torch.bfloat16).transpose(0, 1).contiguous().transpose(0, 1)
        qn, _ = torch.ops.dsv4_tune.qk_norm(q, q[:, :1], None, None)
        assert qn.is_contiguous()
