"""Sparse decode attention variants against the reference, with poisoned inputs and outputs."""

from __future__ import annotations

import random

import pytest
import torch

from dsv4_tune import Plan, sparse_decode
from dsv4_tune.kernels.reference import sparse_decode_ref
from dsv4_tune.registry.buckets import token_ranges
from dsv4_tune.registry.variants import VARIANTS, without_combine
from dsv4_tune.runtime.workspace import Workspace
from dsv4_tune.serving.arguments import DecodeInputs
from dsv4_tune.serving.decode import workload_of
from dsv4_tune.serving.variants import LAUNCHERS, run_gather_attend, variant_problem
from dsv4_tune.tuner.inputs import Scope, make_query, make_scope, make_sink
from dsv4_tune.tuner.tolerance import decode_mismatch

pytestmark = pytest.mark.gpu

SM_SCALE = 512**-0.55  # deliberately not the model's 512^-0.5


def check_against_reference(label: str, out, lse, ref_out, ref_lse) -> None:
    problem = decode_mismatch(out, lse, ref_out, ref_lse)
    assert problem is None, f"{label}: {problem}"


class Case:
    """One decode problem: inputs, its reference result, and a runner for any plan."""

    def __init__(self, q: torch.Tensor, main: Scope, extra: Scope | None, sink: torch.Tensor | None) -> None:
        self.q, self.main, self.extra, self.sink = q, main, extra, sink
        self.kw = dict(
            topk_length=main.topk_length,
            extra_k_cache=extra.kv_cache if extra else None,
            extra_indices=extra.indices if extra else None,
            extra_topk_length=extra.topk_length if extra else None,
            attn_sink=sink,
            sm_scale=SM_SCALE,
        )
        self.ref = sparse_decode_ref(q, main.kv_cache, main.indices, fp8="e4m3fn", out_dtype=torch.float32,
                                     **self.kw)
        self.workload = workload_of(q, main.indices, main.topk_length, self.kw["extra_indices"],
                                    self.kw["extra_topk_length"], sink)

    def run(self, plan: Plan | None, ws: Workspace | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        b, s_q, h, _ = self.q.shape
        dev = self.q.device
        out = torch.full((b, s_q, h, 512), float("nan"), dtype=torch.bfloat16, device=dev)
        lse = torch.full((b, h, s_q), float("nan"), dtype=torch.float32, device=dev)
        if ws is not None:
            ws.poison()
        return sparse_decode(self.q, self.main.kv_cache, self.main.indices, plan=plan, workspace=ws,
                             out=(out, lse), **self.kw)

    def check(self, plan: Plan | None, label: str = "") -> None:
        ws = Workspace()
        self.run(plan, ws)  # first call allocates the workspace; poison it and run again
        out, lse = self.run(plan, ws)
        check_against_reference(f"{label} {plan}", out, lse, *self.ref)


def make_case(
    device: str, gen: torch.Generator, *, b: int = 2, s_q: int = 1, h: int = 16, topk: int = 64,
    page: int = 128, x_topk: int = 0, x_page: int = 2, sink: str = "mixed",
    length: list[int] | str | None = "random", x_length: list[int] | str | None = "random",
) -> Case:
    main = make_scope(b, s_q, topk, page, fp8="e4m3fn", device=device, bad_ids=True, topk_length=length, gen=gen)
    extra = None
    if x_topk:
        extra = make_scope(b, s_q, x_topk, x_page, fp8="e4m3fn", device=device, topk_length=x_length, gen=gen)
    q = make_query(b, s_q, h, device=device, gen=gen)
    return Case(q, main, extra, make_sink(h, kind=sink, device=device, gen=gen))


def plans_for(case: Case) -> list[Plan]:
    """Each variant's default, plus a split-K gather-then-attend."""
    w = case.workload
    plans = [v.default(w) for v in VARIANTS.values()]
    gta = VARIANTS["gather_attend"].default(w).as_dict()
    plans.append(Plan.make("gather_attend", gta, SPLIT_K=2, COMBINE_BLOCK_H=4, combine_warps=4))
    if not variant_problem("ws_sm90", case.q.device):  # the sm90 kernel where it runs, split too
        plans.append(Plan.make("ws_sm90", BLOCK_N=32, KSTAGES=3, STAGED=0, PIPE=1, SPLIT_K=3, COMBINE_BLOCK_H=8,
                               combine_warps=4))
        plans.append(Plan.make("ws_sm90", BLOCK_N=64, KSTAGES=2, STAGED=1, PIPE=1, SPLIT_K=1))
    return [p for p in plans if not VARIANTS[p.variant].problems(w, p.as_dict())
            and not variant_problem(p.variant, case.q.device)]


@pytest.mark.parametrize("s_q", [1, 2])
@pytest.mark.parametrize("dual", [False, True])
def test_variants_one_and_two_scopes(s_q, dual, device, gen) -> None:
    case = make_case(device, gen, b=3, s_q=s_q, topk=64, x_topk=130 if dual else 0, length=[0, 40, 64])
    for plan in plans_for(case):
        case.check(plan)


@pytest.mark.parametrize("h", [16, 64, 128])
def test_head_counts(h, device, gen) -> None:
    case = make_case(device, gen, b=1, h=h, topk=64, x_topk=64, x_page=64)
    for plan in plans_for(case):
        case.check(plan)


@pytest.mark.parametrize(("page", "x_page"), [(2, 53), (53, 2), (64, 128), (128, 64)])
def test_page_sizes(page, x_page, device, gen) -> None:
    case = make_case(device, gen, b=2, topk=70, page=page, x_topk=45, x_page=x_page)
    for plan in plans_for(case):
        case.check(plan)


@pytest.mark.parametrize("sink", ["finite", "-inf", "+inf", "none"])
def test_sinks(sink, device, gen) -> None:
    case = make_case(device, gen, b=2, x_topk=64, sink=sink)
    for plan in plans_for(case):
        case.check(plan)
    if sink == "+inf":
        out, lse = case.run(None)
        assert bool((out == 0).all()) and bool(torch.isfinite(lse[lse != float("inf")]).all())


def test_lonely_rows_are_zero_with_infinite_lse(device, gen) -> None:
    """Rows with no valid candidate: all ids -1, or topk_length 0 in both scopes."""
    case = make_case(device, gen, b=3, topk=64, x_topk=64, length=[0, 64, 0], x_length=[0, 64, 64])
    case.main.indices[2] = -1
    case.extra.indices[2] = -1
    case.extra.indices[1, :, ::2] = -1
    case.ref = sparse_decode_ref(case.q, case.main.kv_cache, case.main.indices, fp8="e4m3fn",
                                 out_dtype=torch.float32, **case.kw)
    for plan in plans_for(case):
        out, lse = case.run(plan, Workspace())
        assert bool((out[0] == 0).all()) and bool((out[2] == 0).all())
        assert bool(torch.isposinf(lse[0]).all()) and bool(torch.isposinf(lse[2]).all())
        check_against_reference(str(plan), out, lse, *case.ref)


def test_split_k_equals_no_split(device, gen) -> None:
    case = make_case(device, gen, b=2, h=16, topk=128, x_topk=192, sink="finite")
    base = VARIANTS["fused"].default(case.workload).as_dict()
    for sk in (2, 3, 5, 8, 16):
        cfg = {**base, "BLOCK_N": 16, "SPLIT_K": sk, "COMBINE_BLOCK_H": 4, "combine_warps": 4}
        if sk not in (2, 3, 8, 16):  # 5 is not in the registry's space (sparse_decode refuses it) but the
            x = DecodeInputs(case.q, (case.main.kv_cache, case.main.indices, case.main.topk_length),  # kernels
                             (case.extra.kv_cache, case.extra.indices, case.extra.topk_length),  # take any 2..16
                             case.sink, SM_SCALE, ("e4m3fn", "e4m3fn"))
            for variant, config in (("fused_splitk", cfg), ("fused_splitk_inline", without_combine(cfg))):
                out = torch.full_like(case.ref[0], float("nan"), dtype=torch.bfloat16)
                lse = torch.full_like(case.ref[1], float("nan"))
                LAUNCHERS[variant](x, config, out, lse, Workspace())
                check_against_reference(f"{variant} split {sk}", out, lse, *case.ref)
        else:
            case.check(Plan.make("fused_splitk", cfg))
            if device == "cuda":  # a programmatic dependent combine on sm90 (the interpreter has no PDL)
                case.check(Plan.make("fused_splitk", cfg, PDL=1))
            case.check(Plan.make("fused_splitk_inline", without_combine(cfg)), f"split {sk}")


@pytest.mark.parametrize("block_h", [16, 32])
def test_inline_combine_leaves_its_counters_zero(block_h, device, gen) -> None:
    """The in-kernel combine counts the splits of each (token, head block) on a workspace counter
    and the last split puts it back to 0: calls after the first stay right only if it does."""
    case = make_case(device, gen, b=2, s_q=2, h=48, topk=96, x_topk=40, sink="finite")
    plan = Plan.make("fused_splitk_inline", BLOCK_H=block_h, BLOCK_N=16, num_warps=4, num_stages=1, SPLIT_K=3)
    ws = Workspace()
    for _ in range(3):
        out, lse = case.run(plan, ws)
        check_against_reference(str(plan), out, lse, *case.ref)
    counters = [b for b in ws.buffers() if b.dtype == torch.int32]
    assert len(counters) == 1 and counters[0].numel() == 4 * -(-48 // block_h)
    assert bool((counters[0] == 0).all())


def test_batch_permutation_permutes_results(device, gen) -> None:
    case = make_case(device, gen, b=4, s_q=2, x_topk=64, sink="finite")
    perm = torch.randperm(4, generator=gen)
    out, lse = case.run(None)

    def p(t):
        return None if t is None else t[perm.to(t.device)]

    out_p, lse_p = sparse_decode(
        p(case.q), case.main.kv_cache, p(case.main.indices), topk_length=p(case.main.topk_length),
        extra_k_cache=case.extra.kv_cache, extra_indices=p(case.extra.indices),
        extra_topk_length=p(case.extra.topk_length), attn_sink=case.sink, sm_scale=SM_SCALE,
    )
    assert torch.equal(out_p, out[perm.to(out.device)])
    assert torch.equal(lse_p, lse[perm.to(lse.device)])


def test_non_contiguous_inputs(device, gen) -> None:
    case = make_case(device, gen, b=2, s_q=2, h=16, x_topk=64)
    q_t = case.q.transpose(0, 1).contiguous().transpose(0, 1)  # batch stride < s_q stride
    wide = torch.zeros(2, 2, 32, 512, dtype=torch.bfloat16, device=device)
    wide[:, :, ::2] = case.q
    q_h = wide[:, :, ::2]  # head stride 1024
    idx_t = case.main.indices.transpose(0, 1).contiguous().transpose(0, 1)
    for q in (q_t, q_h):
        assert not q.is_contiguous()
        out, lse = sparse_decode(q, case.main.kv_cache, idx_t, **case.kw)
        check_against_reference("non-contiguous", out, lse, *case.ref)


def test_every_config_of_a_random_sample(device, gen) -> None:
    """A fresh random sample of each variant's space on every run (the GPU script runs them all)."""
    case = make_case(device, gen, b=2, h=32, topk=64, x_topk=128, x_page=64)
    rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=gen)))
    for name, variant in VARIANTS.items():
        if variant_problem(name, case.q.device):
            continue
        space = variant.space(case.workload)
        assert space, f"{name} has no valid config for {case.workload}"
        for plan in rng.sample(space, min(4, len(space))):
            case.check(plan, name)


