"""Which recorded replay a call may reuse (the replay index): a cheap key, then a guard over its tensors' metadata.

A replay is only right for tensors of the metadata it was recorded with (shape, strides, dtype,
device, and so the checks it skipped).  Reading that metadata in Python costs ~0.4 us a tensor
(about 4 us for a decode call's ten tensors on a fast host, twice that on the H100 host we measure
on), so the cache keys on what is cheap (the plan, scalars, which optional tensors are given, q's
shape) and, among the few kinds under one key, checks the full metadata in one C++ call with
PyTorch's tensor guard (``torch._C._dynamo.guards.TensorGuards``: dtype, device, sizes, strides,
dispatch keys).  Where that guard is missing or behaves unexpectedly (a PyTorch that changed it),
a Python comparison of the same metadata is used instead: slower, same answers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import torch

Guard = Callable[..., bool]


def _metadata(tensors: Sequence[torch.Tensor]) -> tuple:
    return tuple((t.shape, t.stride(), t.dtype, t.device, type(t)) for t in tensors)


def python_guard(tensors: Sequence[torch.Tensor]) -> Guard:
    """True for tensors of the same shape, strides, dtype, device and type as ``tensors``."""
    want = _metadata(tensors)
    return lambda *ts: _metadata(ts) == want


def _torch_guard(tensors: Sequence[torch.Tensor]) -> Guard | None:
    try:
        from torch._C._dynamo.guards import TensorGuards

        guard = TensorGuards(*tensors, dynamic_dims_sizes=None, dynamic_dims_strides=None)
        check = guard.check
        ok = check(*tensors)
    except Exception:  # a private API: any failure means "use the Python guard"
        return None
    return check if ok is True else None


def metadata_guard(tensors: Sequence[torch.Tensor]) -> Guard:
    """A guard that accepts tensors of the same metadata as ``tensors`` (PyTorch's when it works)."""
    if not _TORCH_GUARD_OK:
        return python_guard(tensors)
    return _torch_guard(tensors) or python_guard(tensors)


def _torch_guard_agrees() -> bool:
    """Whether PyTorch's guard rejects what the Python guard rejects, on a few CPU tensors."""
    a = torch.empty(4, 6)
    guard = _torch_guard([a])
    if guard is None:
        return False
    others = [torch.empty(4, 7), torch.empty(4, 6, dtype=torch.float64), torch.empty(6, 4).t(), torch.empty(24)]
    return guard(torch.empty(4, 6)) and not any(guard(t) for t in others)


_TORCH_GUARD_OK = _torch_guard_agrees()


BY_CAPTURE = object()
"""Entry of a kind whose replay depends on whether a CUDA graph is being captured (a dispatched
call whose policy gives eager calls another plan): its replays live under the key extended by that
answer (:func:`dsv4_tune.serving.decode.sparse_decode`)."""


class ReplayIndex:
    """Replays (or None: a kind known not to be replayable) by call kind."""

    MAX_KINDS = 4096  # kinds remembered before the cache starts over
    PER_KEY = 16  # kinds kept under one cheap key (the oldest goes first)

    def __init__(self) -> None:
        self._kinds: dict[tuple, list[tuple[Guard, object]]] = {}
        self._count = 0

    def find(self, key: tuple, tensors: Sequence[torch.Tensor]) -> tuple[bool, object]:
        """(known, replay) for a call of cheap key ``key`` with these tensors."""
        for guard, replay in self._kinds.get(key, ()):
            if guard(*tensors):
                return True, replay
        return False, None

    def remember(self, key: tuple, tensors: Sequence[torch.Tensor], replay: object) -> None:
        if self._count >= self.MAX_KINDS:
            self.clear()
        kinds = self._kinds.setdefault(key, [])
        if len(kinds) >= self.PER_KEY:
            kinds.pop(0)
            self._count -= 1
        kinds.append((metadata_guard(tensors), replay))
        self._count += 1

    def replays(self) -> Iterator[object]:
        """Every remembered replay (not the None entries, nor the :data:`BY_CAPTURE` markers)."""
        return (r for kinds in self._kinds.values() for _, r in kinds if r is not None and r is not BY_CAPTURE)

    def clear(self) -> None:
        self._kinds.clear()
        self._count = 0

    def __len__(self) -> int:
        return self._count
