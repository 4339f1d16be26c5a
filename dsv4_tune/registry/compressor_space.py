"""Config spaces of the DSV4 compressor and fused Q/K-norm kernels: pure functions, no torch/triton.

A config is a plain dict of ints.  The compressor has two variants (same API, ``variant=``):

* ``fused``: one program per compressed row holds the whole head_dim row, pools the window in
  ``BLOCK_S``-position tiles with an online softmax, then RMSNorm + RoPE + store from registers.
  Decode is one launch; prefill is a compress launch and a ring-write launch (one launch for C4
  with ROWS >= 2, whose block 0 writes the ring after the only windows that read it).
* ``split``: the pooling is spread over ``head_dim / BLOCK_D`` programs per row into an fp32
  workspace, and a second launch does RMSNorm + RoPE + store (and in decode the ring write).  One
  more launch, but ``head_dim / BLOCK_D`` times the parallelism: it wins when few rows are produced
  (small decode batches, short prefills), above all for C128, whose window is 128 x 1024 fp32
  (512 KB) per row.

Knobs: ``BLOCK_S`` window positions per softmax tile (divides K = 8 or 128), ``BLOCK_D`` columns per
pooling program (split only), ``ROWS`` compressed rows per program (prefill) or requests per
program (split decode), ``PDL`` (split decode, 0 or 1: the finish kernel as a programmatic dependent
launch of the pooling kernel on CUDA sm90 and up, a plain launch elsewhere), ``num_warps``,
``num_stages``.
"""

from __future__ import annotations

from itertools import product

from dsv4_tune.registry.intmath import next_pow2

RATIOS = (4, 128)
HEAD_DIMS = (512, 128)
MODES = ("decode", "prefill")
VARIANTS = ("fused", "split")
BLOCK_S_CHOICES = (4, 8, 16, 32, 64, 128)
BLOCK_D_CHOICES = (32, 64, 128)
ROWS_CHOICES = (1, 2, 4)
DECODE_ROWS_CHOICES = (1, 2, 4, 8, 16)  # split decode: requests per program
PDL_CHOICES = (0, 1)  # split decode: the finish kernel launched as a programmatic dependent
NUM_WARPS_CHOICES = (1, 2, 4, 8)
NUM_STAGES_CHOICES = (1, 2)
MAX_TILE_PER_THREAD = 64  # fp32 kv + score elements of one tile per thread: more spills on sm90/gfx9
FINISH_WARPS = {512: 4, 128: 2}  # the norm + RoPE + store launch of the split variant (not tuned)


def default_variant(ratio: int) -> str:
    """The variant used without a plan: C128 pools a 128 x 1024 fp32 window per row, so one program
    per row (fused) leaves the GPU idle below a row per SM; the split variant was 3.7x faster at
    every size of the H100 sweep.  C4's 8-position window is fastest fused."""
    return "split" if ratio == 128 else "fused"


def window(ratio: int) -> int:
    """K, the pooling window: 8 positions for C4 (overlapping blocks), 128 for C128."""
    return ratio * (2 if ratio == 4 else 1)


def _check_problem(ratio: int, head_dim: int, mode: str, variant: str) -> None:
    if ratio not in RATIOS:
        raise ValueError(f"ratio: expected one of {RATIOS}, got {ratio}")
    if head_dim not in HEAD_DIMS:
        raise ValueError(f"head_dim: expected one of {HEAD_DIMS}, got {head_dim}")
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant: expected one of {VARIANTS}, got {variant!r}")


def config_keys(mode: str, variant: str) -> tuple[str, ...]:
    """The keys a config of ``variant`` in ``mode`` has, no more, no fewer."""
    keys = ("BLOCK_S", "num_warps", "num_stages")
    if variant == "split":
        keys = ("BLOCK_D", *keys)
    if mode == "prefill" or variant == "split":
        keys = (*keys, "ROWS")
    if mode == "decode" and variant == "split":
        keys = (*keys, "PDL")
    return keys


def rows_choices(mode: str, variant: str) -> tuple[int, ...]:
    """The ROWS a config of ``variant`` in ``mode`` may take ((1,) where it has no ROWS key)."""
    if mode == "prefill":
        return ROWS_CHOICES
    return DECODE_ROWS_CHOICES if variant == "split" else (1,)


def upgrade_config(mode: str, variant: str, config: dict[str, int]) -> dict[str, int]:
    """``config`` as this version reads it: split decode configs written before they had ROWS ran
    one request per program (ROWS = 1), and before PDL, two plain launches (PDL = 0)."""
    if mode == "decode" and variant == "split":
        return {"ROWS": 1, "PDL": 0, **config}
    return config


