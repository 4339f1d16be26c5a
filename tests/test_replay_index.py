"""The replay cache's guard (which calls may reuse a recording) and the direct launcher's parameter
packing, on the CPU."""

from __future__ import annotations

import struct

import pytest
import torch

from dsv4_tune.runtime import replay_index
from dsv4_tune.runtime.cuda_driver import _slot, direct_launch
from dsv4_tune.runtime.replay_index import ReplayIndex, metadata_guard, python_guard

KEY = ("plan", "e4m3fn", 0.5)


def _changed(t: torch.Tensor) -> list[torch.Tensor]:
    """Tensors that differ from ``t`` in exactly one piece of metadata a replay depends on."""
    rows, cols = t.shape
    return [
        torch.empty(rows, cols + 1),  # shape
        torch.empty(rows, cols, dtype=torch.float64),  # dtype
        torch.empty(cols, rows).t(),  # strides
        torch.empty(rows, 2 * cols)[:, ::2],  # strides, same shape
        torch.empty(rows * cols),  # rank
    ]


@pytest.mark.parametrize("make", [metadata_guard, python_guard], ids=["torch", "python"])
def test_guard_accepts_same_metadata_and_rejects_any_change(make) -> None:
    a, b = torch.empty(4, 6), torch.zeros(3, dtype=torch.int32)
    guard = make([a, b])
    assert guard(torch.randn(4, 6), torch.ones(3, dtype=torch.int32)), "new tensors of the same metadata"
    for other in _changed(a):
        assert not guard(other, b), f"accepted {other.dtype} {tuple(other.shape)} {other.stride()}"
    assert not guard(a, torch.zeros(3, dtype=torch.int64))


def test_pytorch_guard_is_used_when_it_agrees() -> None:
    """On the PyTorch CI and the GPU machine run, the fast guard is the one in use."""
    assert replay_index._TORCH_GUARD_OK, "torch._C._dynamo.guards.TensorGuards changed: replays use the slow guard"


def test_cache_finds_the_kind_of_the_call() -> None:
    cache = ReplayIndex()
    a = torch.empty(4, 6)
    b = torch.empty(4, 7)
    assert cache.find(KEY, [a]) == (False, None)
    cache.remember(KEY, [a], "replay-a")
    cache.remember(KEY, [b], None)  # known not replayable
    assert cache.find(KEY, [torch.empty(4, 6)]) == (True, "replay-a")
    assert cache.find(KEY, [torch.empty(4, 7)]) == (True, None)
    assert cache.find(KEY, [torch.empty(4, 8)]) == (False, None)
    assert cache.find(("other", *KEY[1:]), [a]) == (False, None)
    assert list(cache.replays()) == ["replay-a"]
    cache.remember(("split", *KEY[1:]), [a], replay_index.BY_CAPTURE)  # a marker, not a replay
    assert cache.find(("split", *KEY[1:]), [a]) == (True, replay_index.BY_CAPTURE)
    assert list(cache.replays()) == ["replay-a"]


def test_cache_stays_bounded() -> None:
    cache = ReplayIndex()
    for n in range(ReplayIndex.PER_KEY + 3):
        cache.remember(KEY, [torch.empty(n + 1)], n)
    assert len(cache) == ReplayIndex.PER_KEY
    assert cache.find(KEY, [torch.empty(1)]) == (False, None), "the oldest kind under a key goes first"
    assert cache.find(KEY, [torch.empty(ReplayIndex.PER_KEY + 3)])[1] == ReplayIndex.PER_KEY + 2
    for n in range(ReplayIndex.MAX_KINDS):
        cache.remember((n,), [torch.empty(1)], n)
    assert len(cache) <= ReplayIndex.MAX_KINDS, "the cache starts over instead of growing without bound"


def test_parameter_slots_hold_what_the_kernel_reads() -> None:
    """Each parameter sits in the low bytes of its 8-byte slot (little-endian), as cuLaunchKernel
    reads it through kernelParams."""
    assert _slot("*bf16", 0x7F00_0000_1230) == 0x7F00_0000_1230
    assert _slot("i32", -1).to_bytes(8, "little")[:4] == struct.pack("<i", -1)
    assert _slot("i32", -1) < 2**32
    assert _slot("i64", -(2**40)).to_bytes(8, "little") == struct.pack("<q", -(2**40))
    assert _slot("fp32", 0.125).to_bytes(8, "little")[:4] == struct.pack("<f", 0.125)
    assert _slot("fp64", 3.5).to_bytes(8, "little") == struct.pack("<d", 3.5)
    assert _slot("bf16", 1.0) is None and _slot("nvTmaDesc", 0) is None


def test_direct_launch_declines_what_it_cannot_launch() -> None:
    """Anything but a loaded CUDA kernel (here: no driver, or not a compiled kernel) keeps
    Triton's launcher."""
    assert direct_launch("compiled", 0, (1, 1, 1), [0, 7], [(0, 0)]) is None
