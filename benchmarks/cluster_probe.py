"""Probe (sm90, Gluon, Triton 3.6): can two CTAs of a cluster share a dequantized K tile?

FlashMLA reaches 410 TFLOP/s at h128 (250 without it) by letting the two CTAs of a token's two
64-head blocks each convert half of every K tile and write it into both CTAs' shared memory
(``../shared/perf/README.md`` section 2).  ``ws_sm90``'s producer converts every tile once per
head block and is the slower side of its pipeline (``docs/ws-sm90.md``), so this is issue 29's
lever.  Gluon 3.6 has no cluster API; this probe checks, on the GPU, each piece a kernel needs:

- a kernel compiled for one CTA launched in clusters of two (the product's
  :class:`~dsv4_tune.runtime.jit.Launcher` with ``cluster=2``: Triton's launcher told the kernel
  has two CTAs a cluster, :mod:`dsv4_tune.runtime.cluster`);
- shared-memory addresses for inline PTX: ``global_smem`` (Triton's dynamic shared memory symbol)
  plus each allocation's offset (:func:`~dsv4_tune.runtime.cluster.shared_offsets`), baked in as
  constexprs (a second compile; the offsets cannot move since nothing that allocates changes);
- that a 128-byte-swizzled [64, 512] bf16 tile keeps each 256-column half contiguous (32 KiB), so
  one bulk copy moves a half: ``cp.async.bulk.shared::cluster.shared::cta`` into the peer CTA with
  ``complete_tx`` on the peer's mbarrier (which expected the bytes);
- a remote ``mbarrier.arrive`` (release at CTA scope) telling the peer that its half was read, so that
  neither CTA overwrites or exits while the other still reads (the PTX is the kernel's own,
  :mod:`dsv4_tune.kernels.sm90.cluster`);
- and what one exchange costs, over ITERS rounds in one launch.

Each CTA writes its column half (values depend on the round), sends it, waits for the peer's half,
checks the whole tile through a Gluon load (the layout a wgmma descriptor reads) and counts
mismatches.  ``python benchmarks/cluster_probe.py [--out DIR]`` on an sm90 GPU; ``--xcompile DIR``
cross-compiles on a CPU machine with the GPU machine's Triton (``PY=$(bash
../shared/tools/device-toolchain)``) and writes PTX / SASS / ptxas output there.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import fence_async_shared, mbarrier

from dsv4_tune.kernels.sm90.cluster import arrive_on_peer, cluster_sync, init_fence, send_to_peer
from dsv4_tune.runtime.cluster import max_active_clusters, shared_offsets
from dsv4_tune.runtime.jit import Launcher, kernel

HALF = gl.constexpr(64 * 256 * 2)  # bytes of one 256-column half of a [64, 512] bf16 tile


@kernel(jit=gluon.jit)
def _xover_probe(src_ptr, out_ptr, err_ptr, iters,
                 TILE_OFF: gl.constexpr, READY_OFF: gl.constexpr, DONE_OFF: gl.constexpr,
                 CHECK: gl.constexpr = True):
    K_SL: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=16, rank=2)
    K32: gl.constexpr = gl.NVMMASharedLayout(swizzle_byte_width=128, element_bitwidth=32, rank=2)
    tile = gl.allocate_shared_memory(gl.bfloat16, [64, 512], K_SL)
    ready = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    done = gl.allocate_shared_memory(gl.int64, [1], mbarrier.MBarrierLayout())
    mbarrier.init(ready, count=1)
    mbarrier.init(done, count=1)
    init_fence()
    fence_async_shared()
    gl.thread_barrier()
    HALF_L: gl.constexpr = gl.BlockedLayout([1, 4], [4, 8], [4, 1], [1, 0])
    FULL_L: gl.constexpr = gl.BlockedLayout([1, 4], [2, 16], [4, 1], [1, 0])
    r = gl.arange(0, 64, layout=gl.SliceLayout(1, HALF_L))
    c = gl.arange(0, 128, layout=gl.SliceLayout(0, HALF_L))
    rf = gl.arange(0, 64, layout=gl.SliceLayout(1, FULL_L))
    cf = gl.arange(0, 256, layout=gl.SliceLayout(0, FULL_L))
    cluster_sync()  # both CTAs' barriers initialised before any remote operation
    pid = gl.program_id(0)
    rank = pid % 2  # the CTA's rank in its cluster
    t32 = tile._reinterpret(gl.uint32, [64, 256], K32)
    base = src_ptr + (pid // 2) * (64 * 256)
    n_bad = gl.to_tensor(0)
    x0 = gl.load(base + r[:, None] * 256 + rank * 128 + c[None, :])
    for i in range(iters):
        x = (x0 + i).to(gl.uint32, bitcast=True)
        if rank == 0:
            t32.slice(0, 128, dim=1).store(x)
        else:
            t32.slice(128, 128, dim=1).store(x)
        fence_async_shared()  # my generic stores, before the async proxy reads them
        gl.thread_barrier()
        mbarrier.expect(ready, HALF)  # my arrival, and the peer's half to come
        send_to_peer(TILE_OFF + rank * HALF, READY_OFF, HALF)
        mbarrier.wait(ready, i & 1)
        if CHECK:  # without it a round is the exchange alone (its cost)
            got = t32.load(FULL_L)
            want = (gl.load(base + rf[:, None] * 256 + cf[None, :]) + i).to(gl.uint32, bitcast=True)
            n_bad += gl.sum(gl.sum((got != want).to(gl.int32), axis=1), axis=0)
        gl.thread_barrier()  # every thread has read the tile: the peer may send its next half
        arrive_on_peer(DONE_OFF)
        mbarrier.wait(done, i & 1)  # the peer has my half: I may write it again (or exit)
    gl.store(out_ptr + pid * (64 * 256) + rf[:, None] * 256 + cf[None, :], t32.load(FULL_L).to(gl.int32, bitcast=True))
    gl.atomic_add(err_ptr, n_bad)


def _offsets_constexprs(ttgir: str) -> dict[str, int]:
    offs = shared_offsets(ttgir)
    return {"TILE_OFF": offs["tile"], "READY_OFF": offs["ready"], "DONE_OFF": offs["done"]}


def _offsets(launch: Launcher, grid3: tuple[int, int, int], src, dst, err,
             check: bool) -> tuple[dict[str, int], object]:
    """The kernel's offsets constexprs, and the compile with zero offsets they were read from."""
    first = launch.compile(grid3, src, dst, err, 3, 0, 0, 0, check, num_warps=4, num_stages=1)
    return _offsets_constexprs(first.asm["ttgir"]), first  # type: ignore[attr-defined]


