"""Stores from several hosts (or copies of one store) into one, without duplicates.

A sweep is the same sweep in two stores when its key (GPU id, driver, versions, grid, flavour, inputs), start time and
host agree; its rows are then merged (a measurement keyed by workload, stage and plan keeps the
later one; the winners of the fresher copy win).  Two different sweeps that happen to share an id
(each host numbers its own sweeps ``<key>-1``, ``<key>-2``, ...) are both kept: the incoming one
is renumbered, and every sweep records where it came from (``origin``: the files and ids it was
merged from).  GPU identity and provenance stay on each sweep row, so ``export`` can write one
policy per GPU id of the merged store.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from dsv4_tune.cache.store import Store, StoreError
from dsv4_tune.files import replacing

MEASUREMENT_KEY = ("sweep_id", "workload", "stage", "plan")


def _identity(sweep: dict[str, Any]) -> tuple:
    return (sweep["key"], sweep["started"], sweep.get("host") or "")


def _freshness(sweep: dict[str, Any]) -> str:
    """How far along a copy of a sweep is: its latest timestamp (ISO strings sort in time order)."""
    return max(sweep.get("finished") or "", sweep.get("heartbeat") or "", sweep["started"] or "")


def merge_stores(sources: list[Path], out: Path) -> dict[str, Any]:
    """Merge ``sources`` into the store at ``out`` (created if missing; its own sweeps count as the
    first source).  Every input is opened before anything is written, and the merge is made in a
    copy renamed over ``out`` at the end, so a failed merge leaves ``out`` as it was (or absent).
    Returns a summary: sweeps added, sweeps merged into one already there, the renumbered ids, and
    the measurements and winners the merged store holds (``*_new``: how many of them it gained)."""
    out = Path(out)
    if any(Path(s).resolve() == out.resolve() for s in sources):
        raise StoreError(f"{out}: the output cannot also be an input")
    inputs = [(Path(path), Store(path, readonly=True)) for path in sources]
    old = Store(out, readonly=True) if out.exists() else None
    summary: dict[str, Any] = {"sweeps_added": 0, "sweeps_merged": 0, "renumbered": {}}
    with replacing(out) as tmp:
        if old is not None:
            with sqlite3.connect(tmp) as copy:
                old.db.conn.backup(copy)
        dest = Store(tmp)
        before = _held(dest)
        for path, src in inputs:
            for sweep in src.sweeps():
                target, fresher = _place(dest, sweep, f"{path}#{sweep['id']}", summary)
                _copy_measurements(src, dest, sweep["id"], target)
                if fresher:
                    _copy_winners(src, dest, sweep["id"], target)
            if "compile" in src.db.table_names():
                dest.db["compile"].upsert_all(src.db["compile"].rows, pk=("key", "toolchain"), alter=True)
        held = _held(dest)
        summary.update(held)
        summary.update({f"{k}_new": held[k] - before[k] for k in held})
        dest.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the file before it is renamed
        dest.db.conn.close()
    return summary


def _held(store: Store) -> dict[str, int]:
    """The rows a store holds (what a merge reports: duplicates merged, not counted twice)."""
    return {t: store.db.execute(f"select count(*) from {t}").fetchone()[0] for t in ("measurements", "winners")}


def _place(dest: Store, sweep: dict[str, Any], origin: str, summary: dict) -> tuple[str, bool]:
    """The id the incoming sweep has in ``dest`` (inserted or renumbered as needed) and whether the
    incoming copy is at least as fresh as what ``dest`` holds (its winners then win)."""
    same = next((s for s in dest.sweeps() if _identity(s) == _identity(sweep)), None)
    if same is not None:
        fresher = _freshness(sweep) >= _freshness(same)
        origins = sorted({*json.loads(same.get("origin") or "[]"), origin})
        update: dict[str, Any] = {"origin": json.dumps(origins)}
        if fresher:
            update.update({k: sweep.get(k) for k in ("finished", "status", "heartbeat", "progress") if k in sweep})
        dest.db["sweeps"].update(same["id"], update, alter=True)
        summary["sweeps_merged"] += 1
        return same["id"], fresher
    ids = {s["id"] for s in dest.sweeps()}
    target = sweep["id"]
    if target in ids:
        n = 1
        while f"{sweep['key']}-{n}" in ids:
            n += 1
        target = f"{sweep['key']}-{n}"
        summary["renumbered"][origin] = target
    row = {**sweep, "id": target, "origin": json.dumps([origin])}
    dest.db["sweeps"].insert(row, alter=True)
    summary["sweeps_added"] += 1
    return target, True


def _copy_measurements(src: Store, dest: Store, sweep_id: str, target: str) -> None:
    rows = [{**{k: v for k, v in r.items() if k != "id"}, "sweep_id": target} for r in src.measurements(sweep_id)]
    if not rows:
        return
    for col in {c for r in rows for c in r} - set(dest.db["measurements"].columns_dict):
        dest.db["measurements"].add_column(col, type(next(r[col] for r in rows if r.get(col) is not None)))
    cols = list(rows[0])
    updates = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in MEASUREMENT_KEY)
    sql = (f"insert into measurements ({', '.join(cols)}) values ({', '.join('?' for _ in cols)}) "
           f"on conflict({', '.join(MEASUREMENT_KEY)}) do update set {updates} "
           "where coalesce(excluded.taken, '') >= coalesce(measurements.taken, '')")
    conn = dest.db.conn
    conn.execute("BEGIN IMMEDIATE")  # one transaction per sweep: all its rows or none
    try:
        conn.executemany(sql, [[r.get(c) for c in cols] for r in rows])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _copy_winners(src: Store, dest: Store, sweep_id: str, target: str) -> None:
    rows = [{**r, "sweep_id": target} for r in src.db["winners"].rows_where("sweep_id = ?", [sweep_id])]
    if rows:
        dest.db["winners"].upsert_all(rows, pk=("sweep_id", "workload"), alter=True)
