"""A DSV4 attention backend written against FlashMLA's interface, run on dsv4-tune by one import.

The backend is the engine's code, unchanged but for the import: per forward batch it makes the
scheduling metadata once (``get_mla_metadata``), then each layer calls ``flash_mla_with_kvcache``
over its sliding-window pool and its compressed (C4) pool, the new token of each request being one
query.  The step is checked against ``dsv4_tune.sparse_decode`` on the same inputs and, on a GPU,
captured in a CUDA graph (metadata made before the capture, as engines do) and replayed.

    python examples/flash_mla_decode_step.py [--batch 4] [--heads 64] [--layers 2]

With no GPU it runs on the Triton interpreter at the sizes given (keep them small).  The pools and
indices are random stand-ins for the engine's.
"""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> dict[str, bool]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before dsv4_tune's kernels are imported
    import dsv4_tune
    from dsv4_tune.compat import flash_mla  # was: import flash_mla
    from dsv4_tune.runtime.target import device_flavour
    from dsv4_tune.tuner.inputs import make_query, make_scope, make_sink

    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(0)
    b, h = args.batch, args.heads
    fp8 = device_flavour(torch.empty(0, device=device))  # the engine's pools hold this GPU's flavour
    # Per layer: the SWA pool (page 64, 128 candidates a request) and the C4 pool (page 2, 256).
    swa = [make_scope(b, 1, 128, 64, fp8=fp8, device=device, topk_length="random", gen=gen)
           for _ in range(args.layers)]
    c4 = [make_scope(b, 1, 256, 2, fp8=fp8, device=device, topk_length="random", gen=gen)
          for _ in range(args.layers)]
    sinks = [make_sink(h, kind="finite", device=device, gen=gen) for _ in range(args.layers)]

    class Backend:
        """The engine's attention backend, as written for FlashMLA."""

        def init_forward_metadata(self) -> None:
            self.sched_meta, _ = flash_mla.get_mla_metadata()

        def forward_decode(self, q: torch.Tensor, layer: int) -> torch.Tensor:
            out, _lse = flash_mla.flash_mla_with_kvcache(
                q=q.unsqueeze(1), k_cache=swa[layer].kv_cache, block_table=None, cache_seqlens=None,
                head_dim_v=512, tile_scheduler_metadata=self.sched_meta, softmax_scale=512**-0.5,
                is_fp8_kvcache=True, indices=swa[layer].indices, attn_sink=sinks[layer],
                extra_k_cache=c4[layer].kv_cache, extra_indices_in_kvcache=c4[layer].indices,
                topk_length=swa[layer].topk_length, extra_topk_length=c4[layer].topk_length)
            return out.squeeze(1)

    backend = Backend()

    def step(q: torch.Tensor) -> list[torch.Tensor]:
        return [backend.forward_decode(q[layer], layer) for layer in range(args.layers)]

    q = torch.stack([make_query(b, 1, h, device=device, gen=gen)[:, 0] for _ in range(args.layers)])
    backend.init_forward_metadata()
    got = step(q)
    want = [dsv4_tune.sparse_decode(q[i].unsqueeze(1), swa[i].kv_cache, swa[i].indices,
                                    topk_length=swa[i].topk_length, extra_k_cache=c4[i].kv_cache,
                                    extra_indices=c4[i].indices, extra_topk_length=c4[i].topk_length,
                                    attn_sink=sinks[i], sm_scale=512**-0.5)[0].squeeze(1)
            for i in range(args.layers)]
    results = {"same_as_sparse_decode": all(torch.equal(a, w) for a, w in zip(got, want, strict=True))}
    if device == "cuda":
        static_q = q.clone()
        backend.init_forward_metadata()  # the captured batch size's metadata, made before capture
        step(static_q)  # warm up: compiles kernels and sizes the workspace
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = step(static_q)
        graph.replay()
        torch.cuda.synchronize()
        results["cuda_graph"] = all(torch.equal(a, w) for a, w in zip(captured, want, strict=True))
    print(" ".join(f"{k}: {'yes' if v else 'NO'}" for k, v in results.items()))
    return results


if __name__ == "__main__":
    sys.exit(0 if all(main().values()) else 1)
