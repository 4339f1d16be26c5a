"""One DSV4 attention decode step as a serving engine writes it with dsv4-tune.

Per step, for a batch of requests with one new token each: the fused Q/K RMSNorm, the C4
compressor (writes the new compressed key rows into the C4 pool at block boundaries), then sparse
decode attention over the sliding-window pool and the C4 pool in one softmax.  The policy is chosen
in-process (``dsv4_tune.use_policy``), the ops are the ``torch.ops.dsv4_tune`` custom ops, the step
is ``torch.compile``'d with ``fullgraph=True`` and, on a GPU, captured in a CUDA graph and replayed.
It checks that every way of running the step gives the eager step's outputs.

    python examples/decode_step.py [--policy FILE] [--batch 8] [--heads 64]

With no GPU it runs on the Triton interpreter at the sizes given (keep them small).  The inputs are
random stand-ins for the engine's own tensors (pools, indices, projections).
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> dict[str, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--policy", help="policy file (default: the one chosen for this GPU)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--heads", type=int, default=64)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before dsv4_tune's kernels are imported
    import dsv4_tune
    import dsv4_tune.serving.torch_ops
    from dsv4_tune.tuner.inputs import make_query, make_scope, make_sink
    from dsv4_tune.tuner.op_cases import make_compress_inputs

    if args.policy:
        dsv4_tune.use_policy(args.policy)  # in-process, instead of DSV4_TUNE_POLICY; raises if unusable
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    b, h = args.batch, args.heads
    fp8 = "e4m3fnuz" if device == "cuda" and "gfx942" in getattr(
        torch.cuda.get_device_properties(0), "gcnArchName", "") else "e4m3fn"  # the pools' flavour

    # Stand-ins for the engine's state: the SWA pool (128 tokens per request), the compressor's ring
    # and the C4 pool it writes, indices into both pools, the new token's projections.
    swa = make_scope(b, 1, 128, 64, fp8=fp8, device=device, topk_length="full", gen=gen)
    comp = make_compress_inputs(dict(ratio=4, head_dim=512, mode="decode"), b, device, boundary_every=1, fp8=fp8)
    c4_pool = comp.dest
    c4_slots = torch.arange(c4_pool.shape[0] * c4_pool.shape[1], dtype=torch.int32, device=device)
    c4_idx = c4_slots[: min(64, c4_slots.numel())].repeat(b, 1).view(b, 1, -1).contiguous()
    q = make_query(b, 1, h, device=device, gen=gen)
    k_new = torch.randn(b, 1, 512, generator=gen).to(device, torch.bfloat16)
    sink = make_sink(h, kind="finite", device=device, gen=gen)
    ops = torch.ops.dsv4_tune

    def step(q: torch.Tensor, k_new: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        qn, kn = ops.qk_norm(q.view(b, h, 512), k_new, None, None)
        kv_score, _, *rest, _ = comp.args
        ops.compress_decode(kv_score, comp.state, *rest, c4_pool, 4, comp.kw["ring_size"], 1e-6, fp8)
        out, lse = ops.sparse_decode(qn.view(b, 1, h, 512), swa.kv_cache, swa.indices, swa.topk_length, c4_pool,
                                     c4_idx, None, sink, 512**-0.5, fp8)
        return out, lse, kn

    eager = step(q, k_new)
    compiled = torch.compile(step, fullgraph=True, backend="inductor" if device == "cuda" else "aot_eager")
    results = {"compiled": _same(eager, compiled(q, k_new))}
    if device == "cuda":
        static_q, static_k = q.clone(), k_new.clone()
        compiled(static_q, static_k)  # warm up: compiles kernels and allocates workspace before capture
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = compiled(static_q, static_k)
        graph.replay()
        torch.cuda.synchronize()
        results["cuda_graph"] = _same(eager, captured)
    print(" ".join(f"{k}: {'same as eager' if v else 'DIFFERENT'}" for k, v in results.items()))
    return results


def _same(a: tuple, b: tuple) -> bool:
    import torch

    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


if __name__ == "__main__":
    sys.exit(0 if all(main().values()) else 1)