def test_gather_attend_chunks_tokens_within_the_buffer_bound(device, gen) -> None:
    case = make_case(device, gen, b=5, topk=64, x_topk=64, sink="finite")
    assert token_ranges(5, 128, max_bytes=2 * 128 * 512 * 2) == [(0, 2), (2, 4), (4, 5)]
    x = DecodeInputs(case.q, (case.main.kv_cache, case.main.indices, case.main.topk_length),
                     (case.extra.kv_cache, case.extra.indices, case.extra.topk_length), case.sink, SM_SCALE,
                     ("e4m3fn", "e4m3fn"))
    for sk, one in ((1, 1), (2, 0)):
        cfg = {**VARIANTS["gather_attend"].default(case.workload).as_dict(), "SPLIT_K": sk, "ONE_LAUNCH": one,
               "COMBINE_BLOCK_H": 8, "combine_warps": 4}
        out = torch.full_like(case.ref[0], float("nan"), dtype=torch.bfloat16)
        lse = torch.full_like(case.ref[1], float("nan"))
        ws = Workspace()
        run_gather_attend(x, cfg, out, lse, ws, max_buffer_bytes=2 * 128 * 512 * 2)
        assert ws.get("gathered", (2, 128, 512), torch.bfloat16, case.q.device).shape[0] == 2
        check_against_reference(f"chunked sk={sk}", out, lse, *case.ref)


