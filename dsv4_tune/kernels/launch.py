"""Kernel definition and a low-overhead launch path.

Triton's ``kernel[grid](...)`` re-derives a specialization of every argument on every call (tens
of microseconds for our 30-50 arguments).  Our kernels are defined with :func:`kernel`, which
leaves every scalar argument unspecialized (alignment facts the code relies on are stated in the
kernels with :func:`~dsv4_tune.kernels.attention_core.aligned`, backed by the input checks), so a
compiled kernel depends only on the constexprs, the launch options, the device and the 16-byte
alignment of the tensor arguments.  :class:`Launcher` keys a cache on exactly that, compiles
through Triton on a miss, and afterwards calls the compiled kernel directly, with tensors passed as
their integer addresses (Triton's launcher otherwise asks the driver about every pointer).

One level up, :class:`Recording` captures the launches of one call so that :class:`Replay` can
repeat them for new tensors of the same metadata by patching addresses into the recorded argument
lists: what :func:`dsv4_tune.sparse_decode` does on every call after the first of a kind.  Under
the interpreter both simply call the kernel.
"""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import triton
from triton import knobs

from dsv4_tune.kernels.cuda_launch import current_stream_getter, direct_launch, direct_sequence
from dsv4_tune.kernels.runtime import interpreting

_current_stream = current_stream_getter()


def kernel(fn: Callable) -> Callable:
    """``@triton.jit`` with every scalar parameter unspecialized.

    Convention: pointer parameters end in ``_ptr``; constexprs are annotated ``tl.constexpr``;
    everything else is a scalar (an int or float) whose value never selects another binary.
    """
    scalars = [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if not name.endswith("_ptr") and "constexpr" not in str(p.annotation)
    ]
    return triton.jit(do_not_specialize=scalars)(fn)


@dataclass
class RecordedLaunch:
    """One launch as recorded: the compiled kernel, its grid and its arguments (addresses as ints)."""

    compiled: object
    grid: tuple[int, int, int]
    args: list
    tensors: list[object] = field(repr=False)  # the tensor objects behind the address slots
    slots: list[int] = field(repr=False)  # positions of the address slots in ``args``


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


class Launcher:
    """Launch one kernel defined with :func:`kernel`; positional arguments in signature order."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        params = list(inspect.signature(getattr(fn, "fn", fn)).parameters.values())
        self._const = [i for i, p in enumerate(params) if "constexpr" in str(p.annotation)]
        self._compiled: dict[tuple, object] = {}
        self._tensors: list[int] | None = None  # positions of the tensor arguments (fixed per kernel)
        self._ints: list[int] = []  # positions of the int scalar arguments
        self.fast_launches = 0

    def __call__(
        self, grid: tuple[int, int, int], *args: object, num_warps: int, num_stages: int, launch_pdl: bool = False
    ) -> None:
        """``launch_pdl``: launch as a programmatic dependent of the kernel before it (see
        :func:`~dsv4_tune.kernels.runtime.pdl_enabled`; ignored by the interpreter)."""
        rec = Recording.current()
        if interpreting():
            if rec is not None:
                rec.complete = False
            self.fn[grid](*args, num_warps=num_warps, num_stages=num_stages)
            return
        if self._tensors is None:
            self._tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
            self._ints = [i for i, a in enumerate(args) if type(a) is int and i not in self._const]
        call = list(args)
        misaligned = 0
        for i in self._tensors:
            ptr = call[i] = args[i].data_ptr()  # type: ignore[attr-defined]
            misaligned = (misaligned << 1) | (ptr % 16 != 0)
        wide = 0  # Triton types an unspecialized int i32 or i64 by its value: the width is part of the binary
        for i in self._ints:
            wide = (wide << 1) | (not -0x80000000 <= args[i] < 0x80000000)  # type: ignore[operator]
        device = args[self._tensors[0]].device.index  # type: ignore[attr-defined]
        key = (*[args[i] for i in self._const], num_warps, num_stages, launch_pdl, device, misaligned, wide)
        compiled = self._compiled.get(key)
        if compiled is None:
            pdl = {"launch_pdl": True} if launch_pdl else {}  # (a Triton option only CUDA knows)
            self._compiled[key] = self.fn[grid](*args, num_warps=num_warps, num_stages=num_stages, **pdl)
            if rec is not None:
                rec.complete = False
            return
        self.fast_launches += 1
        stream = _current_stream(device)
        enter, leave = _hook(knobs.runtime.launch_enter_hook), _hook(knobs.runtime.launch_exit_hook)
        meta = None if enter is None else compiled.launch_metadata(grid, stream, *args)  # type: ignore[attr-defined]
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function,  # type: ignore[attr-defined]
                     compiled.packed_metadata, meta, enter, leave, *call)  # type: ignore[attr-defined]
        if rec is not None:
            rec.launches.append(RecordedLaunch(compiled, grid, call, [args[i] for i in self._tensors],
                                               list(self._tensors)))


def _hook(hook: object) -> object:
    """A launch hook, or None when there is none (Triton >= 3.6 keeps an empty HookChain)."""
    return None if hook is None or getattr(hook, "calls", True) == [] else hook


def hooks_active() -> bool:
    """Whether a profiler hook wants to see launches (then replays step aside)."""
    return _hook(knobs.runtime.launch_enter_hook) is not None or _hook(knobs.runtime.launch_exit_hook) is not None


class TritonLaunch:
    """One recorded launch repeated through Triton's own launcher (where :class:`DirectLaunch`
    cannot be used): the recorded argument list with the address slots of ``patch`` replaced."""

    def __init__(self, compiled: object, grid: tuple[int, int, int], template: list,
                 patch: list[tuple[int, int]]) -> None:
        self.compiled, self.grid, self.template, self.patch = compiled, grid, template, patch

    def __call__(self, stream: int, ptrs: Sequence[int]) -> None:
        args = self.template.copy()
        for slot, j in self.patch:
            args[slot] = ptrs[j]
        c = self.compiled
        c.run(self.grid[0], self.grid[1], self.grid[2], stream, c.function,  # type: ignore[attr-defined]
              c.packed_metadata, None, None, None, *args)  # type: ignore[attr-defined]


class Replay:
    """The launches of one recorded call, repeatable for new input tensors of the same metadata.

    Built from a :class:`Recording`, the call's input tensors (``None`` for absent ones) and the
    scratch tensors it may use besides them (workspace buffers, kept alive here).  A launch that
    reads any other tensor (a copy made from an input, say) makes the call not replayable:
    :meth:`build` returns None and the caller stays on the checked path.  Each launch goes straight
    to the CUDA driver with pre-packed parameters where it can (:mod:`~dsv4_tune.kernels.cuda_launch`),
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
            launches.append(direct_launch(r.compiled, device, r.grid, r.args, patch)
                            or TritonLaunch(r.compiled, r.grid, r.args, patch))
        return cls(device, launches, keep, tuple(aliases))

    def __call__(self, ptrs: Sequence[int]) -> None:
        """Launch everything again with the inputs' addresses ``ptrs``."""
        stream = _current_stream(self.device)
        if self._direct is not None:
            self._direct(stream, ptrs)
            return
        for launch in self.launches:
            launch(stream, ptrs)
