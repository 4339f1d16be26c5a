"""Launch a compiled Triton kernel straight through the CUDA driver, its parameters packed once.

Triton's compiled-kernel launcher converts every argument from a Python object on every call
(about 8 us for our kernels on the H100 host we measure on, where one eager torch op costs 10).  A
replayed call (:class:`~dsv4_tune.runtime.jit.Replay`) knows all its arguments in advance except
the tensor addresses, so :class:`DirectLaunch` packs them once into a ctypes buffer, one 8-byte
slot per kernel parameter (what ``cuLaunchKernel`` reads through its ``kernelParams`` array), and a
call only writes the new addresses and calls the driver.  Where a C compiler is at hand, that step
runs in C (:mod:`~dsv4_tune.runtime.fastlaunch`, built at first use: ctypes' argument conversion,
the lock and the Python patch loop are a sizeable part of a launch's host time), and a replay whose
launches are all direct makes them in one C call (:class:`DirectSequence`).

A kernel compiled with ``launch_pdl`` (a programmatic dependent launch: it may start while the
kernel before it runs) goes through ``cuLaunchKernelEx`` with the programmatic stream
serialization attribute, as in Triton's launcher.

CUDA only.  :func:`direct_launch` returns None, and the caller keeps Triton's launcher, on ROCm,
when libcuda cannot be loaded, with ``DSV4_TUNE_DIRECT_LAUNCH=0``, and for a kernel that needs
something this path does not do: global or profile scratch memory, clusters, cooperative
launches, oversized shared memory, a PDL launch where the driver lacks ``cuLaunchKernelEx``, or a
parameter type other than a pointer, an integer or a float.
A launch writes its addresses and calls the driver as one step (in C holding the GIL, through
ctypes under the launch's own lock), so two threads replaying the same call cannot launch with each
other's tensors.  A thread with no current CUDA context (one whose first CUDA work is a replayed
call) gets the device's primary context, as Triton's launcher does.
"""

from __future__ import annotations

import ctypes
import struct
import threading
from collections.abc import Callable, Sequence

import torch

from dsv4_tune.env import direct_launch_allowed
from dsv4_tune.runtime import fastlaunch

_INT_BITS = {"i8": 8, "i16": 16, "i32": 32, "i64": 64, "u8": 8, "u16": 16, "u32": 32, "u64": 64}
_FLOAT_FORMATS = {"fp32": "<f", "f32": "<f", "fp64": "<d", "f64": "<d"}
_SCRATCH_PARAMS = 2  # Triton appends a global and a profile scratch pointer to every kernel (null here)
_MAX_SHARED = 227 * 1024  # above this Triton's launcher sets an extra attribute: leave such kernels to it
_INVALID_CONTEXT = 201  # CUDA_ERROR_INVALID_CONTEXT: this thread has no current context
_PROGRAMMATIC_STREAM_SERIALIZATION = 6  # CUlaunchAttributeID of a programmatic dependent launch


class _LaunchAttribute(ctypes.Structure):
    """The driver's ``CUlaunchAttribute``: an id, padding, a 64-byte value union."""

    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_uint64 * 8)]


class _LaunchConfig(ctypes.Structure):
    """The driver's ``CUlaunchConfig``."""

    _fields_ = [*[(n, ctypes.c_uint) for n in ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z",
                                               "shared")],
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_LaunchAttribute)), ("num_attrs", ctypes.c_uint)]


def _load_driver() -> ctypes.PyDLL | None:
    """libcuda with the functions used here typed, or None where there is none (ROCm, CPU)."""
    if not direct_launch_allowed() or torch.version.hip is not None:
        return None
    try:
        lib = ctypes.PyDLL("libcuda.so.1")
        for name in ("cuLaunchKernel", "cuGetErrorName", "cuCtxGetCurrent", "cuCtxSetCurrent", "cuDeviceGet",
                     "cuDevicePrimaryCtxRetain"):
            getattr(lib, name).restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    if hasattr(lib, "cuLaunchKernelEx"):  # CUDA 11.8 and up; without it PDL kernels keep Triton's launcher
        lib.cuLaunchKernelEx.restype = ctypes.c_int
    return lib


_DRIVER: ctypes.PyDLL | bool | None = False  # False: not looked up yet


