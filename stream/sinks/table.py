"""One Parquet table on disk: a directory of date partitions plus a manifest that says which files count.

Layout: `<root>/date=YYYY-MM-DD/<first>-<last>.<generation>.parquet` and `<root>/_manifest.json`.
The manifest lists the live files and, for each, the source-offset ranges its rows came from, in row
order (`[first, last, rows]`: a batch file has one range, a compacted file several). Readers
(`views.py`) open only the files the manifest lists; a file on disk that the manifest does not list
is invisible (a crashed write, or one superseded and waiting for deletion).

Why this makes replays effectively-once. Invariant: the ranges in a manifest are pairwise disjoint.
A write of range [f, l] commits, in ONE atomic manifest replace, its new files plus the removal of
every row whose range overlaps [f, l] — whole files when all their ranges overlap, otherwise the
file is rewritten without the overlapping ranges' rows (a compacted file keeps its other batches).
So a replay of the same range replaces it, in every partition (even when the replay puts rows in
another date — processing-date partitions on the next day); a replay split differently (crash
mid-batch, executor re-reads [f, m] then [m+1, l]) first removes the whole old [f, l] and then
re-adds [m+1, l]; no row of an offset is ever counted twice, because two overlapping ranges never
sit in one manifest. A crash before the manifest replace leaves only invisible files; the executor
has not committed its position, so it writes the range again. Empty writes still supersede.

Concurrency: writers and compaction of one table serialise on `flock(<root>/.lock)` (works across
threads and processes). Readers take no lock: they read the manifest (replaced atomically) and the
files it lists; a superseded file is deleted only `grace_s` after it left the manifest, so a query
that started on the previous manifest can still read it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "_manifest.json"
LOCK = ".lock"
TMP_PREFIX = ".tmp-"
# Files at or over this size are done: compaction merges only smaller ones (see compact()).
SMALL_FILE_BYTES = 16 * 1024 * 1024

Range = tuple[int, int, int]  # first offset, last offset (inclusive), rows in the file


def overlaps(a_first: int, a_last: int, b_first: int, b_last: int) -> bool:
    return a_first <= b_last and b_first <= a_last


@dataclass(slots=True)
class FileEntry:
    path: str  # relative to the table root: "date=2024-12-10/100-199.7.parquet"
    ranges: list[Range]
    version: int  # pipeline version that wrote it (max, for compacted files)
    columns: dict[str, Any]  # column name -> type tree (see type_tree)

    @property
    def rows(self) -> int:
        return sum(r[2] for r in self.ranges)

    @property
    def partition(self) -> str:
        return self.path.split("/", 1)[0]

    def to_json(self) -> dict[str, Any]:
        return {"path": self.path, "ranges": [list(r) for r in self.ranges], "version": self.version,
                "columns": self.columns}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FileEntry:
        return cls(data["path"], [(int(a), int(b), int(c)) for a, b, c in data["ranges"]],
                   int(data["version"]), dict(data["columns"]))


@dataclass(slots=True)
class Manifest:
    generation: int = 0
    files: list[FileEntry] = field(default_factory=list)
    garbage: list[tuple[str, float]] = field(default_factory=list)  # (path, time it left the manifest)


def type_tree(dtype: pa.DataType) -> Any:
    """A JSON form of an Arrow type that keeps what decides whether DuckDB can unify two files."""
    if pa.types.is_null(dtype):
        return "null"
    if pa.types.is_struct(dtype):
        fields = (dtype.field(i) for i in range(dtype.num_fields))
        return {"struct": {f.name: type_tree(f.type) for f in fields}}
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_fixed_size_list(dtype):
        return {"list": type_tree(dtype.value_type)}
    if pa.types.is_map(dtype):
        return {"map": str(dtype)}
    if pa.types.is_dictionary(dtype):  # DuckDB reads it as its values; files merge only with their like
        return f"dictionary<{dtype.value_type}>"
    return str(dtype)


def unifiable(a: Any, b: Any) -> bool:
    """Whether DuckDB's `union_by_name` reads both types as one column (checked on DuckDB 2.0.1):
    scalars always unify (int+string -> VARCHAR), structs merge by field, lists by element; a nested
    type against a scalar or another nested kind does not."""
    if a == b or a == "null" or b == "null":
        return True
    if isinstance(a, str) and isinstance(b, str):
        return True
    if isinstance(a, dict) and isinstance(b, dict):
        if "struct" in a and "struct" in b:
            common = a["struct"].keys() & b["struct"].keys()
            return all(unifiable(a["struct"][k], b["struct"][k]) for k in common)
        if "list" in a and "list" in b:
            return unifiable(a["list"], b["list"])
    return False


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """tmp file in the same directory, fsync, rename over `path`, fsync the directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}-{path.name}")
    try:
        with open(tmp, "wb") as handle:
            pq.write_table(table, handle, compression="zstd")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


