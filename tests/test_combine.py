"""The split-K combine for every split count 2..16, with empty splits and sinks."""

from __future__ import annotations

import pytest
import torch

from dsv4_tune.kernels.combine import launch_combine
from dsv4_tune.tuner.inputs import make_sink
from tests.helpers import assert_match, nan_like

pytestmark = pytest.mark.gpu


def combine_ref(part_o, part_lse, sink):
    """Merge in float64: weights exp(lse_i - M) over finite LSEs; sink as 1 / (1 + exp(sink - LSE))."""
    lse = part_lse.double()
    finite = torch.isfinite(lse)
    m = torch.where(finite, lse, -torch.inf).amax(0)
    lonely = torch.isneginf(m)
    w = torch.where(finite, torch.exp(lse - torch.where(lonely, 0, m)), 0)
    s = w.sum(0)
    o = torch.where((w > 0)[..., None], part_o.double(), 0)
    out = (w[..., None] * o).sum(0) / torch.where(lonely, 1, s)[..., None]
    total = torch.where(lonely, torch.inf, torch.where(lonely, 0, m) + torch.log(torch.where(lonely, 1, s)))
    if sink is not None:
        out = out * torch.sigmoid(total - sink.double())[..., None]
    out = torch.where(lonely[..., None], 0, out)
    return out, total


@pytest.mark.parametrize("split_k", list(range(2, 17)))
def test_combine_any_split_count(split_k, device, gen) -> None:
    n_tok, h, s_q = 4, 24, 2  # h not a multiple of the block
    part_o = torch.randn(split_k, n_tok, h, 512, generator=gen)
    part_lse = torch.randn(split_k, n_tok, h, generator=gen) * 3
    part_lse[torch.rand(part_lse.shape, generator=gen) < 0.25] = float("inf")  # empty splits
    part_lse[torch.rand(part_lse.shape, generator=gen) < 0.1] = float("-inf")
    part_lse[:, 1, :5] = float("inf")  # lonely rows: every split empty
    part_o[torch.isinf(part_lse)] = float("nan")  # an empty split's rows (never written) must never reach the output
    sink = make_sink(h, kind="mixed" if split_k % 2 else "none", gen=gen)
    ref_o, ref_lse = combine_ref(part_o, part_lse, sink)
    out = nan_like((n_tok // s_q, s_q, h, 512), torch.bfloat16, device)
    lse = nan_like((n_tok // s_q, h, s_q), torch.float32, device)
    for block_h in (4, 16):
        launch_combine(part_o.to(device), part_lse.to(device), None if sink is None else sink.to(device),
                       out, lse, s_q=s_q, BLOCK_H=block_h, num_warps=4)
        assert_match("out", out.reshape(n_tok, h, 512), ref_o.float(), atol=1e-6, rtol=2**-8)
        assert_match("lse", lse.transpose(1, 2).reshape(n_tok, h), ref_lse.float(), atol=1e-6, rtol=1e-6)
        assert bool((out.reshape(n_tok, h, 512)[1, :5] == 0).all())


def test_combine_rejects_unsupported_split_counts(device) -> None:
    for split_k in (1, 17):
        part_o = torch.zeros(split_k, 1, 16, 512, device=device)
        part_lse = torch.zeros(split_k, 1, 16, device=device)
        out = torch.empty(1, 1, 16, 512, dtype=torch.bfloat16, device=device)
        lse = torch.empty(1, 16, 1, device=device)
        with pytest.raises(ValueError, match=r"split_k: expected 2\.\.16"):
            launch_combine(part_o, part_lse, None, out, lse, s_q=1, BLOCK_H=16, num_warps=4)
