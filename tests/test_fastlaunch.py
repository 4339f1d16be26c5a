"""The C launcher (``kernels/fastlaunch.c``) on the CPU: built with the system compiler, it calls a
fake ``cuLaunchKernel`` (a ctypes callback) that records what the driver would have been given."""

from __future__ import annotations

import ctypes
import os
import shutil
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest

from dsv4_tune.runtime import cuda_driver as cuda_launch
from dsv4_tune.runtime import fastlaunch
from dsv4_tune.runtime import recording as launch_mod
from dsv4_tune.runtime.cuda_driver import DirectLaunch
from dsv4_tune.runtime.recording import Replay

LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, *[ctypes.c_uint] * 7, ctypes.c_void_p,
                          ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p)
LAUNCH_EX = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p),
                             ctypes.c_void_p)
ERROR_NAME = b"CUDA_ERROR_FAKE"
FUNCTION = 0xF00D
DIMS = (2, 3, 4, 128, 1, 1, 1024)  # grid x y z, block x y z, shared bytes


class FakeDriver:
    """Records each launch as (function, grid, block, shared, stream, slot values, extra), a
    ``cuLaunchKernelEx`` one with its launch attributes ((id, first int of the value), ...) after
    them, and returns the next of ``codes`` (then 0)."""

    def __init__(self, nparams: int, codes: tuple[int, ...] = ()) -> None:
        self.nparams, self.codes, self.calls, self.context_asked = nparams, list(codes), [], 0
        self.cuLaunchKernel = LAUNCH(self._launch)
        self.address = ctypes.cast(self.cuLaunchKernel, ctypes.c_void_p).value
        self.cuLaunchKernelEx = LAUNCH_EX(self._launch_ex)
        self.cuGetErrorName = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_char_p))(
            self._error_name)
        self.cuCtxGetCurrent = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_void_p))(self._context)

    def _launch(self, f, gx, gy, gz, bx, by, bz, shared, stream, params, extra) -> int:
        values = [ctypes.c_uint64.from_address(params[i]).value for i in range(self.nparams)]
        self.calls.append((f, (gx, gy, gz), (bx, by, bz), shared, stream, values, extra))
        self._last = self.codes.pop(0) if self.codes else 0
        return self._last

    def _launch_ex(self, config, f, params, extra) -> int:
        c = cuda_launch._LaunchConfig.from_address(config)
        attrs = [(c.attrs[i].id, int.from_bytes(ctypes.string_at(ctypes.addressof(c.attrs[i]) + 8, 4), "little"))
                 for i in range(c.num_attrs)]
        self._launch(f, c.grid_x, c.grid_y, c.grid_z, c.block_x, c.block_y, c.block_z, c.shared, c.stream, params,
                     extra)
        self.calls[-1] += (attrs,)
        return self._last

    def _error_name(self, err, out) -> int:
        out[0] = ERROR_NAME
        return 0

    def _context(self, out) -> int:
        self.context_asked += 1
        out[0] = 0x1234  # a context is current: nothing more to do
        return 0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    cc = fastlaunch._compiler()
    if not shutil.which(cc[0]) or not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip(f"no C compiler ({cc[0]}) or no Python.h here: the C launcher cannot be built")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DSV4_TUNE_CACHE_DIR", str(tmp_path_factory.mktemp("fastlaunch")))
        return fastlaunch._import(fastlaunch._build())  # a compile error fails here, it does not skip


@pytest.fixture
def fast(built, monkeypatch: pytest.MonkeyPatch):
    """The C launcher, as :func:`fastlaunch.load` returns it."""
    monkeypatch.setattr(fastlaunch, "_MODULE", built)
    return built


def test_launch_patches_its_slots_and_passes_everything_to_the_driver(fast) -> None:
    drv = FakeDriver(6)
    launch = fast.Launch(drv.address, FUNCTION, DIMS, [11, 22, 33, 44, 0, 0], [(0, 1), (2, 0)])
    assert launch(0xABC, [0x1000, 0x2000]) == 0
    assert launch(0xDEF, (0x3000, -1)) == 0  # a tuple; a negative int is its two's complement, as in ctypes
    assert drv.calls == [
        (FUNCTION, (2, 3, 4), (128, 1, 1), 1024, 0xABC, [0x2000, 22, 0x1000, 44, 0, 0], None),
        (FUNCTION, (2, 3, 4), (128, 1, 1), 1024, 0xDEF, [2**64 - 1, 22, 0x3000, 44, 0, 0], None),
    ], "patched slots hold the new addresses, the others their packed values, the scratch slots null"


