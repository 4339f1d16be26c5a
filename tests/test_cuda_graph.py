"""A decode step captured in a CUDA graph replays correctly with new inputs (GPU only)."""

from __future__ import annotations

import pytest
import torch

from dsv4_tune import Plan, sparse_decode
from dsv4_tune.registry.variants import VARIANTS
from dsv4_tune.runtime.workspace import Workspace
from dsv4_tune.serving.variants import variant_problem
from tests.helpers import record_launched_variants
from tests.test_sparse_decode import check_against_reference, make_case

pytestmark = [pytest.mark.gpu, pytest.mark.gpu_only]


def _plans(case) -> list[Plan]:
    w = case.workload
    gta = VARIANTS["gather_attend"].default(w).as_dict()
    plans = [v.default(w) for v in VARIANTS.values()] + [
        Plan.make("gather_attend", gta, SPLIT_K=2, COMBINE_BLOCK_H=8, combine_warps=4),
        Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=1, PIPE=1, SPLIT_K=2, COMBINE_BLOCK_H=8, combine_warps=4),
    ]
    return [p for p in plans if not variant_problem(p.variant, case.q.device)]


def test_capture_and_replay_with_new_inputs(device, gen) -> None:
    case = make_case(device, gen, b=4, s_q=1, h=64, topk=128, x_topk=512, x_page=64, sink="finite")
    fresh = make_case(device, gen, b=4, s_q=1, h=64, topk=128, x_topk=512, x_page=64, sink="finite")
    for plan in _plans(case):
        ws = Workspace()
        out = torch.empty_like(case.ref[0], dtype=torch.bfloat16)
        lse = torch.empty_like(case.ref[1])

        def step(plan=plan, ws=ws, out=out, lse=lse):
            sparse_decode(case.q, case.main.kv_cache, case.main.indices, plan=plan, workspace=ws,
                          out=(out, lse), **case.kw)

        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            step()  # warm: compiles and allocates the workspace
        torch.cuda.current_stream().wait_stream(stream)
        allocated = ws.nbytes()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        assert ws.nbytes() == allocated, "capture must not allocate workspace"
        graph.replay()
        torch.cuda.synchronize()
        check_against_reference(f"graph {plan}", out, lse, *case.ref)
        # New inputs copied into the captured tensors; replay must follow them.
        saved = [t.clone() for t in (case.q, case.main.indices, case.extra.indices, case.sink,
                                     case.main.topk_length, case.extra.topk_length)]
        case.q.copy_(fresh.q)
        case.main.indices.copy_(fresh.main.indices)
        case.extra.indices.copy_(fresh.extra.indices)
        case.sink.copy_(fresh.sink)
        case.main.topk_length.copy_(fresh.main.topk_length)
        case.extra.topk_length.copy_(fresh.extra.topk_length)
        main_pool, extra_pool = case.main.kv_cache.clone(), case.extra.kv_cache.clone()
        case.main.kv_cache.copy_(fresh.main.kv_cache)
        case.extra.kv_cache.copy_(fresh.extra.kv_cache)
        out.fill_(float("nan"))
        graph.replay()
        torch.cuda.synchronize()
        check_against_reference(f"graph replay {plan}", out, lse, *fresh.ref)
        for dst, src in zip((case.q, case.main.indices, case.extra.indices, case.sink,
                             case.main.topk_length, case.extra.topk_length), saved, strict=True):
            dst.copy_(src)
        case.main.kv_cache.copy_(main_pool)
        case.extra.kv_cache.copy_(extra_pool)