def compressor_problems(
    ratio: int, head_dim: int, mode: str, config: dict[str, int], variant: str = "fused"
) -> list[str]:
    """Why ``config`` is not a valid config of ``variant`` for (ratio, head_dim, mode); empty if valid."""
    _check_problem(ratio, head_dim, mode, variant)
    keys = config_keys(mode, variant)
    if set(config) != set(keys):
        return [f"config: expected the keys {sorted(keys)}, got {sorted(config)}"]
    out = []
    k = window(ratio)
    bs, warps = config["BLOCK_S"], config["num_warps"]
    bd = config["BLOCK_D"] if variant == "split" else head_dim
    if bs not in BLOCK_S_CHOICES or bs > k:
        out.append(f"BLOCK_S: expected one of {[b for b in BLOCK_S_CHOICES if b <= k]} (window {k}), got {bs}")
    if variant == "split" and (bd not in BLOCK_D_CHOICES or bd > head_dim):
        out.append(f"BLOCK_D: expected one of {[b for b in BLOCK_D_CHOICES if b <= head_dim]}, got {bd}")
    if warps not in NUM_WARPS_CHOICES:
        out.append(f"num_warps: expected one of {NUM_WARPS_CHOICES}, got {warps}")
    if config["num_stages"] not in NUM_STAGES_CHOICES:
        out.append(f"num_stages: expected one of {NUM_STAGES_CHOICES}, got {config['num_stages']}")
    if config["num_stages"] > 1 and bs == k:
        out.append("num_stages: > 1 only pipelines a window of several BLOCK_S tiles")
    if "ROWS" in config and config["ROWS"] not in rows_choices(mode, variant):
        out.append(f"ROWS: expected one of {rows_choices(mode, variant)}, got {config['ROWS']}")
    if "PDL" in config and config["PDL"] not in PDL_CHOICES:
        out.append(f"PDL: expected one of {PDL_CHOICES}, got {config['PDL']}")
    if out:
        return out
    tile, threads = bs * bd, 32 * warps
    if 2 * tile > MAX_TILE_PER_THREAD * threads:
        out.append(f"a {bs} x {bd} tile needs {2 * tile // threads} kv + score values per thread "
                   f"(> {MAX_TILE_PER_THREAD}): raise num_warps or lower BLOCK_S")
    if tile < threads:
        out.append(f"a {bs} x {bd} tile has fewer elements than the {threads} threads of {warps} warps")
    if variant == "fused" and head_dim < threads:
        out.append(f"head_dim {head_dim} is smaller than the {threads} threads of {warps} warps")
    return out


def compressor_space(ratio: int, head_dim: int, mode: str, variant: str = "fused") -> list[dict[str, int]]:
    """Every valid config of ``variant`` for (ratio, head_dim, mode), in a fixed order."""
    _check_problem(ratio, head_dim, mode, variant)
    k = window(ratio)
    keys = config_keys(mode, variant)
    # PDL outermost: the tuner's coarse stage takes configs spread evenly through this list, so
    # both launch modes get seeds (innermost, an even stride would only ever pick one of them).
    grid = product(PDL_CHOICES if "PDL" in keys else (None,),
                   BLOCK_D_CHOICES if variant == "split" else (None,),
                   BLOCK_S_CHOICES, NUM_WARPS_CHOICES, NUM_STAGES_CHOICES, rows_choices(mode, variant))
    out, seen = [], set()
    for pdl, bd, bs, warps, stages, rows in grid:
        cfg = {"BLOCK_S": min(bs, k), "num_warps": warps, "num_stages": stages}
        if bd is not None:
            cfg["BLOCK_D"] = bd
        if "ROWS" in keys:
            cfg["ROWS"] = rows
        if pdl is not None:
            cfg["PDL"] = pdl
        ident = tuple(cfg.items())  # BLOCK_S is clamped to the window: some configs repeat
        if ident not in seen and not compressor_problems(ratio, head_dim, mode, cfg, variant):
            seen.add(ident)
            out.append(cfg)
    return out