class ParquetTable:
    """The files of one (kind, pipeline): outputs, signals or dead letters."""

    def __init__(self, root: Path, *, grace_s: float = 660.0, clock: Callable[[], float] = time.time) -> None:
        self.root = root
        self.grace_s = grace_s
        self.clock = clock

    # -- reading (no lock) --------------------------------------------------------------------
    def load(self) -> Manifest:
        try:
            data = json.loads((self.root / MANIFEST).read_text("utf-8"))
        except FileNotFoundError:
            return Manifest()
        return Manifest(int(data["generation"]), [FileEntry.from_json(f) for f in data["files"]],
                        [(str(p), float(t)) for p, t in data["garbage"]])

    def live_files(self) -> list[tuple[Path, FileEntry]]:
        return [(self.root / entry.path, entry) for entry in self.load().files]

    # -- writing (under the lock) ---------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a fresh open file description: also excludes other threads
            yield
        finally:
            os.close(fd)

    def replace_range(self, first: int, last: int, version: int, parts: dict[str, pa.Table]) -> list[str]:
        """Make [first, last] hold exactly `parts` (partition -> rows), superseding any overlapping rows."""
        with self.locked():
            manifest = self.load()
            generation = manifest.generation + 1
            kept: list[FileEntry] = []
            dropped: list[str] = []
            for entry in manifest.files:
                if not any(overlaps(f, lst, first, last) for f, lst, _ in entry.ranges):
                    kept.append(entry)
                    continue
                dropped.append(entry.path)
                rest = [r for r in entry.ranges if not overlaps(r[0], r[1], first, last)]
                if rest:  # a compacted file that also holds other batches: keep their rows
                    kept.append(self._without(entry, rest, generation))
            added = []
            for partition, table in sorted(parts.items()):
                if table.num_rows == 0:
                    continue
                rel = f"{partition}/{first}-{last}.{generation}.parquet"
                write_parquet_atomic(table, self.root / rel)
                added.append(FileEntry(rel, [(first, last, table.num_rows)], version, _columns(table.schema)))
            if not added and not dropped:
                return []
            self._commit(Manifest(generation, kept + added, manifest.garbage), dropped)
            return [entry.path for entry in added]

    def _without(self, entry: FileEntry, rest: list[Range], generation: int) -> FileEntry:
        table = pq.read_table(self.root / entry.path)
        pieces, start = [], 0
        keep = set(rest)
        for rng in entry.ranges:
            if rng in keep:
                pieces.append(table.slice(start, rng[2]))
            start += rng[2]
        merged = pa.concat_tables(pieces)
        rel = f"{entry.partition}/{rest[0][0]}-{rest[-1][1]}.{generation}.parquet"
        write_parquet_atomic(merged, self.root / rel)
        return FileEntry(rel, rest, entry.version, _columns(merged.schema))

    def _commit(self, manifest: Manifest, dropped: list[str]) -> None:
        now = self.clock()
        live = {entry.path for entry in manifest.files}
        garbage = [(p, t) for p, t in manifest.garbage if p not in live]
        garbage += [(p, now) for p in dropped if p not in live]
        remaining = []
        for path, since in garbage:
            if now - since >= self.grace_s:
                with contextlib.suppress(FileNotFoundError):
                    (self.root / path).unlink()
            else:
                remaining.append((path, since))
        manifest.garbage = remaining
        body = {"generation": manifest.generation, "files": [e.to_json() for e in manifest.files],
                "garbage": [list(g) for g in manifest.garbage]}
        target = self.root / MANIFEST
        tmp = self.root / f"{TMP_PREFIX}{uuid.uuid4().hex}-{MANIFEST}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(body, handle, separators=(",", ":"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_dir(self.root)

    # -- compaction -----------------------------------------------------------------------------
    def compact(self, *, min_files: int = 8, small_bytes: int = SMALL_FILE_BYTES) -> int:
        """Merge the small files of each partition that has at least `min_files` of them into as few
        files as their schemas allow; returns how many files were merged away.

        Only files under `small_bytes` take part, so a file that compaction already made big is
        never read again: each compaction's memory and time stay bounded however long the
        partition grows (merging everything each time made both grow with the day's output).

        The merge runs without the lock (a writer is not held up), streaming one input file at a
        time into a tmp file; the commit takes the lock, renames into place only groups whose files
        are all still live (a range superseded meanwhile is never resurrected) and drops the rest.
        Files merge only when every shared column has the same type (or null):
        the view then reads the same values as from the separate files, so results do not change.
        """
        if min_files < 2:
            raise ValueError(f"min_files must be at least 2; got {min_files!r}")
        manifest = self.load()
        by_partition: dict[str, list[FileEntry]] = {}
        for entry in manifest.files:
            if self._size(entry) < small_bytes:
                by_partition.setdefault(entry.partition, []).append(entry)
        plans: list[tuple[list[FileEntry], Path, pa.Schema]] = []  # group, merged tmp file, its schema
        try:
            for entries in by_partition.values():
                if len(entries) < min_files:
                    continue
                for group in _compatible_groups(sorted(entries, key=lambda e: e.ranges[0][0])):
                    if len(group) > 1:
                        tmp, schema = self._merge(group)
                        plans.append((group, tmp, schema))
            if not plans:
                return 0
            return self._commit_merged(plans)
        finally:
            for _, tmp, _ in plans:  # merged files not committed (a group superseded meanwhile)
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()

    def _merge(self, group: list[FileEntry]) -> tuple[Path, pa.Schema]:
        """Write the rows of `group`, in order, into one tmp file of the partition, one input file at
        a time: memory stays at about the largest input file, not the sum of them."""
        paths = [self.root / e.path for e in group]
        schema = _merged_schema([pq.read_schema(path) for path in paths])
        tmp = self.root / group[0].partition / f"{TMP_PREFIX}{uuid.uuid4().hex}.parquet"
        try:
            with open(tmp, "wb") as handle:
                with pq.ParquetWriter(handle, schema, compression="zstd") as writer:
                    for path in paths:
                        writer.write_table(_conform(pq.read_table(path), schema))
                handle.flush()
                os.fsync(handle.fileno())
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        return tmp, schema

    def _commit_merged(self, plans: list[tuple[list[FileEntry], Path, pa.Schema]]) -> int:
        """Under the lock: put each merged file in place of its group, if the group is all still live."""
        merged_away = 0
        with self.locked():
            current = self.load()
            live = {e.path for e in current.files}
            generation = current.generation + 1
            files = list(current.files)
            dropped: list[str] = []
            for index, (group, tmp, schema) in enumerate(plans):
                if not all(e.path in live for e in group):
                    continue  # a writer superseded part of it meanwhile: skip, next compaction retries
                ranges = [r for e in group for r in e.ranges]
                rel = f"{group[0].partition}/{ranges[0][0]}-{ranges[-1][1]}.{generation}c{index}.parquet"
                os.replace(tmp, self.root / rel)
                fsync_dir((self.root / rel).parent)
                paths = {e.path for e in group}
                files = [e for e in files if e.path not in paths]
                files.append(FileEntry(rel, ranges, max(e.version for e in group), _columns(schema)))
                dropped.extend(paths)
                merged_away += len(group) - 1
            if dropped:
                self._commit(Manifest(generation, files, current.garbage), dropped)
        return merged_away

    def _size(self, entry: FileEntry) -> int:
        try:
            return (self.root / entry.path).stat().st_size
        except FileNotFoundError:
            return 0

    def sweep(self) -> int:
        """Delete files nobody references: superseded files past the grace period, and files and
        tmp files left by a crash before their manifest commit (older than the grace period)."""
        removed = 0
        with self.locked():
            manifest = self.load()
            self._commit(manifest, [])
            known = {e.path for e in manifest.files} | {p for p, _ in manifest.garbage}
            now = time.time()  # compared with file mtimes: the wall clock, not the injected one
            for path in self.root.glob("date=*/*"):
                rel = f"{path.parent.name}/{path.name}"
                if rel in known or not path.is_file():
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if now - path.stat().st_mtime >= self.grace_s:
                        path.unlink()
                        removed += 1
        return removed


