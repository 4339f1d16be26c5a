"""The custom ops (issue 21): ``torch.compile(fullgraph=True)`` traces a step that calls them, and the
compiled step gives the eager step's outputs."""

from __future__ import annotations

import pytest
import torch

import dsv4_tune.serving.torch_ops  # noqa: F401  (registers torch.ops.dsv4_tune.*)
from dsv4_tune.tuner.op_cases import make_compress_inputs
from tests.test_sparse_decode import make_case

pytestmark = pytest.mark.gpu


def test_a_compiled_step_matches_eager(device, gen) -> None:
    case = make_case(device, gen, b=2, s_q=1, h=16, topk=64, x_topk=32, sink="finite")
    kw = case.kw
    comp = make_compress_inputs(dict(ratio=4, head_dim=512, mode="decode"), 2, device, boundary_every=1)
    ops = torch.ops.dsv4_tune

    def step(q, k, state, dest):
        q2 = q.view(q.shape[0], q.shape[2], q.shape[3])
        qn, kn = ops.qk_norm(q2, k, None, None)
        ops.compress_decode(*comp.args[:1], state, *comp.args[2:-1], dest, comp.kw["ratio"], comp.kw["ring_size"])
        out, lse = ops.sparse_decode(qn.view(q.shape), case.main.kv_cache, case.main.indices, kw["topk_length"],
                                     kw["extra_k_cache"], kw["extra_indices"], kw["extra_topk_length"],
                                     kw["attn_sink"], kw["sm_scale"])
        return out.float() * 2, lse, kn

    k = torch.randn(2, 1, 512, generator=gen).to(device, torch.bfloat16)
    states = [comp.state.clone() for _ in range(2)]
    dests = [comp.dest.clone() for _ in range(2)]
    eager = step(case.q, k, states[0], dests[0])
    compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(case.q, k, states[1], dests[1])
    for a, b in zip(eager, compiled, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(states[0], states[1]) and torch.equal(dests[0], dests[1]), "in-place writes happen"
    assert not torch.equal(dests[0], comp.dest), "the compressor wrote its rows"


def test_fake_implementations_give_the_shapes() -> None:
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q = torch.empty(3, 2, 16, 512, dtype=torch.bfloat16)
        kv = torch.empty(4, 64, 1, 584, dtype=torch.uint8)
        idx = torch.empty(3, 2, 64, dtype=torch.int32)
        out, lse = torch.ops.dsv4_tune.sparse_decode(q, kv, idx, None, None, None, None, None, 0.1)
        assert out.shape == (3, 2, 16, 512) and out.dtype == torch.bfloat16
        assert lse.shape == (3, 16, 2) and lse.dtype == torch.float32
        qn, kn = torch.ops.dsv4_tune.qk_norm(q[0], q[1, :, :1], None, None)
        assert qn.shape == (2, 16, 512) and kn.shape == (2, 1, 512)