def test_launch_returns_the_drivers_code(fast) -> None:
    drv = FakeDriver(2, codes=(201, 1))
    launch = fast.Launch(drv.address, FUNCTION, DIMS, [5, 0], [(0, 0)])
    assert [launch(None, [7]), launch(0, [8]), launch(0, [9])] == [201, 1, 0]
    assert [c[4] for c in drv.calls] == [None, None, None], "stream None and 0 are the null stream"


@pytest.mark.parametrize("ptrs, error", [([0x1000], IndexError), ([0x1000, 1.5], TypeError),
                                         ([0x1000, "0x2000"], TypeError), (None, TypeError), (7, TypeError)])
def test_bad_inputs_raise_before_the_driver_is_called(fast, ptrs, error) -> None:
    drv = FakeDriver(3)
    launch = fast.Launch(drv.address, FUNCTION, DIMS, [1, 2, 3], [(1, 1)])
    with pytest.raises(error):
        launch(0, ptrs)
    with pytest.raises(TypeError):
        launch([0x1000, 0x2000])  # stream missing
    with pytest.raises(TypeError):
        launch(1.0, [0x1000, 0x2000])  # not an int stream
    assert drv.calls == []


def test_launch_refuses_a_bad_layout(fast) -> None:
    drv = FakeDriver(2)
    with pytest.raises(ValueError):
        fast.Launch(drv.address, FUNCTION, DIMS, [1, 0], [(2, 0)])  # slot 2 of 2
    with pytest.raises(ValueError):
        fast.Launch(drv.address, FUNCTION, DIMS, [1, 0], [(0, -1)])
    with pytest.raises(ValueError):
        fast.Launch(0, FUNCTION, DIMS, [1, 0], [])  # no driver function
    with pytest.raises(TypeError):
        fast.Launch(drv.address, FUNCTION, DIMS[:6], [1, 0], [])


def test_launch_all_stops_at_the_first_failure(fast) -> None:
    drv = FakeDriver(2, codes=(0, 7))
    launches = tuple(fast.Launch(drv.address, FUNCTION + i, DIMS, [i, 0], [(0, i)]) for i in range(3))
    assert fast.launch_all(launches, 5, [10, 11, 12]) == (1, 7)
    assert [(c[0], c[5]) for c in drv.calls] == [(FUNCTION, [10, 0]), (FUNCTION + 1, [11, 0])]
    assert fast.launch_all(launches, 5, [20, 21, 22], 2) is None, "start: the ones after the failure"
    assert fast.launch_all(launches, 5, [30, 31, 32]) is None
    assert [c[5][0] for c in drv.calls] == [10, 11, 22, 30, 31, 32]
    with pytest.raises(TypeError):
        fast.launch_all((*launches, "not a launch"), 5, [1, 2, 3])
    with pytest.raises(IndexError):
        fast.launch_all(launches, 5, [1, 2])


def _direct(monkeypatch: pytest.MonkeyPatch, drv: FakeDriver, slots: list[int], patch: list[tuple[int, int]],
            function: int = FUNCTION, pdl: bool = False) -> DirectLaunch:
    monkeypatch.setattr(cuda_launch, "_DRIVER", drv)
    return DirectLaunch(SimpleNamespace(function=function), 0, DIMS, slots, patch, pdl)


def _run_direct(monkeypatch: pytest.MonkeyPatch, codes: tuple[int, ...], pdl: bool = False
                ) -> tuple[list, str | None, int]:
    drv = FakeDriver(5, codes)
    launch = _direct(monkeypatch, drv, [1, 2, 3], [(2, 0), (0, 2)], pdl=pdl)
    error = None
    try:
        for ptrs in ([0x100, 0x200, 0x300], [0x400, 0x500, 0x600]):
            launch(0xABC, ptrs)
    except RuntimeError as e:
        error = str(e)
    return drv.calls, error, drv.context_asked