def test_a_captured_dispatched_call_takes_the_graph_plan(monkeypatch, device, gen) -> None:
    import dsv4_tune.serving.decode as decode_mod
    from dsv4_tune.policies import dispatcher as dispatch_mod
    from tests.test_policies import eager_policy

    ran = record_launched_variants(monkeypatch, decode_mod)
    monkeypatch.setattr(dispatch_mod, "_DISPATCHER", dispatch_mod.Dispatcher(eager_policy()))
    case = make_case(device, gen, b=2, s_q=1, h=16, topk=64, sink="finite")
    ws = Workspace()
    out = (torch.empty_like(case.ref[0], dtype=torch.bfloat16), torch.empty_like(case.ref[1]))

    def step(plan=None):
        sparse_decode(case.q, case.main.kv_cache, case.main.indices, workspace=ws, out=out, plan=plan, **case.kw)

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()  # eager: the eager plan, and the graph plan once (compiled and allocated here)
        ran.clear()
        step()  # eager again: replayed, or the eager plan once more
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    allocated = ws.nbytes()
    with torch.cuda.graph(graph):
        step()
    assert ws.nbytes() == allocated, "capture must not allocate workspace"
    graph.replay()
    torch.cuda.synchronize()
    assert ran in (["fused_splitk"], ["fused", "fused_splitk"]), ran
    check_against_reference("captured dispatched call", *out, *case.ref)
    out[0].fill_(float("nan"))
    ran.clear()
    step()  # eager after the capture: the eager plan's replay, not the captured kind's
    assert ran == [], ran
    check_against_reference("eager call after a capture", *out, *case.ref)


def test_replays_ask_about_capture_only_where_the_plans_differ(monkeypatch, device, gen) -> None:
    import dsv4_tune.serving.decode as decode_mod
    from dsv4_tune.policies import dispatcher as dispatch_mod
    from tests.test_policies import eager_policy

    # T = 1 has an eager plan besides its graph plan; T = 2 has one plan for both.
    policy = eager_policy()
    cls = policy.classes[0]
    split = cls.segments[0].model_copy(update={"max_tokens": 1})
    plain = cls.segments[0].model_copy(update={"eager_plan": None})
    policy = policy.model_copy(update={"classes": [cls.model_copy(update={"segments": [split, plain]})]})
    monkeypatch.setattr(dispatch_mod, "_DISPATCHER", dispatch_mod.Dispatcher(policy))
    asked: list[bool] = []
    real = decode_mod._outside_graph
    monkeypatch.setattr(decode_mod, "_outside_graph", lambda q: asked.append(real(q)) or asked[-1])
    ran = record_launched_variants(monkeypatch, decode_mod)
    for b, want_asked, want_ran in ((1, [True] * 3, ["fused_splitk", "fused"]), (2, [], ["fused_splitk"])):
        case = make_case(device, gen, b=b, s_q=1, h=16, topk=64, sink="finite")
        ws = Workspace()
        asked.clear()
        ran.clear()
        for _ in range(3):  # the first call records, the others replay
            o, lse = sparse_decode(case.q, case.main.kv_cache, case.main.indices, workspace=ws, **case.kw)
            check_against_reference(f"T={b}", o, lse, *case.ref)
        assert asked == want_asked and ran == want_ran, (b, asked, ran)


def test_in_graph_timing_replays_its_rounds_once_a_sample(device) -> None:
    """``time_in_graph`` captures its rounds once and replays them: each sample runs the call once a
    round (a counter says so; the flushes-only graph runs it never), one sample a replay."""
    from dsv4_tune.tuner.measure import time_in_graph

    counter = torch.zeros(1, dtype=torch.int64, device=device)
    t = time_in_graph(lambda: counter.add_(1), calls=4, replays=3, warmup=2, flush_bytes=2**20)
    assert t is not None and t["graph"] and t["reps"] == 3
    assert int(counter.item()) == 2 + 4 + 3 * 4  # the warm-up, the upload replay, 3 replays of 4 rounds
    assert t["p20_us"] <= t["median_us"] <= t["p80_us"] < 1e3


def test_interleaved_in_graph_times_each_call_in_every_round(device) -> None:
    """``interleaved_in_graph`` gives each function a round's samples in each round, and runs each
    exactly as often as its own in-graph timings do (warm-up, upload replay, timed replays)."""
    from dsv4_tune.tuner.measure import interleaved_in_graph

    counters = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(2)]
    samples = interleaved_in_graph([lambda c=c: c.add_(1) for c in counters], rounds=2, replays=3)
    assert [len(s) for s in samples] == [6, 6]
    assert all(0 < x < 1e3 for s in samples for x in s), samples
    assert [int(c.item()) for c in counters] == [2 * (1 + 20 + 3 * 20)] * 2
