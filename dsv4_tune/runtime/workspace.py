"""Reusable device buffers (split-K partials, the gathered BF16 buffer), keyed by name, shape,
dtype and device.  A decode step that has run once allocates nothing new, which is what lets it be
captured in a CUDA graph: warm up once, then capture.

The workspace also holds the replays of calls made with it (see :mod:`dsv4_tune.runtime.jit`
and :mod:`dsv4_tune.runtime.replay_index`): they point into its buffers, so they live and die with
them.
"""

from __future__ import annotations

import torch

from dsv4_tune.runtime.replay_index import ReplayIndex


class Workspace:
    """A cache of scratch tensors; contents are undefined on return (callers overwrite them),
    except the ``zeroed`` ones (the in-kernel merge's split counters), which every launch leaves
    zero.  One workspace serves one stream at a time: two launches in flight on different streams
    would share partial buffers and counters (a counter left non-zero would spoil later calls)."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, torch.Tensor] = {}
        self.replays = ReplayIndex()
        self.warmed: set[tuple] = set()  # (graph plan, workload, device) that eager calls warmed up

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, zeroed: bool = False
    ) -> torch.Tensor:
        """The buffer of this name, shape, dtype and device.  ``zeroed``: zeros when allocated, for
        kernels that leave it zero again (the split counters of the in-kernel combine)."""
        key = (name, shape, dtype, device)
        buf = self._buffers.get(key)
        if buf is None:
            alloc = torch.zeros if zeroed else torch.empty
            buf = self._buffers[key] = alloc(shape, dtype=dtype, device=device)
        return buf

    def buffers(self) -> list[torch.Tensor]:
        return list(self._buffers.values())

    def poison(self) -> None:
        """Fill every float buffer with NaN (tests: a kernel that reads what it never wrote fails)."""
        for b in self._buffers.values():
            if b.is_floating_point():
                b.fill_(float("nan"))

    def clear(self) -> None:
        self._buffers.clear()
        self.replays.clear()
        self.warmed.clear()

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self._buffers.values())


DEFAULT_WORKSPACE = Workspace()