def xcompile(out: Path) -> None:
    """Compile for sm90 on a machine without a GPU (both passes) and write what ptxas says."""
    import subprocess

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.experimental.gluon._runtime import GluonASTSource

    sig = {"src_ptr": "*i32", "out_ptr": "*i32", "err_ptr": "*i32", "iters": "i32",
           "TILE_OFF": "constexpr", "READY_OFF": "constexpr", "DONE_OFF": "constexpr"}
    attrs = {(i,): [["tt.divisibility", 16]] for i in range(3)}

    def build(consts: dict[str, int]):
        src = GluonASTSource(fn=_xover_probe, signature=sig, constexprs=consts, attrs=attrs)
        return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": 4})

    first = build({"TILE_OFF": 0, "READY_OFF": 0, "DONE_OFF": 0})
    consts = _offsets_constexprs(first.asm["ttgir"])
    k = build(consts)
    assert _offsets_constexprs(k.asm["ttgir"]) == consts, "the offsets moved between the two compiles"
    out.mkdir(parents=True, exist_ok=True)
    (out / "probe.ptx").write_text(k.asm["ptx"])
    (out / "probe.cubin").write_bytes(k.asm["cubin"])
    bin_dir = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"
    sass = subprocess.run([str(bin_dir / "cuobjdump"), "--dump-sass", str(out / "probe.cubin")],
                          capture_output=True, text=True).stdout
    (out / "probe.sass").write_text(sass)
    info = subprocess.run([str(bin_dir / "ptxas"), "-arch=sm_90a", "-v", str(out / "probe.ptx"), "-o",
                           str(out / "ptxas.cubin")], capture_output=True, text=True)
    print(consts, k.metadata.shared, "bytes of shared memory")
    print((info.stderr + info.stdout).strip().splitlines()[-3:])
    ops = [op for op in ("UBLKCP", "MAPA", "SYNCS", "UCGABAR", "CCTL") if op in sass]
    print("SASS has", ops)


