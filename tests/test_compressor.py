"""DSV4 compressor kernels against the literal PyTorch reference (fresh random inputs every run).

Every destination starts NaN-poisoned (0xFF bytes for a pool), every state row no window may read is
NaN, scores hold -inf entries, out_loc holds -1, out-of-range ids and 0 at non-boundary tokens, and
some requests have no ring (ring_base -1): a kernel that reads or writes what it must not fails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import triton
import triton.language as tl

from dsv4_tune.kernels import kv_layout as L
from dsv4_tune.kernels.fp8 import encode_fp8
from dsv4_tune.kernels.reference import compress_decode_ref, compress_prefill_ref
from dsv4_tune.registry.compressor_space import (
    MODES,
    VARIANTS,
    compressor_default,
    compressor_problems,
    compressor_space,
    window,
)
from dsv4_tune.registry.launches import compressor_launches
from dsv4_tune.serving.compressor import compress_decode, compress_prefill
from tests.helpers import assert_match

pytestmark = pytest.mark.gpu

MAX_POS = 1024
CASES = [(4, 512, "pool"), (4, 512, "f32"), (4, 128, "f32"), (4, 128, "bf16"),
         (128, 512, "pool"), (128, 512, "bf16"), (128, 128, "f32")]
F32_TOL = 2e-5  # fp32 rows vs the fp64 reference (approximate exp / rsqrt on GPUs included)


@dataclass
class Problem:
    """Weights, state and destination of one compressor layer (random, state NaN-poisoned)."""

    ratio: int
    dim: int
    ring_size: int
    ape: torch.Tensor
    norm_weight: torch.Tensor
    freqs: torch.Tensor
    state: torch.Tensor
    dest: torch.Tensor
    kind: str
    gen: torch.Generator
    device: str

    @property
    def width(self) -> int:
        return 2 * (2 if self.ratio == 4 else 1) * self.dim

    @property
    def slots(self) -> int:
        return L.num_slots(self.dest) if self.kind == "pool" else self.dest.shape[0]

    def rows(self, n: int, inf_frac: float = 0.1) -> torch.Tensor:
        """n kv_score rows: kv ~ N(0, 1), scores ~ N(0, 2^2) with some -inf entries."""
        x = torch.randn(n, self.width, generator=self.gen)
        half = self.width // 2
        x[:, half:] *= 2
        score = x[:, half:]
        score[torch.rand(score.shape, generator=self.gen) < inf_frac] = float("-inf")
        return x.to(self.device)

    def fill_ring(self, base: int, prefix: int) -> None:
        """Ring rows of the positions windows of positions >= prefix may read; the rest stay NaN."""
        k = window(self.ratio)
        first = max(0, prefix - k + 1)
        hist = self.rows(prefix - first)
        for i, pos in enumerate(range(first, prefix)):
            self.state[base + pos % self.ring_size] = hist[i]

    def clone_dest(self) -> torch.Tensor:
        if self.kind != "pool":
            return self.dest.clone()
        out = L.make_kv_cache(self.dest.shape[0], self.dest.shape[1], self.device)  # same padded stride
        L._flat_bytes(out).copy_(L._flat_bytes(self.dest))
        return out

    def run_ref(self, fn, *args, **kw):
        state, dest = self.state.clone(), self.clone_dest()
        out = fn(*args[:1], *_swap(args[1:], self.state, state, self.dest, dest), ratio=self.ratio,
                 ring_size=self.ring_size, fp8="e4m3fn", **kw)
        return out, state, dest


def _swap(args: tuple, state: torch.Tensor, new_state: torch.Tensor, dest: torch.Tensor,
          new_dest: torch.Tensor) -> list:
    return [new_state if a is state else new_dest if a is dest else a for a in args]


def make_problem(ratio: int, dim: int, kind: str, ring_mult: int, n_rings: int, device: str,
                 gen: torch.Generator) -> Problem:
    k = window(ratio)
    ring_size = ring_mult * k
    theta = torch.rand(MAX_POS, 32, generator=gen) * 2 * math.pi
    freqs = torch.stack([theta.cos(), theta.sin()], dim=-1).reshape(MAX_POS, 64)
    state = torch.full((n_rings * ring_size + 3, 2 * (2 if ratio == 4 else 1) * dim), float("nan"))
    if kind == "pool":
        page = 64 if ratio == 4 else 2
        dest = L.make_kv_cache(96 // page + 1, page, device)
        L.poison_pool(dest, torch.empty(0, dtype=torch.int64))
    else:
        dest = torch.full((40, dim), float("nan"), dtype=torch.float32 if kind == "f32" else torch.bfloat16)
    return Problem(ratio, dim, ring_size, (torch.randn(k, dim, generator=gen) * 0.5).to(device),
                   (torch.rand(dim, generator=gen) + 0.5).to(device), freqs.to(device), state.to(device),
                   dest.to(device), kind, gen, device)


def _bits(t: torch.Tensor) -> torch.Tensor:
    if t.dtype == torch.uint8:
        return t
    return t.view(torch.int16 if t.element_size() == 2 else torch.int32)


def check_dest(pb: Problem, got: torch.Tensor, ref: torch.Tensor, rows: torch.Tensor, slots: torch.Tensor) -> None:
    """Written slots match the reference (FP8: within one FP8 ulp); every other byte is untouched."""
    assert slots.numel() > 0, "the test must produce rows"
    assert int(slots.min()) > 0, "the test must never write slot 0"
    if pb.kind == "pool":
        gb, rb = L._flat_bytes(got), L._flat_bytes(ref)
        written = torch.zeros_like(gb, dtype=torch.bool)
        written[L.written_bytes(got, slots)] = True
        diff = gb != rb
        assert not bool((diff & ~written).any()), f"{int((diff & ~written).sum())} bytes outside the written slots"
        g, r = L.read_tokens(got, slots, "e4m3fn").float(), L.read_tokens(ref, slots, "e4m3fn").float()
        assert not bool(torch.isnan(g).any()), "NaN in a written slot"
        # One FP8 ulp (2^-3 relative for e4m3) in NoPE, one BF16 ulp in RoPE, where fp32 roundings differ.
        assert_match("pool NoPE", g[:, :448], r[:, :448], atol=float(rows.abs().max()) * 2**-16, rtol=2**-3)
        assert_match("pool RoPE", g[:, 448:], r[:, 448:], atol=1e-6, rtol=2**-7)
        assert_match("pool vs fp32 rows", g, rows.to(g.device), atol=float(rows.abs().max()) * 2**-8, rtol=2**-3)
        same = float((gb[written] == rb[written]).float().mean())
        assert same > 0.9, f"only {same:.1%} of the written bytes equal the reference's"
        return
    untouched = torch.ones(got.shape[0], dtype=torch.bool, device=got.device)
    untouched[slots.to(got.device)] = False
    assert torch.equal(_bits(got[untouched]), _bits(ref[untouched])), "rows outside the written slots changed"
    if pb.kind == "f32":
        assert_match("rows", got[slots.to(got.device)], rows.to(got.device), atol=F32_TOL, rtol=F32_TOL)
    else:
        assert_match("bf16 rows", got[slots.to(got.device)].float(), rows.to(got.device).bfloat16().float(),
                     atol=1e-6, rtol=2**-7)


def check_state(got: torch.Tensor, ref: torch.Tensor) -> None:
    """The kernel copies rows: the state must equal the reference's bit for bit (NaN rows included)."""
    diff = (_bits(got) != _bits(ref)).any(dim=1).nonzero().flatten().tolist()
    assert not diff, f"state rows differ from the reference: {diff[:10]}"


