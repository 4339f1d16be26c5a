"""The SQLite store of sweeps, measurements and winners (sqlite-utils); the only code that touches SQL.

WAL mode and a busy timeout let two sweeps share a file; every measurement is its own transaction,
committed as soon as it is taken, so a killed sweep loses nothing already measured, and a resumed
sweep (same GPU, versions and grid) skips what is stored (rows that failed to launch or ran out of
memory are tried again: those may have been the machine's fault).  A sweep row names its owner (host
and pid) and its last sign of life, so a sweep killed mid-way reads as interrupted, not running.
``Store(path, readonly=True)`` reads a store it may not write (a read-only folder or filesystem);
any file that is not a dsv4-tune store is a :class:`StoreError` naming it.  Inspect with ordinary tools, e.g.
``sqlite-utils rows sweeps.db winners`` or ``sqlite3 sweeps.db 'select ... from measurements'``.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlite_utils

from dsv4_tune.errors import InputError
from dsv4_tune.files import check_folder
from dsv4_tune.registry.workload import OpWorkload, Plan, Workload

STATUSES = ("ok", "mismatch", "compile_error", "launch_error", "oom")
RETRIED = ("launch_error", "oom")  # a resumed sweep measures these rows again
# Columns of a sweep's GPU identity added after 2026-11-26: a resume fills them where they are null.
IDENTITY_COLUMNS = ("fp8", "multiprocessors", "pci_device_id", "driver_version")
# Sweep columns added after the first stores: the owner and its progress (JSON, see beat), the FP8
# flavour of the pools measured, the SM / CU count, the version of the timed inputs (null: 1) and
# of each variant's kernels (JSON, ``tuner.kernel_versions``; null: a sweep from before they were kept).
OWNER_COLUMNS = {"host": str, "pid": int, "pid_start": str, "heartbeat": str, "progress": str, "fp8": str,
                 "multiprocessors": int, "pci_device_id": int, "driver_version": str, "inputs": int,
                 "kernels": str}
STALE_AFTER_S = 3600  # a running sweep of another host with no sign of life for this long: interrupted
CLAIM_LEASE_S = 600.0  # a worker's claim on a workload lapses this long after its last sign of life
CLAIM_COLUMNS = {"changed": int}  # a finished claim stored new rows (which re-opens the workload's final)


def sweep_key(meta: dict[str, Any]) -> str:
    """What makes two runs one sweep: the GPU id, driver, torch, Triton and grid, and where they are
    not the defaults, the pools' FP8 flavour and the version of the timed inputs (``tuner.inputs.
    INPUTS_VERSION``), so that older sweeps keep their keys and a sweep timed on other inputs is
    never resumed by this one."""
    keyed = ("gpu_id", "driver", "torch", "triton", "grid_hash")
    extra = {"fp8": meta["fp8"]} if meta.get("fp8") not in (None, "e4m3fn") else {}
    if (meta.get("inputs") or 1) != 1:
        extra["inputs"] = meta["inputs"]
    return stable_hash({**{k: meta[k] for k in keyed}, **extra})


class StoreError(InputError):
    """A store that cannot be used as asked (missing, not SQLite, not a dsv4-tune store, not
    writable); the message names the file."""
EAGER_COLUMNS = {"eager_variant": str, "eager_config": str, "eager_us": float, "eager_reason": str}


DECODE_KEY_GLOB = "h[0-9]*"  # SQLite GLOB of a decode workload's key (an op's starts with the op's name)


def workload_key(w: Workload | OpWorkload) -> str:
    """Stable text key of a workload, e.g. ``h128-m128-x1024-len11-sink1-T64`` or
    ``compress-head_dim512-mode_decode-ratio4-R64``."""
    if isinstance(w, OpWorkload):
        return "-".join([w.op, *(f"{k}{v}" if isinstance(v, int) else f"{k}_{v}" for k, v in w.params)]) + f"-R{w.rows}"
    return (f"h{w.h_q}-m{w.topk_main}-x{w.topk_extra}-len{int(w.has_len_main)}{int(w.has_len_extra)}"
            f"-sink{int(w.has_sink)}-T{w.total_tokens}")


def encode_plan(plan: Plan) -> dict[str, str]:
    """A plan's columns in a measurement or winner row: its text, variant and config JSON (sorted keys)."""
    return {"plan": str(plan), "variant": plan.variant, "config": json.dumps(plan.as_dict(), sort_keys=True)}