def compressor_default(ratio: int, head_dim: int, mode: str, variant: str = "fused") -> dict[str, int]:
    """A safe untuned config: 64 tile values per thread, no pipelining, one row per program."""
    _check_problem(ratio, head_dim, mode, variant)
    k = window(ratio)
    bd = 64 if variant == "split" else head_dim
    warps = 4 if bd >= 256 else 2
    bs = min(k, 64 * 32 * warps // (2 * bd))
    cfg = {"BLOCK_S": bs, "num_warps": warps, "num_stages": 1}
    if variant == "split":
        cfg["BLOCK_D"] = bd
    if "ROWS" in config_keys(mode, variant):
        cfg["ROWS"] = 1
    if "PDL" in config_keys(mode, variant):
        cfg["PDL"] = 0  # portable; a policy turns it on where the sweep found it faster
    if ratio == 128 and variant == "fused" and head_dim == 512:  # H100: 8 x 512 tiles beat 16 x 512 on 8 warps
        cfg.update(BLOCK_S=8, num_warps=4)
    if ratio == 128 and variant == "split":
        # H100: the whole 128-position window in one tile of 32 columns (one memory round trip) is
        # 3.5x the fused kernel for a single row (decode bs = 1: 14 vs 50 us, prefill 1K: 16 vs 51).
        cfg.update(BLOCK_D=32, BLOCK_S=128, num_warps=4)
    problems = compressor_problems(ratio, head_dim, mode, cfg, variant)
    assert not problems, problems
    return cfg


# ---------------------------------------------------------------------------------------------
# Fused Q/K RMSNorm

QK_ROWS_CHOICES = (1, 2, 4, 8, 16)
QK_NUM_WARPS_CHOICES = (1, 2, 4, 8)


def qk_norm_problems(head_dim_q: int, head_dim_k: int, config: dict[str, int]) -> list[str]:
    """Why ``config`` is not a valid fused Q/K-norm config for these head dims; empty if valid."""
    for name, d in (("head_dim_q", head_dim_q), ("head_dim_k", head_dim_k)):
        if d < 1:
            raise ValueError(f"{name}: expected >= 1, got {d}")
    if set(config) != {"ROWS", "num_warps"}:
        return [f"config: expected the keys ['ROWS', 'num_warps'], got {sorted(config)}"]
    rows, warps = config["ROWS"], config["num_warps"]
    out = []
    if rows not in QK_ROWS_CHOICES:
        out.append(f"ROWS: expected one of {QK_ROWS_CHOICES}, got {rows}")
    if warps not in QK_NUM_WARPS_CHOICES:
        out.append(f"num_warps: expected one of {QK_NUM_WARPS_CHOICES}, got {warps}")
    if out:
        return out
    big = rows * next_pow2(max(head_dim_q, head_dim_k))
    if big > 64 * 32 * warps:
        out.append(f"{rows} rows of {next_pow2(max(head_dim_q, head_dim_k))} need {big // (32 * warps)} values "
                   "per thread (> 64): raise num_warps or lower ROWS")
    if rows * next_pow2(min(head_dim_q, head_dim_k)) < 32 * warps:
        out.append(f"{rows} rows of {next_pow2(min(head_dim_q, head_dim_k))} leave threads of {warps} warps idle")
    return out


def qk_norm_space(head_dim_q: int, head_dim_k: int) -> list[dict[str, int]]:
    """Every valid fused Q/K-norm config for these head dims."""
    return [
        {"ROWS": r, "num_warps": w}
        for r in QK_ROWS_CHOICES
        for w in QK_NUM_WARPS_CHOICES
        if not qk_norm_problems(head_dim_q, head_dim_k, {"ROWS": r, "num_warps": w})
    ]


def qk_norm_default(head_dim_q: int, head_dim_k: int) -> dict[str, int]:
    """2 head rows per program, 16 values per thread for the widest head: the fastest of the configs
    timed on an H100 (head_dim 512, T 1..256, 64/128 Q heads), 6-9x eager PyTorch."""
    rows = 2
    warps = max(1, min(8, rows * next_pow2(max(head_dim_q, head_dim_k)) // (16 * 32)))
    cfg = {"ROWS": rows, "num_warps": warps}
    while qk_norm_problems(head_dim_q, head_dim_k, cfg) and cfg["num_warps"] > 1:
        cfg["num_warps"] //= 2
    if qk_norm_problems(head_dim_q, head_dim_k, cfg):  # tiny heads: the valid config nearest in shape
        space = qk_norm_space(head_dim_q, head_dim_k)
        if not space:
            raise ValueError(f"head_dim_q={head_dim_q}, head_dim_k={head_dim_k}: no valid Q/K-norm config")
        cfg = min(space, key=lambda c: (abs(c["ROWS"] - rows), c["num_warps"]))
    return cfg
