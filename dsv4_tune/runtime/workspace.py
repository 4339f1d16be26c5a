"""Reusable device buffers (split-K partials, the gathered BF16 buffer, the compressor's pooled rows),
one per name, dtype and device, reused by every shape that fits.  A decode step that has run once
allocates nothing new, which is what lets it be captured in a CUDA graph: warm up once, then
capture; :meth:`Workspace.reserve` sizes the buffers up front for the largest batch (see
:func:`dsv4_tune.serving.memory.scratch_buffers`), so that no later step allocates at all.

A request larger than a buffer allocates a new one of at least twice the size; the old one is kept
(a CUDA graph may still point into it) until :meth:`Workspace.release_outgrown` or
:meth:`Workspace.clear`, so the memory held stays below about four times the largest request per
name (the current buffer under twice it, the outgrown ones under the current one).

The workspace also holds the replays of calls made with it (see :mod:`dsv4_tune.runtime.jit`
and :mod:`dsv4_tune.runtime.replay_index`): they point into its buffers, so they live and die with
them.
"""

from __future__ import annotations

import torch

from dsv4_tune.runtime.replay_index import ReplayIndex

DTYPES = {"float32": torch.float32, "int32": torch.int32, "bfloat16": torch.bfloat16, "bool": torch.bool}


class Workspace:
    """A cache of scratch tensors; contents are undefined on return (callers overwrite them),
    except the ``zeroed`` ones (the in-kernel merge's split counters), which every launch leaves
    zero.  One workspace serves one stream at a time: two launches in flight on different streams
    would share partial buffers and counters (a counter left non-zero would spoil later calls);
    give each stream its own."""

    def __init__(self, poisoned: bool = False) -> None:
        # poisoned (checks): every float buffer starts as NaN, as after :meth:`poison`, so a kernel that
        # reads what it never wrote fails on its first call, with no call made to allocate first.
        self.poisoned = poisoned
        self._buffers: dict[tuple, torch.Tensor] = {}  # (name, dtype, device) -> flat buffer
        self._retired: list[torch.Tensor] = []  # outgrown buffers a graph or replay may still use
        self.replays = ReplayIndex()
        self.warmed: set[tuple] = set()  # (graph plan, workload, device) that eager calls warmed up

    def get(
        self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, *, zeroed: bool = False
    ) -> torch.Tensor:
        """A ``shape`` view of the buffer of this name, dtype and device (grown when too small).
        ``zeroed``: zeros when allocated, for kernels that leave it zero again."""
        numel = 1
        for d in shape:
            numel *= d
        key = (name, dtype, device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < numel:
            if buf is not None:
                self._retired.append(buf)
            size = numel if buf is None else max(numel, 2 * buf.numel())
            if zeroed:
                buf = torch.zeros(size, dtype=dtype, device=device)
            elif self.poisoned and dtype.is_floating_point:
                buf = torch.full((size,), float("nan"), dtype=dtype, device=device)
            else:
                buf = torch.empty(size, dtype=dtype, device=device)
            self._buffers[key] = buf
        return buf[:numel].view(shape)

    def take(self, buffers: dict[str, tuple[tuple[int, ...], str]], name: str, device: torch.device, *,
             zeroed: bool = False) -> torch.Tensor:
        """The buffer ``name`` of a plan's buffers (:mod:`dsv4_tune.registry.scratch`)."""
        shape, dtype = buffers[name]
        return self.get(name, shape, DTYPES[dtype], device, zeroed=zeroed)

    def reserve(self, buffers: dict[str, tuple[tuple[int, ...], str]], device: torch.device | str) -> int:
        """Allocate ``buffers`` (name -> (shape, dtype name), e.g. the scratch query's) now; a later
        request that fits allocates nothing.  Returns the bytes held."""
        device = torch.device(device)
        for name, (shape, dtype) in buffers.items():
            self.get(name, shape, DTYPES[dtype], device, zeroed=name == "split_counters")
        return self.nbytes()

    def buffers(self) -> list[torch.Tensor]:
        return list(self._buffers.values())

    def release_outgrown(self) -> int:
        """Drop the buffers that larger requests outgrew (replays keep their own references; call this
        only when no captured CUDA graph uses them).  Returns the bytes released."""
        freed = sum(b.numel() * b.element_size() for b in self._retired)
        self._retired.clear()
        return freed

    def poison(self) -> None:
        """Fill every float buffer with NaN (tests: a kernel that reads what it never wrote fails)."""
        for b in self._buffers.values():
            if b.is_floating_point():
                b.fill_(float("nan"))

    def clear(self) -> None:
        self._buffers.clear()
        self._retired.clear()
        self.replays.clear()
        self.warmed.clear()

    def nbytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in (*self._buffers.values(), *self._retired))


DEFAULT_WORKSPACE = Workspace()  # calls without workspace=: one stream at a time
_BY_STREAM: dict[tuple[str, int], Workspace] = {}


def stream_workspace(device: torch.device | str = "cuda", stream: torch.cuda.Stream | int | None = None) -> Workspace:
    """The workspace of one (device, stream): created on first use, the same one after.  An engine that
    runs decode steps on several streams asks once per stream and passes it as ``workspace=`` (the
    entry points do not look the current stream up per call: that would cost every call host time)."""
    device = torch.device(device)
    if stream is None:
        stream = torch.cuda.current_stream(device) if device.type == "cuda" else 0
    key = (str(device), stream if isinstance(stream, int) else stream.cuda_stream)
    ws = _BY_STREAM.get(key)
    if ws is None:
        ws = _BY_STREAM[key] = Workspace()
    return ws
