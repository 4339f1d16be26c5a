"""Kernel definition and a low-overhead launch path.

Triton's ``kernel[grid](...)`` re-derives a specialization of every argument on every call (tens
of microseconds for our 30-50 arguments).  Our kernels are defined with :func:`kernel`, which
leaves every scalar argument unspecialized (alignment facts the code relies on are stated in the
kernels with :func:`~dsv4_tune.kernels.attention_core.aligned`, backed by the input checks), so a
compiled kernel depends only on the constexprs, the launch options, the device and the 16-byte
alignment of the tensor arguments.  :class:`Launcher` keys a cache on exactly that, compiles
through Triton on a miss, and afterwards calls the compiled kernel directly, with tensors passed as
their integer addresses (Triton's launcher otherwise asks the driver about every pointer).  Each
such launch is added to the thread's active :class:`~dsv4_tune.runtime.recording.Recording`, if
any.  Under the interpreter it simply calls the kernel.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import triton
from triton import knobs

from dsv4_tune.env import interpreting
from dsv4_tune.runtime.cluster import clustered_metadata
from dsv4_tune.runtime.cuda_driver import current_stream_getter
from dsv4_tune.runtime.recording import RecordedLaunch, Recording

_current_stream = current_stream_getter()


def kernel(fn: Callable | None = None, *, jit: Callable = triton.jit) -> Callable:
    """``@triton.jit`` (or ``@kernel(jit=gluon.jit)``) with every scalar parameter unspecialized.

    Convention: pointer parameters end in ``_ptr``; constexprs are annotated ``tl.constexpr``;
    everything else is a scalar (an int or float) whose value never selects another binary.
    """
    if fn is None:
        return lambda f: kernel(f, jit=jit)
    scalars = [
        name
        for name, p in inspect.signature(fn).parameters.items()
        if not name.endswith("_ptr") and "constexpr" not in str(p.annotation)
    ]
    return jit(do_not_specialize=scalars)(fn)


class Launcher:
    """Launch one kernel defined with :func:`kernel`; positional arguments in signature order."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        params = list(inspect.signature(getattr(fn, "fn", fn)).parameters.values())
        self._const = [i for i, p in enumerate(params) if "constexpr" in str(p.annotation)]
        self._defaults = [p.default for p in params]  # (what a call that leaves trailing constexprs out means)
        self._compiled: dict[tuple, object] = {}
        self._tensors: list[int] | None = None  # positions of the tensor arguments (fixed per kernel)
        self._ints: list[int] = []  # positions of the int scalar arguments
        self.fast_launches = 0

    def __call__(
        self, grid: tuple[int, int, int], *args: object, num_warps: int, num_stages: int, launch_pdl: bool = False,
        maxnreg: int | None = None, cluster: int = 1,
    ) -> None:
        """``launch_pdl``: launch as a programmatic dependent of the kernel before it (see
        :func:`~dsv4_tune.runtime.target.pdl_enabled`; ignored by the interpreter); ``maxnreg``: the
        register cap per thread at entry (CUDA; a warp-specialized kernel's setmaxnreg needs one);
        ``cluster``: the grid's CTAs (``grid[0]`` a multiple of it) in clusters of that many (CUDA
        sm90; :mod:`~dsv4_tune.runtime.cluster`)."""
        if len(args) < len(self._defaults):
            args = self.complete(args)
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
        key = (*[args[i] for i in self._const], num_warps, num_stages, launch_pdl, maxnreg, device, misaligned, wide)
        compiled = self._compiled.get(key)
        if compiled is None:
            if cluster == 1:  # compiled by its first launch
                self._compiled[key] = self.fn[grid](*args, **self._options(num_warps, num_stages, launch_pdl, maxnreg))
                if rec is not None:
                    rec.complete = False
                return
            compiled = self.compile(grid, *args, num_warps=num_warps, num_stages=num_stages, launch_pdl=launch_pdl,
                                    maxnreg=maxnreg)  # Triton's own first launch would not make clusters
            self._compiled[key] = compiled
            if rec is not None:
                rec.complete = False
        self.fast_launches += 1
        stream = _current_stream(device)
        enter, leave = _hook(knobs.runtime.launch_enter_hook), _hook(knobs.runtime.launch_exit_hook)
        meta = None if enter is None else compiled.launch_metadata(grid, stream, *args)  # type: ignore[attr-defined]
        packed = clustered_metadata(compiled.packed_metadata, cluster)  # type: ignore[attr-defined]
        compiled.run(grid[0] // cluster, grid[1], grid[2], stream, compiled.function,  # type: ignore[attr-defined]
                     packed, meta, enter, leave, *call)
        if rec is not None:
            rec.launches.append(RecordedLaunch(compiled, grid, call, [args[i] for i in self._tensors],
                                               list(self._tensors), cluster))

    def complete(self, args: tuple) -> tuple:
        """``args`` with the kernel's defaults for the trailing parameters they leave out (a new
        constexpr with a default leaves every existing call as it was: the cache key and the compiled
        launch read every parameter)."""
        missing = self._defaults[len(args):]
        if any(d is inspect.Parameter.empty for d in missing):
            raise TypeError(f"{getattr(self.fn, '__name__', self.fn)}: {len(args)} arguments, but "
                            f"{len(self._defaults)} parameters and not every one left out has a default")
        return (*args, *missing)

    def compile(
        self, grid: tuple[int, int, int], *args: object, num_warps: int, num_stages: int, launch_pdl: bool = False,
        maxnreg: int | None = None,
    ) -> object:
        """The compiled kernel for these arguments (Triton's ``CompiledKernel``, loaded), not launched:
        what a kernel whose launch needs something of its compiled form (:mod:`~dsv4_tune.runtime.cluster`)
        compiles first."""
        if len(args) < len(self._defaults):
            args = self.complete(args)
        compiled = self.fn.warmup(*args, grid=grid, **self._options(num_warps, num_stages, launch_pdl, maxnreg))
        compiled._init_handles()  # type: ignore[attr-defined]
        return compiled

    @staticmethod
    def _options(num_warps: int, num_stages: int, launch_pdl: bool, maxnreg: int | None) -> dict[str, object]:
        opts: dict[str, object] = {"num_warps": num_warps, "num_stages": num_stages}
        if launch_pdl:  # (Triton options only CUDA knows)
            opts["launch_pdl"] = True
        if maxnreg is not None:
            opts["maxnreg"] = maxnreg
        return opts


def _hook(hook: object) -> object:
    """A launch hook, or None when there is none (Triton >= 3.6 keeps an empty HookChain)."""
    return None if hook is None or getattr(hook, "calls", True) == [] else hook


def hooks_active() -> bool:
    """Whether a profiler hook wants to see launches (then replays step aside)."""
    return _hook(knobs.runtime.launch_enter_hook) is not None or _hook(knobs.runtime.launch_exit_hook) is not None