def _driver() -> ctypes.PyDLL | None:
    global _DRIVER
    if _DRIVER is False:
        _DRIVER = _load_driver()
    return _DRIVER  # type: ignore[return-value]


def _slot(kind: str, value: object) -> int | None:
    """The 8-byte parameter slot holding ``value`` as the kernel reads a ``kind`` parameter
    (little-endian: an N-byte parameter is the slot's low N bytes), or None for a kind not handled."""
    if kind.startswith("*"):
        return int(value) & 0xFFFF_FFFF_FFFF_FFFF  # type: ignore[call-overload]
    if kind in _INT_BITS:
        return int(value) & ((1 << _INT_BITS[kind]) - 1)  # type: ignore[call-overload]
    fmt = _FLOAT_FORMATS.get(kind)
    if fmt is None:
        return None
    raw = struct.pack(fmt, float(value))  # type: ignore[arg-type]
    return int.from_bytes(raw, "little")


def _check(lib: ctypes.PyDLL, err: int, what: str) -> None:
    if err:
        text = ctypes.c_char_p()
        lib.cuGetErrorName(err, ctypes.byref(text))
        raise RuntimeError(f"{what} failed: {(text.value or b'?').decode()} ({err})")


def _make_context_current(lib: ctypes.PyDLL, device: int) -> None:
    """Make the device's primary context (PyTorch's and Triton's) current on this thread."""
    ctx, dev = ctypes.c_void_p(), ctypes.c_int()
    _check(lib, lib.cuCtxGetCurrent(ctypes.byref(ctx)), "cuCtxGetCurrent")
    if not ctx.value:
        _check(lib, lib.cuDeviceGet(ctypes.byref(dev), device), "cuDeviceGet")
        _check(lib, lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev), "cuDevicePrimaryCtxRetain")
        _check(lib, lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")


class DirectLaunch:
    """One kernel launch with its grid and arguments fixed, except the address slots in ``patch``
    ((parameter slot, input position) pairs) that each call fills from its input addresses.
    ``fast``: the same launch in C (:mod:`.fastlaunch`), or None where ctypes launches it."""

    def __init__(self, compiled: object, device: int, dims: tuple[int, ...], slots: list[int],
                 patch: list[tuple[int, int]], pdl: bool = False) -> None:
        n = len(slots) + _SCRATCH_PARAMS
        self.compiled = compiled  # keeps the module (and so the function handle) loaded
        self.device = device
        self.pdl = pdl  # a programmatic dependent launch (cuLaunchKernelEx)
        self._values = (ctypes.c_uint64 * n)(*slots)  # scratch pointers stay 0 (null)
        base = ctypes.addressof(self._values)
        self._params = (ctypes.c_void_p * n)(*[base + 8 * i for i in range(n)])
        self._head = (ctypes.c_void_p(compiled.function), *[ctypes.c_uint(d) for d in dims])  # type: ignore[attr-defined]
        if pdl:
            self._attr = _LaunchAttribute(id=_PROGRAMMATIC_STREAM_SERIALIZATION)
            self._attr.value[0] = 1  # programmaticStreamSerializationAllowed: the value's first int
            self._config = _LaunchConfig(*dims, None, ctypes.pointer(self._attr), 1)
        self._lock = threading.Lock()
        self.patch = patch
        fast = fastlaunch.load()
        driver_fn = _driver().cuLaunchKernelEx if pdl else _driver().cuLaunchKernel  # type: ignore[union-attr]
        self.fast = None if fast is None else fast.Launch(
            ctypes.cast(driver_fn, ctypes.c_void_p).value,
            compiled.function, dims, list(self._values), patch, pdl)  # type: ignore[attr-defined]

    def __call__(self, stream: int, ptrs: Sequence[int]) -> None:
        launch = self.fast or self._ctypes_launch
        err = launch(stream, ptrs)
        if err:
            self.retry_or_raise(launch, err, stream, ptrs)

    def _ctypes_launch(self, stream: int, ptrs: Sequence[int]) -> int:
        with self._lock:
            values = self._values
            for k, j in self.patch:
                values[k] = ptrs[j]
            if self.pdl:
                self._config.stream = stream
                return _driver().cuLaunchKernelEx(ctypes.byref(self._config), self._head[0],  # type: ignore[union-attr]
                                                  self._params, None)
            return _driver().cuLaunchKernel(*self._head, ctypes.c_void_p(stream), self._params, None)  # type: ignore[union-attr]

    def retry_or_raise(
        self, launch: Callable[[int, Sequence[int]], int], err: int, stream: int, ptrs: Sequence[int]
    ) -> None:
        """After ``launch`` returned ``err``: a thread whose first CUDA work this is (no current
        context) gets the primary context and launches again; any other error raises."""
        lib = _driver()
        if err == _INVALID_CONTEXT:
            _make_context_current(lib, self.device)  # type: ignore[arg-type]
            err = launch(stream, ptrs)
        _check(lib, err, "cuLaunchKernelEx" if self.pdl else "cuLaunchKernel")  # type: ignore[arg-type]


class DirectSequence:
    """Direct launches with C versions, made by one C call (``launch_all``): a replay's launches."""

    def __init__(self, launches: list[DirectLaunch], launch_all: Callable) -> None:
        self.launches = launches
        self._fast = tuple(x.fast for x in launches)
        self._launch_all = launch_all

    def __call__(self, stream: int, ptrs: Sequence[int]) -> None:
        failed = self._launch_all(self._fast, stream, ptrs)
        while failed is not None:  # launches[i] failed, the ones after it were not made
            i, err = failed
            self.launches[i].retry_or_raise(self._fast[i], err, stream, ptrs)
            failed = self._launch_all(self._fast, stream, ptrs, i + 1)


def direct_sequence(launches: Sequence[object]) -> DirectSequence | None:
    """``launches`` as one :class:`DirectSequence`, or None unless each is a DirectLaunch with a C version."""
    if not launches or not all(isinstance(x, DirectLaunch) and x.fast is not None for x in launches):
        return None
    return DirectSequence(list(launches), fastlaunch.load().launch_all)  # type: ignore[arg-type,union-attr]


def direct_launch(
    compiled: object, device: int, grid: tuple[int, int, int], args: Sequence[object], patch: list[tuple[int, int]]
) -> DirectLaunch | None:
    """A :class:`DirectLaunch` of ``compiled`` (a Triton ``CompiledKernel`` loaded on ``device``)
    over ``grid`` with the positional ``args`` of the Python signature (tensors as int addresses;
    ``patch`` names argument positions), or None when this path cannot launch it (see the module
    docstring)."""
    if _driver() is None or min(grid) <= 0:
        return None
    meta = getattr(compiled, "metadata", None)
    signature = getattr(getattr(compiled, "src", None), "signature", None)
    if meta is None or not isinstance(signature, dict) or len(signature) != len(args):
        return None
    if (getattr(meta, "num_ctas", 1) != 1 or getattr(meta, "global_scratch_size", 0)
            or getattr(meta, "profile_scratch_size", 0) or getattr(meta, "launch_cooperative_grid", False)
            or getattr(meta, "shared", 0) > _MAX_SHARED
            or tuple(getattr(meta, "cluster_dims", (1, 1, 1)) or (1, 1, 1)) not in ((1, 1, 1), (1,))):
        return None
    pdl = bool(getattr(meta, "launch_pdl", False))
    if pdl and not hasattr(_driver(), "cuLaunchKernelEx"):
        return None
    run = compiled.run  # type: ignore[attr-defined]  (loads the module: the function handle below)
    if getattr(run, "gsan_enabled", False) or not getattr(compiled, "function", None):
        return None
    slots: list[int] = []
    where: dict[int, int] = {}  # argument position -> parameter slot
    for i, (kind, value) in enumerate(zip(signature.values(), args, strict=True)):
        if kind == "constexpr":
            continue
        v = _slot(str(kind), value)
        if v is None:
            return None
        where[i] = len(slots)
        slots.append(v)
    if any(i not in where for i, _ in patch):
        return None
    dims = (grid[0], grid[1], grid[2], 32 * meta.num_warps, 1, 1, meta.shared)
    return DirectLaunch(compiled, device, dims, slots, [(where[i], j) for i, j in patch], pdl)


def current_stream_getter() -> object:
    """The fastest way to ask torch for the current raw stream of a device index."""
    get = getattr(torch._C, "_cuda_getCurrentRawStream", None)
    return get if get is not None else (lambda idx: torch.cuda.current_stream(idx).cuda_stream)
