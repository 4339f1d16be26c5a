"""Which kernels a plan launches, with which constexprs, warps and stages, per arch: pure Python.

The compile check cross-compiles exactly these launches and keys its per-arch rules by them
(:mod:`dsv4_tune.registry.arch`); the kernels themselves are found by name in
:mod:`dsv4_tune.kernels.catalog`.  A launch is ``(kernel name, sorted constexprs, num_warps,
num_stages)``.
"""

from __future__ import annotations

from dsv4_tune.registry.compressor_space import FINISH_WARPS, compressor_problems, qk_norm_problems
from dsv4_tune.registry.intmath import next_pow2
from dsv4_tune.registry.layout import HEAD_DIM, Fp8Pair, fp8_flavour_for_arch, fp8_pairs_for_arch
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload

KernelLaunch = tuple[str, tuple[tuple[str, object], ...], int, int]  # name, constexprs, num_warps, num_stages
# fused_splitk's optional knob: 1 launches the combine as a programmatic dependent of the split
# kernel (CUDA sm90+: its launch overlaps the splits).  Absent means 0, so every plan and policy
# written before it reads as before.
PDL_KEY = "PDL"
# ws_sm90's optional knob (absent = 0): one program per SM looping over the (64 heads, token, split)
# items, the producer running ahead into the next item; a constexpr of its own kernel.
WS_PERSIST_KEY = "PERSIST"
# ws_sm90's optional knob (absent = 0): no warp specialization, one warpgroup a program and two
# programs an item (each computes one 256-column half of its output), for small T where a program's
# fixed cost is the time; a kernel of its own per tile size (:mod:`dsv4_tune.kernels.sm90.solo`: at
# BLOCK_N 32 the next tile's dequant runs under this tile's QK^T).
WS_SOLO_KEY = "SOLO"
# ws_sm90's optional knob (absent = 0): h_q a multiple of 128, the two items of a token's two head
# blocks run as one cluster of two CTAs, each gathering and converting one 256-column half of every
# K tile for both (FlashMLA's crossover; :mod:`dsv4_tune.runtime.cluster`; swept since 2026-12-06).
WS_CROSS_KEY = "CROSS"
# ws_sm90's optional knob (absent = 0), with SOLO only: a program takes 32 query heads, not 64 (the
# wgmma's other 32 rows are zeros never loaded), so its Q costs half the bytes before the first MMA
# and an item's head block is two programs' worth; for small T, where the SMs are not all busy and a
# program's own loads are its time (H100, in a graph: 4-7% faster where an item's programs are few;
# slower where they no longer fit one wave: the sweep decides).
WS_HEADS32_KEY = "HEADS32"
# ws_sm90's optional knob (absent = 0): an item's splits run as one cluster of CTAs and merge over
# DSMEM, so no partials go through global memory and no combine kernel runs.  The warp-specialized
# kernel: SPLIT_K 2, each CTA finalizing one 256-column half of the output from both splits'
# normalised partials (docs/ws-sm90-cluster-merge.md); SOLO's: SPLIT_K in WS_SOLO_MERGE_SPLITS, each
# CTA finalizing every SPLIT_K-th 32-column block of its program's half.  Which of them sweeps try:
# registry.variants.swept_modes.
WS_MERGE_KEY = "MERGE"
# SOLO's MERGE cluster sizes: those whose 32-column blocks a CTA receives from its peers fit its Q
# buffer (64 KiB: at most 8 blocks).
WS_SOLO_MERGE_SPLITS = (2, 3, 4, 8)
WS_SUB = 32  # ws_sm90: tokens its producer gathers and converts at a time
WS_MAXNREG = 168  # ws_sm90: registers per thread at entry (setmaxnreg then splits them 208 / 160 / 136)


def pdl_arch(arch: str) -> bool:
    """Whether kernels for ``arch`` can launch programmatic dependents (CUDA sm90 and up)."""
    return arch.startswith("sm") and arch[2:].isdigit() and int(arch[2:]) >= 90