def _locs(pb: Problem, n: int) -> list[int]:
    """n distinct valid slots, never 0."""
    return (torch.randperm(pb.slots - 1, generator=pb.gen)[:n] + 1).tolist()


# ---------------------------------------------------------------------------------------------
# Decode


def _decode_batch(pb: Problem) -> tuple[torch.Tensor, ...]:
    r = pb.ratio
    #            first block  boundary  not   pad  no ring  loc -1  loc OOR  pos 0
    seqs = [r, 2 * r, 3 * r + 1, 0, 3 * r, 4 * r, 5 * r, 1]
    bases = [i * pb.ring_size for i in range(len(seqs))]
    bases[4] = -1
    locs = _locs(pb, len(seqs))
    locs[5], locs[6] = -1, pb.slots
    for b, s in enumerate(seqs):
        if bases[b] >= 0 and s > 0:
            pb.fill_ring(bases[b], s - 1)
    i32 = dict(dtype=torch.int32, device=pb.device)
    return (pb.rows(len(seqs)), torch.tensor(bases, **i32), torch.tensor(seqs, **i32), torch.tensor(locs, **i32))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ring_mult", [1, 2])
@pytest.mark.parametrize(("ratio", "dim", "kind"), CASES)
def test_decode_matches_reference(ratio, dim, kind, ring_mult, variant, device, gen) -> None:
    _check_decode(make_problem(ratio, dim, kind, ring_mult, 8, device, gen), variant=variant)