def test_empty_batch_returns_empty_outputs(device) -> None:
    case_q = torch.zeros(0, 1, 16, 512, dtype=torch.bfloat16, device=device)
    scope = make_scope(1, 1, 64, 64, fp8="e4m3fn", device=device, topk_length=None)
    out, lse = sparse_decode(case_q, scope.kv_cache, scope.indices[:0], sm_scale=SM_SCALE)
    assert out.shape == (0, 1, 16, 512) and lse.shape == (0, 16, 1)


def test_bad_inputs_name_the_argument(device, gen) -> None:
    case = make_case(device, gen, b=2, x_topk=64)
    kv, idx = case.main.kv_cache, case.main.indices
    base = dict(case.kw)
    cases = [
        (dict(q=case.q.float()), "q: expected dtype torch.bfloat16"),
        (dict(q=case.q[..., :256]), r"q: expected shape \[b, s_q, h_q, 512\]"),
        (dict(indices=idx[:1]), r"indices: expected leading dims \[b=2, s_q=1\]"),
        (dict(extra_indices=None), "extra_k_cache, extra_indices: give both or neither"),
        (dict(attn_sink=torch.zeros(3, device=device)), r"attn_sink: expected a float32 tensor \[16\]"),
        (dict(extra_topk_length=torch.zeros(3, dtype=torch.int32, device=device)),
         r"extra_topk_length: expected shape"),
        (dict(extra_k_cache=kv.view(torch.int8)), "extra_k_cache: expected dtype torch.uint8"),
        (dict(plan=Plan.make("fused", BLOCK_H=16)), "plan: .* unknown config keys"),
        (dict(plan=Plan.make("warp_speed")), "variant: unknown 'warp_speed'"),
    ]
    for override, message in cases:
        args = dict(q=case.q, k_cache=kv, indices=idx, **base) | override
        q_, k_, i_ = args.pop("q"), args.pop("k_cache"), args.pop("indices")
        with pytest.raises(ValueError, match=message):
            sparse_decode(q_, k_, i_, validate=True, **args)
    with pytest.raises(ValueError, match="variant: unknown 'warp_speed'"):
        sparse_decode(case.q, kv, idx, plan=Plan.make("warp_speed"), **base)


