"""Build and load ``fastlaunch.c``, the C patch-and-launch step of
:class:`~dsv4_tune.runtime.cuda_driver.DirectLaunch`, at first use.

Through ctypes a launch converts its 11 arguments, builds a ``c_void_p`` for the stream, takes a
lock and patches the addresses in a Python loop: a sizeable part of the ~6 us a replayed launch
costs.  The C version does the same in one call.  It is compiled with the system C compiler (no
CUDA headers needed) the first time a DirectLaunch is built, into a cache folder
(``DSV4_TUNE_CACHE_DIR``, else ``~/.cache/dsv4_tune``) under a name keyed by the source and the
Python build, written atomically so that processes may race.  :func:`load` returns None, once and
for the rest of the process, where that fails (no compiler, no ``Python.h``, a free-threaded
Python) or with ``DSV4_TUNE_FAST_LAUNCH=0``; launches then stay on ctypes.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import os
import shlex
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path
from types import ModuleType

from dsv4_tune.env import build_cache_dir, fast_launch_allowed

SOURCE = Path(__file__).with_name("fastlaunch.c")
_NAME = "_fastlaunch"  # the C module's name (PyInit__fastlaunch)

_MODULE: ModuleType | bool | None = False  # False: not tried yet
failure: str | None = None  # why the last build or import failed, for diagnostics
_LOCK = threading.Lock()


def _new_lock() -> None:
    """A child forked while another thread built the module must not inherit a held lock."""
    global _LOCK
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_new_lock)


def load() -> ModuleType | None:
    """The compiled module (``Launch``, ``launch_all``), or None where it cannot be had."""
    global _MODULE, failure
    with _LOCK:  # one build per process, also when threads build their first launches at once
        if _MODULE is False:
            if not fast_launch_allowed():
                _MODULE, failure = None, "DSV4_TUNE_FAST_LAUNCH=0"
            else:
                try:
                    _MODULE = _import(_build())
                except Exception as e:  # no compiler, no Python.h, a compile or import error: stay on ctypes
                    _MODULE, failure = None, f"{type(e).__name__}: {e}"
        return _MODULE  # type: ignore[return-value]


def _compiler() -> list[str]:
    cc = shlex.split(sysconfig.get_config_var("CC") or "")
    return cc if cc and shutil.which(cc[0]) else ["cc"]


def _build() -> Path:
    """The compiled extension's path, compiled now unless the cache holds it."""
    source = SOURCE.read_bytes()
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    key = hashlib.sha256(source + sys.version.encode() + suffix.encode()).hexdigest()[:16]
    folder = build_cache_dir()
    path = folder / f"{_NAME}-{key}{suffix}"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    paths = sysconfig.get_paths()
    includes = dict.fromkeys(f"-I{paths[k]}" for k in ("include", "platinclude"))
    fd, tmp = tempfile.mkstemp(prefix=f".{_NAME}-{key}-", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        cmd = [*_compiler(), "-O2", "-shared", "-fPIC", *includes, str(SOURCE), "-o", tmp]
        if sys.platform == "darwin":
            cmd += ["-undefined", "dynamic_lookup"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        if done.returncode:
            raise RuntimeError(f"{shlex.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.chmod(tmp, 0o755)  # mkstemp's 0600 would keep other users of a shared cache out
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
    return path


def _import(path: Path) -> ModuleType:
    name = f"{__package__}.{_NAME}"
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    loader.exec_module(module)
    return module