def run(out: Path, grid: int, check: bool = True) -> dict[str, object]:
    import torch

    src = torch.randint(0, 2**30, (grid // 2, 64, 256), dtype=torch.int32, device="cuda")
    dst = torch.full((grid, 64, 256), -1, dtype=torch.int32, device="cuda")
    err = torch.zeros(1, dtype=torch.int32, device="cuda")
    launch = Launcher(_xover_probe)
    grid3 = (grid, 1, 1)
    consts, _ = _offsets(launch, grid3, src, dst, err, check)
    k = launch.compile(grid3, src, dst, err, 3, *consts.values(), check, num_warps=4, num_stages=1)
    assert _offsets_constexprs(k.asm["ttgir"]) == consts, "the offsets moved between the two compiles"
    result: dict[str, object] = {"offsets": consts, "shared": k.metadata.shared, "grid": grid, "check": check,
                                 "device": torch.cuda.get_device_name()}
    timings = {}
    for iters in (2, 2, 100, 1000):  # not 1: Triton specializes an int argument of 1 (the binary is iters's)
        err.zero_()
        dst.fill_(-1)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        launch(grid3, src, dst, err, iters, *consts.values(), check, num_warps=4, num_stages=1, cluster=2)
        end.record()
        torch.cuda.synchronize()
        dt = start.elapsed_time(end) / 1e3
        want = (src.repeat_interleave(2, dim=0) + (iters - 1))
        final_ok = bool(torch.equal(dst, want))
        timings[iters] = {"s": dt, "mismatches": int(err.item()), "final_tile_exact": final_ok}
        print(f"iters {iters}: {dt * 1e6:.1f} us wall, mismatches {int(err.item())}, final tile exact {final_ok}")
    per = (timings[1000]["s"] - timings[100]["s"]) / 900
    result["timings"] = timings
    result["us_per_exchange"] = per * 1e6
    what = "write a half, 32 KiB to the peer, wait, read and check the tile, release" if check else \
        "write a half, 32 KiB to the peer, wait, release"
    print(f"grid {grid}: one round ({what}): {per * 1e6:.2f} us")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"cluster_probe-grid{grid}-check{int(check)}.json").write_text(json.dumps(result, indent=1, default=str))
    return result


def exchange_exactly(grid: int, iters: int) -> None:
    """Assert that ``iters`` rounds on ``grid`` CTAs are exact through the Launcher's compile-first
    call, its cached call, and a replay of a recorded call (the GPU test's body)."""
    import torch

    from dsv4_tune.runtime.recording import Recording, Replay

    src = torch.randint(0, 2**30, (grid // 2, 64, 256), dtype=torch.int32, device="cuda")
    want = src.repeat_interleave(2, dim=0) + (iters - 1)
    launch = Launcher(_xover_probe)
    grid3 = (grid, 1, 1)
    consts, first = _offsets(launch, grid3, src, src, src, True)
    fit = max_active_clusters(first, 2)  # 64 KiB a CTA: up to three a SM, so 1-3 clusters a pair of SMs
    sms = torch.cuda.get_device_properties(src.device).multi_processor_count
    assert fit is not None and sms // 4 <= fit <= 2 * sms, f"{fit} clusters of two at once on {sms} SMs"
    for how in ("first", "cached", "replay"):
        dst = torch.full((grid, 64, 256), -1, dtype=torch.int32, device="cuda")
        err = torch.zeros(1, dtype=torch.int32, device="cuda")
        args = (src, dst, err, iters, *consts.values(), True)
        if how == "replay":
            with Recording() as rec:
                launch(grid3, *args, num_warps=4, num_stages=1, cluster=2)
            replay = Replay.build(rec, [src, dst, err], [])
            assert replay is not None and rec.complete, "a cluster launch is replayable"
            dst.fill_(-1)
            err.zero_()
            replay([src.data_ptr(), dst.data_ptr(), err.data_ptr()])
        else:
            launch(grid3, *args, num_warps=4, num_stages=1, cluster=2)
        torch.cuda.synchronize()
        assert int(err.item()) == 0 and torch.equal(dst, want), f"{how}: the exchanged tiles differ"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("/tmp/cluster_probe"))
    parser.add_argument("--grid", type=int, default=132, help="CTAs (even: clusters of two)")
    parser.add_argument("--xcompile", type=Path, default=None, help="cross-compile into DIR (no GPU)")
    args = parser.parse_args()
    if args.xcompile is not None:
        xcompile(args.xcompile)
    else:
        run(args.out, args.grid)
        run(args.out, args.grid, check=False)


if __name__ == "__main__":
    main()