def plan_kernels(plan: Plan, w: Workload, arch: str, fp8: Fp8Pair | None = None) -> list[KernelLaunch]:
    """The kernels ``plan`` launches for workload class ``w`` on ``arch`` (pools in the (main, extra)
    flavours ``fp8``, default the arch's for both; bf16 dots), as (kernel name, constexprs,
    num_warps, num_stages)."""
    c = plan.as_dict()
    fp8, x_fp8 = fp8 or (fp8_flavour_for_arch(arch),) * 2
    sink, split = w.has_sink, c.get("SPLIT_K", 1) > 1
    # The PDL and X_FP8 constexprs are named only where they are on (keys of the kernels without them
    # stay as they were): X_FP8 is the extra scope's flavour where it differs from the main scope's.
    pdl = {PDL_KEY: True} if c.get(PDL_KEY) and pdl_arch(arch) else {}
    x_flavour = {"X_FP8": x_fp8} if w.dual and x_fp8 != fp8 else {}

    def launch(name: str, warps: int, stages: int, **constexprs: object) -> KernelLaunch:
        return name, tuple(sorted(constexprs.items())), warps, stages

    out = []
    inline = plan.variant == "fused_splitk_inline"
    if plan.variant in ("fused", "fused_splitk", "fused_splitk_inline"):
        out.append(launch("_sparse_decode_kernel", c["num_warps"], c["num_stages"], HAS_LEN=w.has_len_main,
                          HAS_EXTRA=w.dual, X_HAS_LEN=w.dual and w.has_len_extra, HAS_SINK=sink,
                          SPLIT=2 if inline else split,
                          BLOCK_H=c["BLOCK_H"], BLOCK_N=c["BLOCK_N"], FP8=fp8, DOT="bf16", **pdl, **x_flavour))
    elif plan.variant == "gather_attend":
        if w.dual and c["ONE_LAUNCH"]:
            out.append(launch("_gather_dequant_dual_kernel", c["gather_warps"], 1, HAS_LEN=w.has_len_main,
                              X_HAS_LEN=w.has_len_extra, FP8=fp8, BLOCK_TK=c["BLOCK_TK"], **x_flavour))
        else:
            scopes = [(w.has_len_main, fp8)] + ([(w.has_len_extra, x_fp8)] if w.dual else [])
            for has_len, flavour in dict.fromkeys(scopes):
                out.append(launch("_gather_dequant_kernel", c["gather_warps"], 1, HAS_LEN=has_len, FP8=flavour,
                                  BLOCK_TK=c["BLOCK_TK"]))
        out.append(launch("_gathered_attention_kernel", c["num_warps"], c["num_stages"], HAS_SINK=sink, SPLIT=split,
                          BLOCK_H=c["BLOCK_H"], BLOCK_N=c["BLOCK_N"], DOT="bf16"))
    elif plan.variant == "ws_sm90" and c.get(WS_SOLO_KEY):
        name = "_solo_decode_kernel" if c["BLOCK_N"] == 2 * WS_SUB else "_solo_pipe_decode_kernel"
        out.append(launch(name, 4, 1, HAS_LEN=w.has_len_main, HAS_EXTRA=w.dual,
                          X_HAS_LEN=w.dual and w.has_len_extra, HAS_SINK=sink, SPLIT=split, BLOCK_N=c["BLOCK_N"],
                          SUB=WS_SUB, **pdl, **({"HB": 32} if c.get(WS_HEADS32_KEY) else {}),
                          **({WS_MERGE_KEY: c["SPLIT_K"]} if c.get(WS_MERGE_KEY) else {})))
    elif plan.variant == "ws_sm90":
        out.append(launch("_ws_decode_kernel", 4, 1, HAS_LEN=w.has_len_main, HAS_EXTRA=w.dual,
                          X_HAS_LEN=w.dual and w.has_len_extra, HAS_SINK=sink, SPLIT=split, BLOCK_N=c["BLOCK_N"],
                          SUB=WS_SUB, KSTAGES=c["KSTAGES"], STAGED=bool(c["STAGED"]),
                          PIPE=bool(c["PIPE"]), PERSIST=bool(c.get(WS_PERSIST_KEY, 0)), **pdl,
                          **({WS_CROSS_KEY: True} if c.get(WS_CROSS_KEY) else {}),
                          **({WS_MERGE_KEY: True} if c.get(WS_MERGE_KEY) else {})))
    if split and not inline and not c.get(WS_MERGE_KEY):
        out.append(launch("_combine_kernel", c["combine_warps"], 1, HAS_SINK=sink, BLOCK_H=c["COMBINE_BLOCK_H"],
                          **pdl))
    return out


def arch_plan_kernels(plan: Plan, w: Workload, arch: str) -> list[KernelLaunch]:
    """:func:`plan_kernels` in every pair of pool flavours built on ``arch`` (gfx942's mixed pair
    too, :func:`~dsv4_tune.registry.layout.fp8_pairs_for_arch`), each launch once."""
    return list(dict.fromkeys(k for pair in fp8_pairs_for_arch(arch) for k in plan_kernels(plan, w, arch, pair)))


def kernel_key(arch: str, launch: KernelLaunch) -> str:
    name, constexprs, warps, stages = launch
    return f"{arch}:{name}[{','.join(f'{k}={v}' for k, v in constexprs)}]w{warps}s{stages}"


def ring_in_kernel(ratio: int, rows: int) -> bool:
    """Whether the fused prefill kernel writes the ring itself: C4 with ROWS >= 2, where block 0 of
    a request holds both windows that read the ring (0 and 1) and can write it after them."""
    return ratio == 4 and rows >= 2