@pytest.mark.gpu_only
def test_inline_combine_under_load(device, gen) -> None:
    """Many concurrent (token, head block) counters and up to 16 splits racing to arrive last, on
    one workspace call after call: every result matches the unsplit kernel's reference."""
    for b, h in ((64, 128), (8, 64)):
        case = make_case(device, gen, b=b, h=h, topk=128, x_topk=1024, x_page=64, sink="mixed")
        ws = Workspace()
        for sk, bh in ((16, 16), (12, 32), (3, 64)):
            plan = Plan.make("fused_splitk_inline", BLOCK_H=bh, BLOCK_N=64, num_warps=8, num_stages=1, SPLIT_K=sk)
            for _ in range(3):
                out, lse = case.run(plan, ws)
                check_against_reference(str(plan), out, lse, *case.ref)


@pytest.mark.gpu_only
def test_split_k_with_pdl_matches_plain_launches_and_replays(device, gen, monkeypatch) -> None:
    """On Hopper fused_splitk with PDL = 1 launches the combine as a programmatic dependent of the
    split kernel (it becomes resident while the splits run and waits for their partials): the
    same bytes as two plain launches, called eagerly (recorded, then replayed) and from a CUDA graph."""
    from dsv4_tune.runtime import target as runtime

    idx = torch.cuda.current_device()
    if torch.cuda.get_device_capability(idx)[0] < 9:
        pytest.skip("programmatic dependent launch needs sm90 or newer")
    case = make_case(device, gen, b=8, h=64, topk=128, x_topk=512, x_page=64, sink="mixed")
    plan = Plan.make("fused_splitk", BLOCK_H=16, BLOCK_N=64, num_warps=8, num_stages=1, SPLIT_K=8,
                     COMBINE_BLOCK_H=8, combine_warps=4, PDL=1)
    got = {}
    for pdl in (False, True):
        monkeypatch.setitem(runtime._PDL, idx, pdl)
        ws = Workspace()
        for _ in range(3):  # the first call of its kind records its launches, the later ones replay them
            out, lse = case.run(plan, ws)
            check_against_reference(f"{plan} pdl={pdl}", out, lse, *case.ref)
        got[pdl] = (out.clone(), lse.clone())
    assert torch.equal(got[True][0], got[False][0]) and torch.equal(got[True][1], got[False][1])
    out, lse = torch.empty_like(got[True][0]), torch.empty_like(got[True][1])
    ws = Workspace()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        case.run(plan, ws)  # warm up off the capture stream
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        sparse_decode(case.q, case.main.kv_cache, case.main.indices, plan=plan, workspace=ws, out=(out, lse),
                      **case.kw)
    out.fill_(float("nan"))
    lse.fill_(float("nan"))
    ws.poison()  # the partials too: a combine that read them before the splits wrote them would show
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, got[True][0]) and torch.equal(lse, got[True][1])