def decode_plan(variant: str, config: str) -> Plan:
    """The plan of a row's variant and config columns."""
    return Plan.make(variant, json.loads(config))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def stable_hash(obj: Any) -> str:
    """Short hash of a JSON-able object (sorted keys), e.g. a grid."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


class Store:
    """One SQLite file of sweeps."""

    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        """Open (creating it unless ``readonly``) the store at ``path``; ``readonly`` needs an
        existing store and writes nothing, not even WAL files where it cannot."""
        self.path = Path(path)
        self.readonly = readonly
        self.stale: dict[str, int] = {}  # what the last open_sweep forgot: {variant key: rows}
        if readonly:
            self.db = sqlite_utils.Database(_connect_readonly(self.path))
            if "sweeps" not in self._tables():
                raise StoreError(f"{self.path}: not a dsv4-tune store (it has no sweeps table)")
            return
        try:
            check_folder(self.path)  # a mistyped --db fails instead of growing folders
        except OSError as e:
            raise StoreError(f"{self.path}: {e.strerror}") from None
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA busy_timeout = 60000")
        self.db = sqlite_utils.Database(conn)
        for attempt in range(50):  # another process may be creating the same tables right now
            try:
                self.db.enable_wal()
                self._create()
                break
            except sqlite3.OperationalError as e:
                if "locked" in str(e) and attempt < 49:
                    time.sleep(0.1 + 0.05 * attempt)
                    continue
                raise StoreError(f"{self.path}: cannot write the store ({e}); `status` and `export` read a "
                                 "store they cannot write") from None
            except sqlite3.DatabaseError as e:
                raise StoreError(f"{self.path}: not a dsv4-tune store (SQLite: {e})") from None

    def _tables(self) -> list[str]:
        try:
            return self.db.table_names()
        except sqlite3.DatabaseError as e:
            raise StoreError(f"{self.path}: not a dsv4-tune store (SQLite: {e})") from None

    def _create(self) -> None:
        self.db["sweeps"].create(
            {"id": str, "key": str, "gpu_id": str, "arch": str, "device_name": str, "driver": str,
             "torch": str, "triton": str, "interpreter": int, "grid_hash": str, "grid": str,
             "started": str, "finished": str, "status": str, **OWNER_COLUMNS},
            pk="id", if_not_exists=True, not_null={"key", "gpu_id"},
        )
        self.db["measurements"].create(
            {"id": int, "sweep_id": str, "workload": str, "stage": str, "plan": str, "variant": str,
             "config": str, "status": str, "error": str, "max_error": float, "samples": int,
             "median_us": float, "p20_us": float, "p80_us": float, "rounds": int, "flagged": str,
             "taken": str},
            pk="id", foreign_keys=[("sweep_id", "sweeps", "id")], if_not_exists=True,
        )
        self.db["measurements"].create_index(["sweep_id", "workload", "stage", "plan"], unique=True,
                                             if_not_exists=True)
        self.db["winners"].create(
            {"sweep_id": str, "workload": str, "plan": str, "variant": str, "config": str,
             "median_us": float, "runner_up": str, "margin": float, "reason": str, **EAGER_COLUMNS},
            pk=("sweep_id", "workload"), if_not_exists=True,
        )
        self.db["claims"].create(  # which worker of a parallel sweep run measures which workload
            {"sweep_id": str, "run": str, "workload": str, "worker": str, "expires": float, "done": int,
             **CLAIM_COLUMNS},
            pk=("sweep_id", "run", "workload"), if_not_exists=True,
        )
        for table, columns in (("winners", EAGER_COLUMNS), ("sweeps", OWNER_COLUMNS), ("claims", CLAIM_COLUMNS)):
            have = self.db[table].columns_dict
            for col, kind in columns.items():
                if col not in have:  # a store made before these columns: typed columns, not TEXT
                    self.db[table].add_column(col, kind)

    # ------------------------------------------------------------------ sweeps
    def open_sweep(self, meta: dict[str, Any], fresh: bool = False) -> tuple[str, bool]:
        """The sweep for ``meta`` (GPU, versions, grid): the latest unfinished-or-finished one with the
        same key unless ``fresh``; else a new one.  Returns (id, resumed).

        ``meta["kernels"]`` (JSON {variant key: version}) is not part of the key: resuming a sweep
        whose record differs forgets the rows of every variant whose kernels changed, so they are
        timed again (:attr:`stale`: {variant key: rows forgotten}); a sweep that recorded none (made
        before versions were kept) is taken as measured on today's kernels."""
        self.stale = {}
        key = sweep_key(meta)
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")  # read-then-insert as one step: two sweeps may start at once
        try:
            existing = [r[0] for r in conn.execute("select id from sweeps where key = ? order by started desc, id desc",
                                                    [key])]
            owner = {"host": socket.gethostname(), "pid": os.getpid(), "pid_start": _start_time(os.getpid()),
                     "heartbeat": now()}
            if existing and not fresh:
                conn.execute("update sweeps set status = 'running', finished = null, host = ?, pid = ?, pid_start = ?, "
                             "heartbeat = ? where id = ?", [*owner.values(), existing[0]])
                # Identity a sweep made before these columns lacks, taken from the GPU that resumes it
                # (the same GPU id, driver and toolchain: the key says so); recorded values are kept.
                for col in IDENTITY_COLUMNS:
                    if meta.get(col) is not None:
                        conn.execute(f"update sweeps set {col} = ? where id = ? and {col} is null",
                                     [meta[col], existing[0]])
                conn.execute("COMMIT")
                if meta.get("kernels") is not None:
                    self.stale = self._refresh_kernels(existing[0], json.loads(meta["kernels"]))
                return existing[0], True
            n = len(existing) + 1
            while conn.execute("select 1 from sweeps where id = ?", [f"{key}-{n}"]).fetchone():  # see mark_inputs
                n += 1
            sweep_id = f"{key}-{n}"
            row = {"id": sweep_id, "key": key, **meta, "started": now(), "finished": None, "status": "running",
                   **owner}
            cols = ", ".join(row)
            conn.execute(f"insert into sweeps ({cols}) values ({', '.join('?' for _ in row)})", list(row.values()))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return sweep_id, False

    def _refresh_kernels(self, sweep_id: str, now: dict[str, str]) -> dict[str, int]:
        """Forget the rows of each variant whose kernel version differs from the sweep's record and
        record ``now``; returns {variant key: rows forgotten} of those that had rows."""
        was = self.db.execute("select kernels from sweeps where id = ?", [sweep_id]).fetchone()[0]
        stale = {}
        for key, version in (json.loads(was) if was else {}).items():
            if key in now and now[key] != version:
                op, _, variant = key.rpartition(":")
                stale[key] = self.forget_variant(sweep_id, variant, op or None)
        with self.db.conn:  # forgetting marks a sweep interrupted: this one is running again
            self.db.execute("update sweeps set kernels = ?, status = 'running' where id = ?",
                            [json.dumps(now, sort_keys=True), sweep_id])
        return {k: n for k, n in stale.items() if n}

    def finish_sweep(self, sweep_id: str, status: str = "done") -> None:
        """Mark a sweep ended: ``done``, or ``interrupted`` when it stopped early."""
        self.db["sweeps"].update(sweep_id, {"status": status, "finished": now(), "heartbeat": now()})

    def beat(self, sweep_id: str, progress: dict[str, Any] | None = None) -> None:
        """Record that the sweep's owner is alive (called as it works), and where it stands:
        ``progress`` = {"stages": {stage: {"done": n, "total": m, "seconds": s}}, "steps": [done, total],
        "stage": the current one} (what ``status`` shows)."""
        if progress is None:
            self.db.execute("update sweeps set heartbeat = ? where id = ?", [now(), sweep_id])
        else:
            self.db.execute("update sweeps set heartbeat = ?, progress = ? where id = ?",
                            [now(), json.dumps(progress, sort_keys=True), sweep_id])

    def progress(self, sweep: dict[str, Any]) -> dict[str, Any]:
        """A sweep's recorded progress (see :meth:`beat`); for a sweep from before it was recorded,
        per stage the workloads that have rows of that stage, of the grid's points."""
        host = self.db.execute("select count(distinct workload) from measurements where sweep_id = ? and stage = "
                               "'host'", [sweep["id"]]).fetchone()[0]
        if sweep.get("progress"):
            recorded = json.loads(sweep["progress"])
            if host:  # timed in the final stage where the graph winner is fast enough: no total ahead
                recorded["stages"]["host"] = {"done": host, "total": None}
            return recorded
        grid = json.loads(sweep["grid"])
        points = len(grid.get("classes", [])) * len(grid.get("tokens", [])) + sum(
            len(o.get("rows", [])) for o in grid.get("ops", []))
        stages = {r["stage"]: {"done": r["n"], "total": None if r["stage"] == "host" else points}
                  for r in self.db.query("select stage, count(distinct workload) as n from measurements "
                                         "where sweep_id = ? group by stage", [sweep["id"]])}
        return {"stages": stages, "steps": None, "stage": None}

    def state(self, sweep: dict[str, Any]) -> str:
        """What a sweep row's ``status`` means now: a ``running`` sweep whose owner died (same host: its
        pid gone, or reused by a process that started later; another host: no sign of life for
        :data:`STALE_AFTER_S`) is ``interrupted``, and so is one that records no owner (every sweep
        since owners were recorded does; an older one still running is unlikely).  Containers that
        share a host name but not a pid namespace see each other's sweeps as interrupted."""
        if sweep["status"] != "running":
            return sweep["status"]
        host, pid, beat = sweep.get("host"), sweep.get("pid"), sweep.get("heartbeat")
        if not host:
            return "interrupted"
        if host == socket.gethostname() and pid:
            started = sweep.get("pid_start")
            reused = bool(started) and _start_time(int(pid)) not in (started, None)
            return "running" if _alive(int(pid)) and not reused else "interrupted"
        if beat and time.time() - datetime.fromisoformat(beat).timestamp() > STALE_AFTER_S:
            return "interrupted"
        return "running"

    def sweeps(self) -> list[dict[str, Any]]:
        return list(self.db.query("select * from sweeps order by started"))

    def sweep(self, sweep_id: str | None = None) -> dict[str, Any]:
        rows = self.sweeps() if sweep_id is None else list(self.db["sweeps"].rows_where("id = ?", [sweep_id]))
        if not rows:
            raise StoreError(f"sweep: {'no sweeps' if sweep_id is None else f'no sweep {sweep_id!r}'} in {self.path}")
        return rows[-1]

    # ------------------------------------------------------------ claims (parallel workers)
    def claim(self, sweep_id: str, run: str, workloads: list[str], worker: str,
              lease_s: float = CLAIM_LEASE_S) -> str | None:
        """The first of ``workloads`` that no worker of ``run`` has done or holds (a claim whose lease
        lapsed is free again: its worker died), now held by ``worker``; None when nothing is left
        to take.  One transaction: two workers never take the same workload.  A claim taken over
        from another worker counts as having stored new rows (the dead worker may have stored all
        of them before it died)."""
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            held = {w: (done, expires, who, changed) for w, done, expires, who, changed in conn.execute(
                "select workload, done, expires, worker, changed from claims where sweep_id = ? and run = ?",
                [sweep_id, run])}
            t = time.time()
            for w in workloads:
                done, expires, who, changed = held.get(w, (0, 0.0, None, 0))
                if not done and (expires <= t or who == worker):
                    taken_over = int(bool(changed) or (who is not None and who != worker))
                    conn.execute("insert or replace into claims (sweep_id, run, workload, worker, expires, done, "
                                 "changed) values (?, ?, ?, ?, ?, 0, ?)",
                                 [sweep_id, run, w, worker, t + lease_s, taken_over])
                    conn.execute("COMMIT")
                    return w
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return None

    def renew(self, sweep_id: str, run: str, worker: str, lease_s: float = CLAIM_LEASE_S) -> None:
        """Extend the leases of ``worker``'s claims (it is alive and working)."""
        self.db.execute("update claims set expires = ? where sweep_id = ? and run = ? and worker = ? and done = 0",
                        [time.time() + lease_s, sweep_id, run, worker])

    def release(self, sweep_id: str, run: str, worker: str) -> None:
        """Let another worker take ``worker``'s unfinished claims now (its process is gone)."""
        self.db.execute("update claims set expires = 0 where sweep_id = ? and run = ? and worker = ? and done = 0",
                        [sweep_id, run, worker])

    def finish_claim(self, sweep_id: str, run: str, workload: str, worker: str, changed: bool = False) -> None:
        """``worker`` finished ``workload``; ``changed``: it stored new rows there (or an earlier
        holder of the claim may have)."""
        self.db.execute("update claims set done = 1, changed = max(coalesce(changed, 0), ?) where sweep_id = ? "
                        "and run = ? and workload = ? and worker = ?", [int(changed), sweep_id, run, workload, worker])

    def claims_changed(self, sweep_id: str, run: str, workloads: list[str]) -> bool:
        """Whether a finished claim of ``run`` on one of ``workloads`` stored new rows."""
        marks = ", ".join("?" for _ in workloads)
        return self.db.execute(f"select 1 from claims where sweep_id = ? and run = ? and done = 1 and changed = 1 "
                               f"and workload in ({marks})", [sweep_id, run, *workloads]).fetchone() is not None

    def claims_left(self, sweep_id: str, run: str, workloads: list[str]) -> int:
        """How many of ``workloads`` the workers of ``run`` have not finished."""
        done = {r[0] for r in self.db.execute(
            "select workload from claims where sweep_id = ? and run = ? and done = 1", [sweep_id, run])}
        return sum(w not in done for w in workloads)

    # ------------------------------------------------------------ measurements
    def measured(self, sweep_id: str, stage: str, retried: bool = False,
                 workload: str | None = None) -> set[tuple[str, str]]:
        """(workload, plan) pairs already stored for a stage (of one ``workload``, else all): what a
        resumed sweep skips (all but the :data:`RETRIED` rows); with ``retried``, those rows instead
        (what it measures again)."""
        where, args = "sweep_id = ? and stage = ?", [sweep_id, stage]
        if workload is not None:
            where, args = where + " and workload = ?", [*args, workload]
        return {(r["workload"], r["plan"]) for r in self.db.query(
            f"select workload, plan, status from measurements where {where}", args)
            if (r["status"] in RETRIED) == retried}

    def add_measurement(
        self, sweep_id: str, workload: str, stage: str, plan: Plan, status: str, error: str | None = None,
        **fields: Any,
    ) -> None:
        """Store one measurement now (its own transaction); a repeat of the same key replaces it.
        ``fields``: the statistics columns (median_us, p20_us, p80_us, samples, rounds, flagged, max_error)."""
        row = {"sweep_id": sweep_id, "workload": workload, "stage": stage, **encode_plan(plan), "status": status,
               "error": error, **fields}
        self.db["measurements"].upsert({**row, "taken": now()},
                                       pk=("sweep_id", "workload", "stage", "plan"), alter=False)

    def measurement_count(self, sweep_id: str, status: str | None = None) -> int:
        """Rows of a sweep (of one status, when named)."""
        sql, args = "select count(*) from measurements where sweep_id = ?", [sweep_id]
        if status is not None:
            sql, args = sql + " and status = ?", [*args, status]
        return self.db.execute(sql, args).fetchone()[0]

    def first_error(self, sweep_id: str) -> dict[str, Any] | None:
        """The first failed row of a sweep (status, error, plan, workload), if any."""
        rows = list(self.db.query("select workload, plan, status, error from measurements where sweep_id = ? "
                                  "and status != 'ok' order by id limit 1", [sweep_id]))
        return rows[0] if rows else None

    def latest_timings(self, sweep_id: str, workload: str, stages: tuple[str, ...]) -> dict[str, dict[str, Any]]:
        """{plan text: row} of the workload's plans timed in these stages, each at its latest stage's
        measurement (it was re-timed beside stronger company)."""
        latest: dict[str, dict] = {}
        for r in self.measurements(sweep_id, workload=workload):
            if r["stage"] in stages and r["status"] == "ok" and r["median_us"] is not None:
                latest[r["plan"]] = r  # rows come in id order: later stages overwrite earlier ones
        return latest

    def ranked(self, sweep_id: str, workload: str, stages: tuple[str, ...]) -> list[Plan]:
        """The workload's plans timed in these stages, fastest first, each by its latest median."""
        ordered = sorted(self.latest_timings(sweep_id, workload, stages).values(), key=lambda r: r["median_us"])
        return [decode_plan(r["variant"], r["config"]) for r in ordered]

    def passed(self, sweep_id: str, workload: str, other_than: str) -> dict[str, float]:
        """{plan text: largest error} of the plans that passed their check on this workload in a stage
        other than ``other_than`` (a later stage need not check them again)."""
        return {r["plan"]: r["max_error"] for r in self.measurements(sweep_id, workload=workload)
                if r["status"] == "ok" and r["stage"] != other_than and r["max_error"] is not None}

    def measurements(
        self, sweep_id: str, stage: str | None = None, workload: str | None = None
    ) -> list[dict[str, Any]]:
        """Rows of a sweep in the order they were taken, of one stage and / or one workload (the
        unique index on (sweep_id, workload, stage, plan) serves the workload filter)."""
        sql, args = "select * from measurements where sweep_id = ?", [sweep_id]
        if workload is not None:
            sql, args = sql + " and workload = ?", [*args, workload]
        if stage is not None:
            sql, args = sql + " and stage = ?", [*args, stage]
        return list(self.db.query(sql + " order by id", args))

    # ----------------------------------------------------------------- winners
    def set_winner(
        self, sweep_id: str, workload: str, plan: Plan, *, median_us: float, runner_up: Plan | None,
        margin: float | None, reason: str, eager: Plan | None = None, eager_us: float | None = None,
        eager_reason: str | None = None,
    ) -> None:
        """Store (or replace) the winner of a workload, and its eager winner where it has one."""
        self.db["winners"].upsert({
            "sweep_id": sweep_id, "workload": workload, **encode_plan(plan), "median_us": median_us,
            "runner_up": str(runner_up) if runner_up else None, "margin": margin, "reason": reason,
            "eager_variant": eager.variant if eager else None,
            "eager_config": encode_plan(eager)["config"] if eager else None, "eager_us": eager_us,
            "eager_reason": eager_reason,
        }, pk=("sweep_id", "workload"))

    def forget(self, sweep_id: str, workloads: Iterable[str]) -> int:
        """Drop every row (measurements, winner, claims) of ``workloads`` in a sweep, so that resuming
        it measures them anew: how a sweep is brought up to date when the inputs of some of its
        workloads changed.  The sweep reads ``interrupted`` (with its progress counted from its rows)
        until then.  Returns how many measurements went."""
        with self.db.conn:
            return self._reopen(sweep_id, list(workloads), ("measurements", "winners", "claims"))

    def forget_variant(self, sweep_id: str, variant: str, op: str | None = None) -> int:
        """Drop every measurement of decode variant ``variant``'s plans in a sweep (of the op ``op``'s
        variant, when named: ops reuse names such as ``fused``), and the winners and claims of the
        workloads that had one, so that resuming it times that variant anew and chooses again: how a
        sweep is brought up to date after the variant's kernel changed (its other rows stand, and the
        final stage re-times the leaders side by side).  Returns how many measurements went."""
        where = "sweep_id = ? and variant = ? and workload glob ?"
        args = [sweep_id, variant, DECODE_KEY_GLOB if op is None else f"{op}-*"]  # LIKE would read qk_norm's _
        hit = [r["workload"] for r in self.db.query(f"select distinct workload from measurements where {where}", args)]
        with self.db.conn:
            gone = self.db.execute(f"delete from measurements where {where}", args).rowcount
            self._reopen(sweep_id, hit, ("winners", "claims"))
        return gone

    def _reopen(self, sweep_id: str, workloads: list[str], tables: tuple[str, ...]) -> int:
        """Delete the rows of ``workloads`` from ``tables`` and mark the sweep interrupted (when any
        workload is named), inside the caller's transaction; returns the measurements deleted."""
        gone = 0
        for start in range(0, len(workloads), 500):  # SQLite's bound on host parameters
            part = workloads[start : start + 500]
            marks = ", ".join("?" for _ in part)
            for table in tables:
                cur = self.db.execute(f"delete from {table} where sweep_id = ? and workload in ({marks})",
                                      [sweep_id, *part])
                gone += cur.rowcount if table == "measurements" else 0
        if workloads:
            self.db.execute("update sweeps set status = 'interrupted', finished = null, progress = null "
                            "where id = ?", [sweep_id])
        return gone

    def mark_inputs(self, sweep_id: str, version: int) -> None:
        """Record that every row of a sweep was measured on inputs of ``version`` (after :meth:`forget`
        dropped the rows whose inputs changed), so that a sweep on those inputs resumes it."""
        row = self.sweep(sweep_id)
        self.db.execute("update sweeps set inputs = ?, key = ? where id = ?",
                        [version, sweep_key({**row, "inputs": version}), sweep_id])

    def has_winner(self, sweep_id: str, workload: str) -> bool:
        return self.db.execute("select 1 from winners where sweep_id = ? and workload = ?",
                               [sweep_id, workload]).fetchone() is not None

    def winners(self, sweep_id: str) -> list[dict[str, Any]]:
        """Winner rows by workload, each with its decoded plans: ``winner_plan`` and ``eager_plan``
        (None where the workload has no eager winner)."""
        rows = list(self.db["winners"].rows_where("sweep_id = ?", [sweep_id], order_by="workload"))
        for r in rows:
            r["winner_plan"] = decode_plan(r["variant"], r["config"])
            r["eager_plan"] = decode_plan(r["eager_variant"], r["eager_config"]) if r.get("eager_variant") else None
        return rows

    # ----------------------------------------------------------------- compile checks
    def add_compile_rows(self, rows: Iterable[dict[str, Any]]) -> None:
        """Cross-compile results keyed by arch, toolchain and kernel config (the tuner reads them too)."""
        self.db["compile"].upsert_all(
            [{**{k: v for k, v in r.items() if k != "problems"}, "problems": json.dumps(r["problems"]),
              "checked": now()} for r in rows],
            pk=("key", "toolchain"), alter=True,
        )

    def unfit_kernels(self, arch: str) -> dict[str, list[str]]:
        """{kernel key: problems} of the kernels the newest compile check of ``arch`` in this store
        found unfit (spills, shared memory, compile failures); empty when none was stored."""
        if "compile" not in self.db.table_names():
            return {}
        newest: dict[str, tuple[str, list[str]]] = {}
        for r in self.db.query("select key, problems, checked from compile where arch = ?", [arch]):
            if r["key"] not in newest or (r["checked"] or "") > newest[r["key"]][0]:
                newest[r["key"]] = (r["checked"] or "", json.loads(r["problems"] or "[]"))
        return {k: problems for k, (_, problems) in newest.items() if problems}


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A connection that writes nothing: ``mode=ro``; where even that cannot open a WAL store (its
    folder is read-only, so SQLite cannot make the shared-memory file), ``immutable=1``."""
    if not path.is_file():
        raise StoreError(f"{path}: no store there")
    uri = path.resolve().as_uri()
    wal = path.with_name(path.name + "-wal")
    # immutable=1 reads only the main file: with a non-empty WAL beside it, rows would be missing
    tries = ("mode=ro",) if wal.exists() and wal.stat().st_size > 0 else ("mode=ro", "immutable=1")
    for flags in tries:
        conn = None
        try:
            conn = sqlite3.connect(f"{uri}?{flags}", uri=True, timeout=60, isolation_level=None)
            conn.execute("select count(*) from sqlite_master").fetchone()
            return conn
        except sqlite3.OperationalError:
            if conn is not None:
                conn.close()
        except sqlite3.DatabaseError as e:
            if conn is not None:
                conn.close()
            raise StoreError(f"{path}: not a dsv4-tune store (SQLite: {e})") from None
    why = " (its write-ahead log holds rows not yet in the file, and the folder is read-only: copy both files " \
          "somewhere writable)" if len(tries) == 1 else ""
    raise StoreError(f"{path}: cannot be opened for reading{why}")


def _start_time(pid: int) -> str | None:
    """When a process started (Linux: its start time in clock ticks since boot), to tell a reused pid
    from the original owner; None where that cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    """Whether a process of this host with this pid exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