@pytest.mark.parametrize("rows", [4, 16])
@pytest.mark.parametrize(("ratio", "dim", "kind"), CASES)
def test_split_decode_with_several_requests_per_program(ratio, dim, kind, rows, device, gen) -> None:
    """ROWS requests per pooling program: 8 requests in blocks of 4, and in one block of 16 (its
    last 8 programs' requests do not exist)."""
    cfg = compressor_default(ratio, dim, "decode", "split") | {"ROWS": rows}
    _check_decode(make_problem(ratio, dim, kind, 1, 8, device, gen), variant="split", config=cfg)


@pytest.mark.gpu_only
def test_split_decode_with_pdl_matches_plain_launches_and_replays(device, gen, monkeypatch) -> None:
    """On Hopper the split decode's finish kernel is a programmatic dependent launch (it starts
    while the pooling runs and waits for it only to read ws): the same bytes as two plain
    launches, called eagerly and replayed from a CUDA graph."""
    from dsv4_tune.runtime import target as runtime

    idx = torch.cuda.current_device()
    if torch.cuda.get_device_capability(idx)[0] < 9:
        pytest.skip("programmatic dependent launch needs sm90 or newer")
    pb = make_problem(128, 512, "pool", 1, 8, device, gen)
    kvs, base, seqs, locs = _decode_batch(pb)
    state0, dest0 = pb.state.clone(), pb.clone_dest()
    cfg = compressor_default(128, 512, "decode", "split") | {"ROWS": 2, "PDL": 1}

    def run() -> None:
        compress_decode(kvs, pb.state, base, seqs, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest, ratio=128,
                        ring_size=pb.ring_size, config=cfg, variant="split")

    def reset() -> None:
        pb.state.copy_(state0)
        pb.dest.copy_(dest0)

    got = {}
    for pdl in (False, True):
        monkeypatch.setitem(runtime._PDL, idx, pdl)
        reset()
        run()
        torch.cuda.synchronize()
        got[pdl] = (pb.state.clone(), pb.dest.clone())
    check_state(got[True][0], got[False][0])
    assert torch.equal(got[True][1], got[False][1])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        run()  # warm up off the capture stream
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    reset()
    graph.replay()
    torch.cuda.synchronize()
    check_state(pb.state, got[False][0])
    assert torch.equal(pb.dest, got[False][1])


def _check_decode(pb: Problem, **kw: object) -> None:
    ratio = pb.ratio
    kvs, base, seqs, locs = _decode_batch(pb)
    (rows, slots, reqs), ref_state, ref_dest = pb.run_ref(
        compress_decode_ref, kvs, pb.state, base, seqs, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest)
    assert reqs.tolist() == [0, 1, 4], "boundary requests with a valid slot (the others must be skipped)"
    compress_decode(kvs, pb.state, base, seqs, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest,
                    ratio=ratio, ring_size=pb.ring_size, **kw)
    check_state(pb.state, ref_state)
    check_dest(pb, pb.dest, ref_dest, rows, slots)
    for b in (0, 1, 2, 7):  # the token's ring row holds its kv_score row
        row = pb.state[int(base[b]) + (int(seqs[b]) - 1) % pb.ring_size]
        assert torch.equal(_bits(row), _bits(kvs[b]))


def test_decode_off_boundary_writes_only_the_ring(device, gen) -> None:
    """The common decode step: no boundary, so nothing but one ring row per request changes."""
    pb = make_problem(128, 128, "f32", 1, 4, device, gen)
    seqs = torch.tensor([1, 130, 255, 129], dtype=torch.int32, device=device)
    base = torch.tensor([0, 128, 256, -1], dtype=torch.int32, device=device)
    locs = torch.zeros(4, dtype=torch.int32, device=device)  # slot 0: must never be written
    kvs, before, dest = pb.rows(4), pb.state.clone(), pb.dest.clone()
    compress_decode(kvs, pb.state, base, seqs, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest, ratio=128,
                    ring_size=128)
    assert torch.equal(_bits(pb.dest), _bits(dest))
    expect = before.clone()
    for b in range(3):
        expect[int(base[b]) + (int(seqs[b]) - 1) % 128] = kvs[b]
    check_state(pb.state, expect)


# ---------------------------------------------------------------------------------------------
# Prefill