def _columns(schema: pa.Schema) -> dict[str, Any]:
    return {f.name: type_tree(f.type) for f in schema}


def _merged_schema(schemas: list[pa.Schema]) -> pa.Schema:
    """The columns of all `schemas` in first-seen order; a column that is null-typed in one file
    takes its type (and field metadata) from the first file where it is not (_compatible_groups
    guarantees no other conflict)."""
    fields: dict[str, pa.Field] = {}
    for schema in schemas:
        for f in schema:
            known = fields.get(f.name)
            if known is None or (pa.types.is_null(known.type) and not pa.types.is_null(f.type)):
                fields[f.name] = f
    return pa.schema(list(fields.values()))


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table` with exactly `schema`'s columns: missing ones all null, null-typed ones cast."""
    columns = []
    for f in schema:
        index = table.schema.get_field_index(f.name)
        if index < 0:
            columns.append(pa.nulls(table.num_rows, f.type))
            continue
        column = table.column(index)
        columns.append(column if column.type == f.type else column.cast(f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def _compatible_groups(entries: list[FileEntry]) -> list[list[FileEntry]]:
    """Greedy groups in offset order whose shared columns have identical types (null matches any)."""
    groups: list[tuple[list[FileEntry], dict[str, Any]]] = []
    for entry in entries:
        for members, columns in groups:
            if all(columns.get(name, t) == t or t == "null" or columns.get(name) == "null"
                   for name, t in entry.columns.items()):
                members.append(entry)
                for name, t in entry.columns.items():
                    if columns.get(name, "null") == "null":
                        columns[name] = t
                break
        else:
            groups.append(([entry], dict(entry.columns)))
    return [members for members, _ in groups]