def compressor_launches(
    ratio: int, head_dim: int, mode: str, config: dict[str, int], *, variant: str = "fused",
    dest: str = "pool", fp8: str = "e4m3fn", eps: float = 1e-6, pdl: bool = False,
) -> list[KernelLaunch]:
    """The kernels one call launches, as (name, sorted constexprs, num_warps, num_stages).

    ``dest`` is "pool", "f32" or "bf16"; ``pdl``: whether the target can launch programmatic
    dependents (:func:`~dsv4_tune.runtime.target.pdl_enabled`: CUDA sm90 and up), which a split
    decode config with ``PDL`` 1 then does; the format of :func:`plan_kernels`, so that the cross
    compiler (:mod:`dsv4_tune.tuner.crosscompile`) can build them for any arch.
    """
    problems = compressor_problems(ratio, head_dim, mode, config, variant)
    if problems:
        raise ValueError("config: " + "; ".join(problems))
    coff, c = 2 if ratio == 4 else 1, config
    pdl = pdl and bool(c.get("PDL", 0))
    w, st = c["num_warps"], c["num_stages"]
    width = 2 * coff * head_dim
    fin_w = FINISH_WARPS[head_dim]
    tail = {"DEST": dest, "FP8": fp8, "EPS": eps}

    def launch(name: str, warps: int, stages: int, **kw: object) -> KernelLaunch:
        return name, tuple(sorted(kw.items())), warps, stages

    if mode == "decode":
        if variant == "fused":
            return [launch("_compress_decode_kernel", w, st, R=ratio, COFF=coff, D=head_dim, BLOCK_S=c["BLOCK_S"],
                           **tail)]
        return [launch("_compress_decode_split_kernel", w, st, R=ratio, COFF=coff, D=head_dim,
                       BLOCK_D=c["BLOCK_D"], BLOCK_S=c["BLOCK_S"], ROWS=c["ROWS"], PDL=pdl),
                launch("_compress_decode_finish_kernel", fin_w, 1, R=ratio, D=head_dim, **tail, W=width, PDL=pdl)]
    if variant == "fused":
        ring = ring_in_kernel(ratio, c["ROWS"])
        fused = launch("_compress_prefill_kernel", w, st, R=ratio, COFF=coff, D=head_dim, BLOCK_S=c["BLOCK_S"],
                       ROWS=c["ROWS"], **tail, RING=ring)
        return [fused] if ring else [fused, launch("_ring_write_kernel", 4, 1, W=width)]
    return [launch("_compress_prefill_split_kernel", w, st, R=ratio, COFF=coff, D=head_dim, BLOCK_D=c["BLOCK_D"],
                   BLOCK_S=c["BLOCK_S"], ROWS=c["ROWS"]),
            launch("_compress_prefill_finish_kernel", fin_w, 1, R=ratio, D=head_dim, ROWS=c["ROWS"], W=width, **tail)]


def qk_norm_launch(
    q_shape: tuple[int, int, int], k_shape: tuple[int, int, int], config: dict[str, int], *,
    dtypes: tuple[str, str, str, str] = ("bf16", "bf16", "bf16", "bf16"), weights: tuple[bool, bool] = (True, False),
    eps: float = 1e-6,
) -> KernelLaunch:
    """The one launch of :func:`dsv4_tune.serving.qk_norm.qk_norm` as (name, sorted constexprs, num_warps, num_stages).

    ``dtypes`` = (q, out_q, k, out_k) as "bf16" / "f32"; ``weights`` = (has q weight, has k weight).
    """
    dq, dk = q_shape[2], k_shape[2]
    problems = qk_norm_problems(dq, dk, config)
    if problems:
        raise ValueError("config: " + "; ".join(problems))
    consts = {"DQ": dq, "DK": dk, "BLOCK_Q": next_pow2(dq), "BLOCK_K": next_pow2(dk), "ROWS": config["ROWS"],
              "QT": dtypes[0], "OQT": dtypes[1], "KT": dtypes[2], "OKT": dtypes[3],
              "HAS_WQ": weights[0], "HAS_WK": weights[1], "EPS": float(eps)}
    return "_qk_norm_kernel", tuple(sorted(consts.items())), config["num_warps"], 1


def op_plan_kernels(plan: Plan, w: OpWorkload, arch: str) -> list[KernelLaunch]:
    """The kernels ``plan`` launches for ``w`` on ``arch`` as (name, constexprs, num_warps,
    num_stages), like :func:`plan_kernels` (the compile check's input):
    the compressor writes the arch's FP8 pool (head_dim 512) or bf16 rows, and its split decode
    uses programmatic dependent launch on CUDA archs (sm90 and up); the Q/K norm is bf16."""
    p = w.params_dict
    if w.op == "compress":
        dest = "pool" if p["head_dim"] == HEAD_DIM else "bf16"
        return compressor_launches(p["ratio"], p["head_dim"], p["mode"], plan.as_dict(), variant=plan.variant,
                                   dest=dest, fp8=fp8_flavour_for_arch(arch), pdl=pdl_arch(arch))
    q_shape, k_shape = (1, p["h_q"], p["head_dim_q"]), (1, p["h_k"], p["head_dim_k"])
    return [qk_norm_launch(q_shape, k_shape, plan.as_dict(), weights=(True, True))]