def _prefill_batch(pb: Problem) -> tuple[torch.Tensor, ...]:
    r, k = pb.ratio, window(pb.ratio)
    reqs = [(0, 2 * k + 3), (r + 1, 2 * r + 2), (3 * r - 1, 1), (5, 0), (2 * r, r)]  # (prefix, new tokens)
    bases = [i * pb.ring_size for i in range(len(reqs))]
    bases[4] = -1  # no ring: positions before the prefix are empty
    cu = [0]
    for _, n in reqs:
        cu.append(cu[-1] + n)
    n_tok = cu[-1]
    locs = torch.zeros(n_tok, dtype=torch.int64)  # 0 at non-boundary tokens: must be ignored
    boundary = [cu[b] + i for b, (q, n) in enumerate(reqs) for i in range(n) if (q + i + 1) % r == 0]
    locs[boundary] = torch.tensor(_locs(pb, len(boundary)))
    locs[boundary[1]] = -1
    locs[boundary[-2]] = pb.slots
    for b, (prefix, _) in enumerate(reqs):
        if bases[b] >= 0:
            pb.fill_ring(bases[b], prefix)
    i32 = dict(dtype=torch.int32, device=pb.device)
    return (pb.rows(n_tok), torch.tensor(cu, **i32), torch.tensor([q for q, _ in reqs], **i32),
            torch.tensor(bases, **i32), locs.to(**i32))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ring_mult", [1, 2])
@pytest.mark.parametrize(("ratio", "dim", "kind", "per_block"), [(*c, 2) for c in CASES] + [(4, 128, "bf16", 1)])
def test_prefill_matches_reference(ratio, dim, kind, per_block, ring_mult, variant, device, gen) -> None:
    """Ring rows before the prefix are read by windows 0 and 1 (block 0 of C4's fused kernel, also
    when ROWS is 1) and overwritten by the same prefill."""
    pb = make_problem(ratio, dim, kind, ring_mult, 5, device, gen)
    kvs, cu, prefix, base, locs = _prefill_batch(pb)
    (rows, slots, _), ref_state, ref_dest = pb.run_ref(
        compress_prefill_ref, kvs, cu, prefix, pb.state, base, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest)
    assert slots.numel() >= 4
    cfg = compressor_default(ratio, dim, "prefill", variant) | {"ROWS": per_block}
    compress_prefill(kvs, cu, prefix, pb.state, base, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest,
                     ratio=ratio, ring_size=pb.ring_size, variant=variant, config=cfg)
    check_state(pb.state, ref_state)
    check_dest(pb, pb.dest, ref_dest, rows, slots)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("prefix", [5, 6, 8])
def test_prefill_overwrites_ring_rows_its_first_windows_read(prefix, variant, device, gen) -> None:
    """One request whose 8 new tokens overwrite ring rows that its windows 0 and 1 read, all in
    one window block: a ring update that overtook the windows' reads would fail it (checked by
    mutation with an in-kernel update that misjudged which rows the windows read)."""
    pb = make_problem(4, 128, "f32", 1, 1, device, gen)
    n = 8
    i32 = dict(dtype=torch.int32, device=device)
    kvs, cu, pre = pb.rows(n), torch.tensor([0, n], **i32), torch.tensor([prefix], **i32)
    base = torch.zeros(1, **i32)
    pb.fill_ring(0, prefix)
    locs = torch.full((n,), -1, dtype=torch.int32)
    bound = [i for i in range(n) if (prefix + i + 1) % 4 == 0]
    locs[bound] = torch.tensor(_locs(pb, len(bound)), dtype=torch.int32)
    locs = locs.to(device)
    (rows, slots, _), ref_state, ref_dest = pb.run_ref(
        compress_prefill_ref, kvs, cu, pre, pb.state, base, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest)
    cfg = compressor_default(4, 128, "prefill", variant) | {"ROWS": 2}
    compress_prefill(kvs, cu, pre, pb.state, base, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest,
                     ratio=4, ring_size=pb.ring_size, variant=variant, config=cfg, max_new_tokens=n)
    check_state(pb.state, ref_state)
    check_dest(pb, pb.dest, ref_dest, rows, slots)