@pytest.mark.parametrize("codes", [(), (201,), (5,)], ids=["ok", "no-context", "error"])
def test_direct_launch_makes_the_same_calls_through_c_and_ctypes(fast, monkeypatch, codes) -> None:
    launch = _direct(monkeypatch, FakeDriver(5), [1, 2, 3], [])
    assert launch.fast is not None, "the C launcher is built but DirectLaunch does not use it"
    through_c = _run_direct(monkeypatch, codes)
    monkeypatch.setattr(fastlaunch, "_MODULE", None)
    assert _direct(monkeypatch, FakeDriver(5), [1, 2, 3], []).fast is None
    through_ctypes = _run_direct(monkeypatch, codes)
    assert through_c == through_ctypes
    calls, error, context_asked = through_c
    if codes == (5,):
        assert error == "cuLaunchKernel failed: CUDA_ERROR_FAKE (5)" and len(calls) == 1
        return
    assert error is None and [c[5] for c in calls[-2:]] == [[0x300, 2, 0x100, 0, 0], [0x600, 2, 0x400, 0, 0]]
    assert (len(calls), context_asked) == ((3, 1) if codes else (2, 0)), "no context: made current, launched again"


@pytest.mark.parametrize("codes", [(), (201,), (5,)], ids=["ok", "no-context", "error"])
def test_a_pdl_launch_goes_through_cuLaunchKernelEx_in_c_and_ctypes(fast, monkeypatch, codes) -> None:
    """A programmatic dependent launch: cuLaunchKernelEx with the grid, block, shared bytes and
    stream in its config and one attribute, programmatic stream serialization (6) allowed (1)."""
    assert _direct(monkeypatch, FakeDriver(5), [1, 2, 3], [], pdl=True).fast is not None
    through_c = _run_direct(monkeypatch, codes, pdl=True)
    monkeypatch.setattr(fastlaunch, "_MODULE", None)
    assert _direct(monkeypatch, FakeDriver(5), [1, 2, 3], [], pdl=True).fast is None
    through_ctypes = _run_direct(monkeypatch, codes, pdl=True)
    assert through_c == through_ctypes
    calls, error, _ = through_c
    if codes == (5,):
        assert error == "cuLaunchKernelEx failed: CUDA_ERROR_FAKE (5)" and len(calls) == 1
        return
    assert error is None and len(calls) == (3 if codes else 2)
    assert calls[-1] == (FUNCTION, (2, 3, 4), (128, 1, 1), 1024, 0xABC, [0x600, 2, 0x400, 0, 0], None, [(6, 1)])


def _run_replay(monkeypatch: pytest.MonkeyPatch, codes: tuple[int, ...]) -> tuple[list, str | None, bool]:
    drv = FakeDriver(3, codes)
    launches = [_direct(monkeypatch, drv, [i], [(0, i)], FUNCTION + i) for i in range(3)]
    monkeypatch.setattr(launch_mod, "_current_stream", lambda device: 0xABC)  # no CUDA here
    replay = Replay(0, launches, [])
    error = None
    try:
        replay([0x10, 0x20, 0x30])
    except RuntimeError as e:
        error = str(e)
    return [(c[0], c[4], c[5][0]) for c in drv.calls], error, replay._direct is not None


@pytest.mark.parametrize("codes", [(), (0, 201), (0, 9)], ids=["ok", "no-context", "error"])
def test_replay_makes_the_same_calls_in_one_c_call_and_through_ctypes(fast, monkeypatch, codes) -> None:
    *through_c, one_call = _run_replay(monkeypatch, codes)
    assert one_call, "all launches are direct with C versions: the replay makes them in one C call"
    monkeypatch.setattr(fastlaunch, "_MODULE", None)
    *through_ctypes, one_call = _run_replay(monkeypatch, codes)
    assert not one_call and through_c == through_ctypes
    calls, error = through_c
    expect = [(FUNCTION, 0xABC, 0x10), (FUNCTION + 1, 0xABC, 0x20), (FUNCTION + 2, 0xABC, 0x30)]
    if codes == (0, 201):
        expect.insert(1, expect[1])  # launch 1 again once a context is current, then the rest
    if codes == (0, 9):
        expect = expect[:2]  # launch 1 failed: the error raises, launch 2 is not made
        assert error == "cuLaunchKernel failed: CUDA_ERROR_FAKE (9)"
    assert calls == expect


