"""Recording the launches of one call, and replaying them for new tensors of the same metadata.

:class:`Recording` captures the launches a :class:`~dsv4_tune.runtime.jit.Launcher` makes while it
is active, so that :class:`Replay` can repeat them by patching new addresses into the recorded
argument lists: what :func:`dsv4_tune.sparse_decode` does on every call after the first of a kind.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch

from dsv4_tune.runtime.cluster import clustered_metadata
from dsv4_tune.runtime.cuda_driver import current_stream_getter, direct_launch, direct_sequence

_current_stream = current_stream_getter()


@dataclass
class RecordedLaunch:
    """One launch as recorded: the compiled kernel, its grid and its arguments (addresses as ints)."""

    compiled: object
    grid: tuple[int, int, int]
    args: list
    tensors: list[object] = field(repr=False)  # the tensor objects behind the address slots
    slots: list[int] = field(repr=False)  # positions of the address slots in ``args``
    cluster: int = 1  # CTAs a cluster (``grid`` counts CTAs): see :mod:`~dsv4_tune.runtime.cluster`


class Recording:
    """Collects the launches this thread makes while it is active (a ``with`` block).

    Thread-local: launches of another thread during the block are not this call's."""

    _local = threading.local()

    def __init__(self) -> None:
        self.launches: list[RecordedLaunch] = []
        self.complete = True  # False when a launch compiled (not yet replayable) or ran interpreted

    @classmethod
    def current(cls) -> Recording | None:
        return getattr(cls._local, "active", None)

    def __enter__(self) -> Recording:
        Recording._local.active = self
        return self

    def __exit__(self, *exc: object) -> None:
        Recording._local.active = None


class TritonLaunch:
    """One recorded launch repeated through Triton's own launcher (where :class:`DirectLaunch`
    cannot be used): the recorded argument list with the address slots of ``patch`` replaced."""

    def __init__(self, compiled: object, grid: tuple[int, int, int], template: list,
                 patch: list[tuple[int, int]], cluster: int = 1) -> None:
        self.compiled, self.grid, self.template, self.patch = compiled, grid, template, patch
        self.cluster = cluster

    def __call__(self, stream: int, ptrs: Sequence[int]) -> None:
        args = self.template.copy()
        for slot, j in self.patch:
            args[slot] = ptrs[j]
        c = self.compiled
        packed = clustered_metadata(c.packed_metadata, self.cluster)  # type: ignore[attr-defined]
        c.run(self.grid[0] // self.cluster, self.grid[1], self.grid[2], stream, c.function,  # type: ignore[attr-defined]
              packed, None, None, None, *args)


class Replay:
    """The launches of one recorded call, repeatable for new input tensors of the same metadata.

    Built from a :class:`Recording`, the call's input tensors (``None`` for absent ones) and the
    scratch tensors it may use besides them (workspace buffers, kept alive here).  A launch that
    reads any other tensor (a copy made from an input, say) makes the call not replayable:
    :meth:`build` returns None and the caller stays on the checked path.  Each launch goes straight
    to the CUDA driver with pre-packed parameters where it can (:mod:`~dsv4_tune.runtime.cuda_driver`),
    else through Triton's launcher; when all go to the driver from C, one C call makes them all.
    """

    def __init__(
        self, device: int, launches: list, keep: list[torch.Tensor], aliases: tuple[tuple[int, int], ...] = ()
    ) -> None:
        self.device = device
        self.launches = launches  # DirectLaunch or TritonLaunch, each with its `patch` [(slot, input index)]
        self.aliases = aliases  # input positions that held one object when recorded
        self._keep = keep
        self._direct = direct_sequence(launches)  # all of them in one C call, where they can be

    def fits(self, ptrs: Sequence[int]) -> bool:
        """Whether inputs that were one object when recorded are one tensor now (same address):
        a slot patched from either would otherwise read the wrong one."""
        return not self.aliases or all(ptrs[a] == ptrs[b] for a, b in self.aliases)

    @classmethod
    def build(
        cls, rec: Recording, inputs: Sequence[torch.Tensor | None], scratch: Sequence[torch.Tensor]
    ) -> Replay | None:
        if not rec.launches:
            return None
        by_id: dict[int, int] = {}
        aliases = []
        for j, t in enumerate(inputs):
            if t is not None:
                if id(t) in by_id:
                    aliases.append((by_id[id(t)], j))
                by_id[id(t)] = j
        scratch_storage = {t.untyped_storage().data_ptr(): t for t in scratch}
        device = rec.launches[0].tensors[0].device.index  # type: ignore[attr-defined]
        launches, keep = [], []
        for r in rec.launches:
            patch = []
            for slot, t in zip(r.slots, r.tensors, strict=True):
                j = by_id.get(id(t))
                if j is not None:
                    patch.append((slot, j))
                    continue
                base = scratch_storage.get(t.untyped_storage().data_ptr())  # type: ignore[attr-defined]
                if base is None:
                    return None
                keep.append(base)
            direct = direct_launch(r.compiled, device, r.grid, r.args, patch) if r.cluster == 1 else None
            launches.append(direct or TritonLaunch(r.compiled, r.grid, r.args, patch, r.cluster))
        return cls(device, launches, keep, tuple(aliases))

    def __call__(self, ptrs: Sequence[int]) -> None:
        """Launch everything again with the inputs' addresses ``ptrs``."""
        stream = _current_stream(self.device)
        if self._direct is not None:
            self._direct(stream, ptrs)
            return
        for launch in self.launches:
            launch(stream, ptrs)