@pytest.mark.parametrize("ring_mult", [1, 2])
@pytest.mark.parametrize("ratio", [4, 128])
def test_prefill_then_decode_equals_one_prefill(ratio, ring_mult, device, gen) -> None:
    pb = make_problem(ratio, 128, "f32", ring_mult, 1, device, gen)
    first, total = 3 * ratio - 6, 3 * ratio + 5
    kvs = pb.rows(total)
    locs = torch.full((total,), -1, dtype=torch.int32)
    locs[ratio - 1::ratio] = torch.tensor(_locs(pb, total // ratio), dtype=torch.int32)
    locs = locs.to(device)
    base = torch.zeros(1, dtype=torch.int32, device=device)
    i32 = dict(dtype=torch.int32, device=device)
    state0, dest0 = pb.state.clone(), pb.dest.clone()
    compress_prefill(kvs, torch.tensor([0, total], **i32), torch.zeros(1, **i32), pb.state, base, pb.ape,
                     pb.norm_weight, pb.freqs, locs, pb.dest, ratio=ratio, ring_size=pb.ring_size)
    one_state, one_dest = pb.state, pb.dest
    state, dest = state0.clone(), dest0.clone()
    compress_prefill(kvs[:first], torch.tensor([0, first], **i32), torch.zeros(1, **i32), state, base, pb.ape,
                     pb.norm_weight, pb.freqs, locs[:first], dest, ratio=ratio, ring_size=pb.ring_size)
    for t in range(first, total):
        compress_decode(kvs[t:t + 1], state, base, torch.tensor([t + 1], **i32), pb.ape, pb.norm_weight,
                        pb.freqs, locs[t:t + 1], dest, ratio=ratio, ring_size=pb.ring_size, variant="split")
    written = ~torch.isnan(one_dest).any(dim=1)
    assert int(written.sum()) == total // ratio
    assert torch.equal(_bits(dest[~written]), _bits(one_dest[~written]))
    assert_match("dest", dest[written], one_dest[written], atol=F32_TOL, rtol=F32_TOL)
    check_state(state, one_state)


def test_all_inf_windows_give_zero_rows(device, gen) -> None:
    """Channels whose every score is -inf pool to 0, never NaN; a fully -inf window gives a zero row."""
    pb = make_problem(4, 128, "f32", 1, 2, device, gen)
    kvs = pb.rows(16, inf_frac=0.5)
    half = pb.width // 2
    kvs[:8, half:] = float("-inf")  # request 0: the whole first window
    kvs[8:, half:half + 40] = float("-inf")  # request 1: 20 channels of both halves in every slot
    kvs[8:, half + 128:half + 148] = float("-inf")
    i32 = dict(dtype=torch.int32, device=device)
    cu, prefix = torch.tensor([0, 8, 16], **i32), torch.zeros(2, **i32)
    base, locs = torch.tensor([0, 8], **i32), torch.tensor(_locs(pb, 16), **i32)
    (rows, slots, _), ref_state, ref_dest = pb.run_ref(
        compress_prefill_ref, kvs, cu, prefix, pb.state, base, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest)
    compress_prefill(kvs, cu, prefix, pb.state, base, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest,
                     ratio=4, ring_size=8)
    check_state(pb.state, ref_state)
    check_dest(pb, pb.dest, ref_dest, rows, slots)
    got = pb.dest[slots]
    assert bool((got[0:2] == 0).all()), "request 0's windows are all -inf (the second one's A half too)"
    assert bool((got[2:, :20] == 0).all()), "request 1: channels 0-19 are -inf in both halves"
    assert float((got[2:, 20:] != 0).float().mean()) > 0.5


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize(("ratio", "block_s"), [(4, 4), (128, 16)])
def test_leading_empty_or_inf_tile(ratio, block_s, variant, device, gen) -> None:
    """A first softmax tile with no weight (empty C4 A half at p = 3; -inf sentinel scores in the ring
    for C128) must not poison the running sums of the tiles after it."""
    pb = make_problem(ratio, 128, "f32", 1, 2, device, gen)
    i32 = dict(dtype=torch.int32, device=device)
    seq = ratio if ratio == 4 else 2 * ratio
    pb.fill_ring(0, seq - 1)
    if ratio == 128:
        for pos in range(seq - 128, seq - 128 + block_s):
            pb.state[pos % 128, 128:] = float("-inf")
    kvs = pb.rows(1, inf_frac=0.0)
    args = (kvs, pb.state, torch.zeros(1, **i32), torch.tensor([seq], **i32), pb.ape, pb.norm_weight, pb.freqs,
            torch.tensor([3], **i32))
    (rows, slots, _), _, ref_dest = pb.run_ref(compress_decode_ref, *args, pb.dest)
    cfg = compressor_default(ratio, 128, "decode", variant) | {"BLOCK_S": block_s}
    compress_decode(*args, pb.dest, ratio=ratio, ring_size=pb.ring_size, config=cfg, variant=variant)
    check_dest(pb, pb.dest, ref_dest, rows, slots)


def test_rope_uses_the_first_position_of_the_block(device, gen) -> None:
    """The output matches RoPE at p + 1 - R and not at p (the reference with freqs shifted by R - 1)."""
    pb = make_problem(4, 512, "f32", 1, 1, device, gen)
    kvs, i32 = pb.rows(12, inf_frac=0.0), dict(dtype=torch.int32, device=device)
    args = (kvs, torch.tensor([0, 12], **i32), torch.zeros(1, **i32), pb.state, torch.zeros(1, **i32), pb.ape,
            pb.norm_weight)
    locs = torch.tensor(_locs(pb, 12), **i32)
    compress_prefill(*args, pb.freqs, locs, pb.dest, ratio=4, ring_size=8)
    (rows, slots, _), _, _ = pb.run_ref(compress_prefill_ref, *args, pb.freqs, locs, pb.dest)
    (wrong, _, _), _, _ = pb.run_ref(compress_prefill_ref, *args, pb.freqs.roll(-3, 0), locs, pb.dest)
    assert_match("rows", pb.dest[slots], rows, atol=F32_TOL, rtol=F32_TOL)
    assert not torch.allclose(pb.dest[slots][:, -64:], wrong[:, -64:].to(device), atol=1e-2)
    assert torch.allclose(rows[:, :-64], wrong[:, :-64])  # RoPE dims only


def test_pool_bytes_equal_write_tokens_of_the_kernel_rows(device, gen) -> None:
    """The in-kernel quantization is kv_layout.quantize_tokens byte for byte (same fp32 rows)."""
    pb = make_problem(4, 512, "pool", 1, 8, device, gen)
    dense = torch.full((pb.slots, 512), float("nan"), device=device)
    kvs, base, seqs, locs = _decode_batch(pb)
    state = pb.state.clone()
    compress_decode(kvs, pb.state, base, seqs, pb.ape, pb.norm_weight, pb.freqs, locs, pb.dest, ratio=4,
                    ring_size=8)
    compress_decode(kvs, state, base, seqs, pb.ape, pb.norm_weight, pb.freqs, locs, dense, ratio=4, ring_size=8)
    slots = locs[[0, 1, 4]].long()
    expect = L.make_kv_cache(pb.dest.shape[0], pb.dest.shape[1], device)
    L.poison_pool(expect, torch.empty(0, dtype=torch.int64))
    L.write_tokens(expect, slots, dense[slots], "e4m3fn")
    assert torch.equal(L._flat_bytes(pb.dest), L._flat_bytes(expect))


@pytest.mark.parametrize("fp8", L.FP8_FLAVOURS)
def test_pool_flavour(fp8, device, gen) -> None:
    """e4m3fnuz pools (gfx942) get max-240 scales and fnuz bytes."""
    pb = make_problem(128, 512, "pool", 1, 1, device, gen)
    kvs, i32 = pb.rows(1), dict(dtype=torch.int32, device=device)
    args = (kvs, pb.state, torch.zeros(1, **i32), torch.tensor([128], **i32), pb.ape, pb.norm_weight, pb.freqs,
            torch.tensor([7], **i32))
    pb.fill_ring(0, 127)
    (rows, slots, _), _, _ = pb.run_ref(compress_decode_ref, *args, pb.dest)
    compress_decode(*args, pb.dest, ratio=128, ring_size=128, fp8=fp8)
    got = L.read_tokens(pb.dest, slots, fp8).float()
    assert_match("pool", got, rows, atol=float(rows.abs().max()) * 2**-8, rtol=2**-3)
    _, _, scales = L.quantize_tokens(rows, fp8)
    _, scale_off = L._slot_byte_offsets(pb.dest, slots.to(device))
    flat = L._flat_bytes(pb.dest)
    got_scales = flat[scale_off[:, None] + torch.arange(7, device=device)]
    assert (got_scales.int() - scales.to(device).int()).abs().max() <= 1


# ---------------------------------------------------------------------------------------------
# Configs, checks, FP8 encoder


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_every_config_of_the_space_small_case(mode, variant, device, gen) -> None:
    """All configs of C4 / head_dim 128 (cheap in the interpreter) give the reference rows."""
    pb = make_problem(4, 128, "f32", 2, 8 if mode == "decode" else 5, device, gen)
    if mode == "decode":
        kvs, base, seqs, locs = _decode_batch(pb)
        args = (kvs, pb.state, base, seqs, pb.ape, pb.norm_weight, pb.freqs, locs)
        run, ref = compress_decode, compress_decode_ref
    else:
        kvs, cu, prefix, base, locs = _prefill_batch(pb)
        args = (kvs, cu, prefix, pb.state, base, pb.ape, pb.norm_weight, pb.freqs, locs)
        run, ref = compress_prefill, compress_prefill_ref
    state0, dest0 = pb.state.clone(), pb.clone_dest()
    (rows, slots, _), ref_state, ref_dest = pb.run_ref(ref, *args, pb.dest)
    space = compressor_space(4, 128, mode, variant)
    for cfg in space[:: max(1, len(space) // 12)]:
        pb.state.copy_(state0)
        pb.dest.copy_(dest0)
        run(*args, pb.dest, ratio=4, ring_size=pb.ring_size, config=cfg, variant=variant)
        check_state(pb.state, ref_state)
        check_dest(pb, pb.dest, ref_dest, rows, slots)


def test_config_space_functions() -> None:
    for ratio in (4, 128):
        for dim in (512, 128):
            for mode in MODES:
                for variant in VARIANTS:
                    space = compressor_space(ratio, dim, mode, variant)
                    default = compressor_default(ratio, dim, mode, variant)
                    assert default in space and len(space) == len({tuple(sorted(c.items())) for c in space})
                    assert all(not compressor_problems(ratio, dim, mode, c, variant) for c in space)
                    launches = compressor_launches(ratio, dim, mode, default, variant=variant)
                    # split: pool + finish (with the ring update); fused prefill: + the ring update
                    assert len(launches) == 1 + (variant == "split" or mode == "prefill")
    # Fused C4 prefill with ROWS >= 2 writes the ring in its one launch; C128 never does.
    for ratio, rows, want in ((4, 2, [("RING", True)]), (4, 1, [("RING", False)]), (128, 2, [("RING", False)])):
        cfg = compressor_default(ratio, 512, "prefill") | {"ROWS": rows}
        launches = compressor_launches(ratio, 512, "prefill", cfg)
        assert [kv for kv in launches[0][1] if kv[0] == "RING"] == want and len(launches) == 2 - want[0][1]
    assert "ROWS" in compressor_default(128, 512, "decode", "split")
    # PDL is a split decode knob; it reaches the kernels only where the target can launch dependents.
    cfg = compressor_default(128, 512, "decode", "split") | {"PDL": 1}
    for pdl in (False, True):
        for name, consts, _, _ in compressor_launches(128, 512, "decode", cfg, variant="split", pdl=pdl):
            assert dict(consts)["PDL"] is pdl, name
    assert any("PDL" in p for p in compressor_problems(128, 512, "decode", cfg | {"PDL": 2}, "split"))
    assert any("ROWS" in p for p in compressor_problems(128, 512, "decode", compressor_default(
        128, 512, "decode", "split") | {"ROWS": 3}, "split"))
    assert any("BLOCK_S" in p for p in compressor_problems(4, 512, "decode", {"BLOCK_S": 16, "num_warps": 4,
                                                                               "num_stages": 1}))
    assert any("per thread" in p for p in compressor_problems(128, 512, "decode", {"BLOCK_S": 64, "num_warps": 4,
                                                                                    "num_stages": 1}))
    assert compressor_problems(4, 512, "prefill", {"BLOCK_S": 8}) != []
    with pytest.raises(ValueError, match="ratio"):
        compressor_space(8, 512, "decode")


def test_bad_inputs_name_the_argument(device, gen) -> None:
    pb = make_problem(4, 512, "pool", 1, 2, device, gen)
    i32 = dict(dtype=torch.int32, device=device)
    good = dict(kv_score=pb.rows(2), state=pb.state, ring_base=torch.zeros(2, **i32),
                seq_lens=torch.ones(2, **i32), ape=pb.ape, norm_weight=pb.norm_weight, freqs=pb.freqs,
                out_loc=torch.zeros(2, **i32), dest=pb.dest)
    cases = [
        (dict(ratio=8), "ratio: expected one of"),
        (dict(kv_score=pb.rows(2)[:, :1000]), "kv_score: width 1000"),
        (dict(kv_score=pb.rows(2).double()), "kv_score: expected dtype torch.float32"),
        (dict(state=pb.state[:, :1024]), r"state: expected shape \[\*, 2048\]"),
        (dict(ring_base=torch.zeros(3, **i32)), r"ring_base: expected shape \[2\]"),
        (dict(seq_lens=torch.ones(2, dtype=torch.int64, device=device)), "seq_lens: expected dtype torch.int32"),
        (dict(ape=pb.ape[:4]), r"ape: expected shape \[8, 512\]"),
        (dict(freqs=pb.freqs[:, :32]), r"freqs: expected shape \[\*, 64\]"),
        (dict(norm_weight=pb.norm_weight[:128]), r"norm_weight: expected shape \[512\]"),
        (dict(out_loc=torch.zeros(2, 1, **i32)), r"out_loc: expected shape \[2\]"),
        (dict(ring_size=12), "ring_size: expected 8 or 16"),
        (dict(dest=torch.zeros(4, 512, dtype=torch.float16, device=device)), "dest: expected an FP8 pool view"),
        (dict(dest=torch.zeros(4, 256, device=device)), r"dest: expected shape \[\*, 512\]"),
        (dict(config={"BLOCK_S": 3, "num_warps": 4, "num_stages": 1}), "config: BLOCK_S"),
        (dict(variant="nope"), "variant: expected one of"),
        (dict(fp8="e5m2"), "fp8: expected one of"),
    ]
    for override, message in cases:
        kw = dict(ratio=4, ring_size=8) | good | override
        with pytest.raises(ValueError, match=message):
            compress_decode(**kw)
    small = make_problem(4, 128, "pool", 1, 2, device, gen)
    kw = good | dict(kv_score=small.rows(2), state=small.state, ape=small.ape, norm_weight=small.norm_weight)
    with pytest.raises(ValueError, match="dest: an FP8 pool holds rows of 512"):
        compress_decode(**kw, ratio=4, ring_size=8)
    other = "meta" if device == "cpu" else "cpu"
    with pytest.raises(ValueError, match="ape: expected"):
        compress_decode(**(good | dict(ape=pb.ape.to(other))), ratio=4, ring_size=8)
    n = 5
    pre = dict(kv_score=pb.rows(n), cu_seqlens=torch.tensor([0, n], **i32), prefix_lens=torch.zeros(1, **i32),
               state=pb.state, ring_base=torch.zeros(1, **i32), ape=pb.ape, norm_weight=pb.norm_weight,
               freqs=pb.freqs, out_loc=torch.zeros(n, **i32), dest=pb.dest)
    for override, message in [(dict(cu_seqlens=torch.tensor([0, n], device=device)), "cu_seqlens: expected dtype"),
                              (dict(prefix_lens=torch.zeros(2, **i32)), r"prefix_lens: expected shape \[1\]"),
                              (dict(out_loc=torch.zeros(n - 1, **i32)), r"out_loc: expected shape \[5\]")]:
        with pytest.raises(ValueError, match=message):
            compress_prefill(**(pre | override), ratio=4, ring_size=8)


@triton.jit
def _encode_kernel(src, dst, n, FP8: tl.constexpr, BLOCK: tl.constexpr):
    o = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = o < n
    tl.store(dst + o, encode_fp8(tl.load(src + o, mask=m, other=0.0), FP8), mask=m)


@pytest.mark.parametrize("fp8", L.FP8_FLAVOURS)
def test_encode_fp8_matches_torch(fp8, device, gen) -> None:
    """Byte-exact against torch's casts on every code, every tie, its neighbours, subnormals, randoms;
    beyond the maximum the encoder saturates (torch gives NaN there)."""
    dtype, fmax = L.FP8_TORCH_DTYPE[fp8], L.FP8_MAX[fp8]
    codes = torch.arange(256, dtype=torch.uint8).view(dtype).float()
    codes = codes[torch.isfinite(codes)].unique()
    mids = (codes[1:] + codes[:-1]) / 2
    up, down = torch.full_like(mids, math.inf), torch.full_like(mids, -math.inf)
    vals = torch.cat([codes, mids, torch.nextafter(mids, up), torch.nextafter(mids, down),
                      torch.randn(20000, generator=gen) * 50, torch.randn(5000, generator=gen) * 2**-8,
                      torch.tensor([0.0, 1e-30, 1e-45, 2.0**-10, 2.0**-11, 3 * 2.0**-11, fmax])])
    vals = torch.cat([vals, -vals]).clamp(-fmax, fmax)
    out = torch.empty(vals.numel(), dtype=torch.uint8, device=device)
    _encode_kernel[(triton.cdiv(vals.numel(), 1024),)](vals.to(device), out, vals.numel(), FP8=fp8, BLOCK=1024)
    expect = vals.to(dtype).view(torch.uint8)
    bad = out.cpu() != expect
    assert not bool(bad.any()), f"{int(bad.sum())} codes differ, e.g. {vals[bad][:5].tolist()}"
    special = torch.tensor([fmax * 1.01, 1e30, math.inf, -math.inf, -fmax * 3, math.nan, -0.0])
    out = torch.empty(7, dtype=torch.uint8, device=device)
    _encode_kernel[(1,)](special.to(device), out, 7, FP8=fp8, BLOCK=8)
    dec = out.cpu().view(dtype).float()
    assert dec[:5].tolist() == [fmax, fmax, fmax, -fmax, -fmax]
    assert math.isnan(dec[5])
    assert int(out[6]) == (0x80 if fp8 == "e4m3fn" else 0), "-0: e4m3fn keeps the sign, fnuz has no -0"


def test_kernels_do_not_call_the_reference() -> None:
    import dsv4_tune.kernels.compressor as mod

    with open(mod.__file__) as f:
        assert "reference" not in f.read()
