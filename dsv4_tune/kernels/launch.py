"""Kernel definition and a low-overhead launch path.

Triton's ``kernel[grid](...)`` re-derives a specialization of every argument on every call (tens
of microseconds for our 30-50 arguments).  Our kernels are defined with :func:`kernel`, which
leaves every scalar argument unspecialized (alignment facts the code relies on are stated in the
kernels with :func:`~dsv4_tune.kernels.attention_core.aligned`, backed by the input checks), so a compiled kernel depends only on
the constexprs, the launch options, the device and the 16-byte alignment of the tensor arguments.
:class:`Launcher` keys a cache on exactly that, compiles through Triton on a miss, and afterwards
calls the compiled kernel directly.  Under the interpreter it simply calls the kernel.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
import triton
from triton import knobs
from triton.runtime.driver import driver

from dsv4_tune.kernels.runtime import interpreting


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


class Launcher:
    """Launch one kernel defined with :func:`kernel`; positional arguments in signature order."""

    def __init__(self, fn: Callable) -> None:
        self.fn = fn
        params = list(inspect.signature(getattr(fn, "fn", fn)).parameters.values())
        self._const = [i for i, p in enumerate(params) if "constexpr" in str(p.annotation)]
        self._compiled: dict[tuple, object] = {}
        self._tensors: list[int] | None = None  # positions of the tensor arguments (fixed per kernel)
        self.fast_launches = 0

    def __call__(self, grid: tuple[int, int, int], *args: object, num_warps: int, num_stages: int) -> None:
        if interpreting():
            self.fn[grid](*args, num_warps=num_warps, num_stages=num_stages)
            return
        if self._tensors is None:
            self._tensors = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        device = torch.cuda.current_device()
        misaligned = 0
        for i in self._tensors:
            misaligned = (misaligned << 1) | (args[i].data_ptr() % 16 != 0)  # type: ignore[attr-defined]
        key = (*[args[i] for i in self._const], num_warps, num_stages, device, misaligned)
        compiled = self._compiled.get(key)
        if compiled is None:
            self._compiled[key] = self.fn[grid](*args, num_warps=num_warps, num_stages=num_stages)
            return
        self.fast_launches += 1
        stream = driver.active.get_current_stream(device)
        enter, leave = _hook(knobs.runtime.launch_enter_hook), _hook(knobs.runtime.launch_exit_hook)
        meta = None if enter is None else compiled.launch_metadata(grid, stream, *args)  # type: ignore[attr-defined]
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function,  # type: ignore[attr-defined]
                     compiled.packed_metadata, meta, enter, leave, *args)  # type: ignore[attr-defined]


def _hook(hook: object) -> object:
    """A launch hook, or None when there is none (Triton >= 3.6 keeps an empty HookChain)."""
    return None if hook is None or getattr(hook, "calls", True) == [] else hook