@pytest.mark.parametrize("compiler", ["false", "/nonexistent/cc"])
def test_a_failed_build_leaves_ctypes_in_use(tmp_path, monkeypatch, compiler) -> None:
    monkeypatch.setenv("DSV4_TUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fastlaunch, "_MODULE", False)
    tries = []
    monkeypatch.setattr(fastlaunch, "_compiler", lambda: tries.append(1) or [compiler])
    assert fastlaunch.load() is None and fastlaunch.load() is None
    assert len(tries) == 1, "a failure is remembered: no second compile"
    assert fastlaunch.failure and list(tmp_path.iterdir()) == [], "no temporary file left behind"
    monkeypatch.setattr(fastlaunch, "_MODULE", None)
    assert _direct(monkeypatch, FakeDriver(2), [1], []).fast is None


def test_fast_launch_can_be_turned_off(monkeypatch) -> None:
    monkeypatch.setenv("DSV4_TUNE_FAST_LAUNCH", "0")
    monkeypatch.setattr(fastlaunch, "_MODULE", False)
    monkeypatch.setattr(fastlaunch, "_build", lambda: pytest.fail("built with DSV4_TUNE_FAST_LAUNCH=0"))
    assert fastlaunch.load() is None


def test_load_reuses_the_cached_build(built, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DSV4_TUNE_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(fastlaunch, "_MODULE", False)
    assert fastlaunch.load() is not None, fastlaunch.failure
    assert [p.name.startswith("_fastlaunch-") for p in tmp_path.iterdir()] == [True]
    monkeypatch.setattr(fastlaunch, "_MODULE", False)
    monkeypatch.setattr(fastlaunch, "_compiler", lambda: ["false"])  # would fail: the cached build is used
    assert fastlaunch.load() is not None, fastlaunch.failure


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_during_a_build_can_build(monkeypatch) -> None:
    """A fork while another thread holds the build lock must not leave the child's lock held."""
    with fastlaunch._LOCK:
        pid = os.fork()
        if pid == 0:  # the child: the lock must be free here
            os._exit(0 if fastlaunch._LOCK.acquire(timeout=5) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_direct_launch_takes_pdl_kernels_only_where_the_driver_has_cuLaunchKernelEx(monkeypatch) -> None:
    """A kernel compiled with launch_pdl becomes a PDL DirectLaunch; with a driver older than
    CUDA 12 (no cuLaunchKernelEx) it keeps Triton's launcher.  (ctypes here: the C launcher's
    choice of driver function is tested above.)"""
    monkeypatch.setattr(fastlaunch, "_MODULE", None)

    def compiled(pdl: bool) -> SimpleNamespace:
        meta = SimpleNamespace(num_ctas=1, global_scratch_size=0, profile_scratch_size=0, launch_cooperative_grid=False,
                               launch_pdl=pdl, shared=0, cluster_dims=(1, 1, 1), num_warps=4)
        return SimpleNamespace(metadata=meta, src=SimpleNamespace(signature={"x_ptr": "*fp32", "n": "i32"}),
                               run=SimpleNamespace(), function=FUNCTION)

    drv = FakeDriver(2)
    monkeypatch.setattr(cuda_launch, "_DRIVER", drv)
    plain = cuda_launch.direct_launch(compiled(False), 0, (1, 1, 1), [0, 7], [(0, 0)])
    pdl = cuda_launch.direct_launch(compiled(True), 0, (1, 1, 1), [0, 7], [(0, 0)])
    assert plain is not None and not plain.pdl and pdl is not None and pdl.pdl
    pdl(0, [0x40])
    assert drv.calls[-1][-1] == [(6, 1)]
    del drv.cuLaunchKernelEx
    assert cuda_launch.direct_launch(compiled(True), 0, (1, 1, 1), [0, 7], [(0, 0)]) is None
    assert cuda_launch.direct_launch(compiled(False), 0, (1, 1, 1), [0, 7], [(0, 0)]) is not None
