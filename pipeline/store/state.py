"""Bookkeeping of the scheduled ``run``: which content was processed, what was quarantined, what
the stream carries to the next batch, and which run folders are committed.

Everything lives in the ``--state`` folder:

- ``state.json``: the single source of truth, replaced atomically (temporary file in the same
  folder, flushed, fsynced, renamed) only after the run's outputs are in place;
- ``quarantine.csv``: the quarantined files and why (a readable copy of what ``state.json`` holds);
- ``run.lock``: the lock (``flock``; the OS releases it when the process dies).

Crash safety: a run writes its folder under ``--out`` as ``.partial-<run id>`` and renames it to
``<UTC time>_<run id>`` when complete, then commits ``state.json`` (which lists the committed run
folders), then merges the run's events into ``--out/anomalies.csv``. The next run removes what a
killed run left behind: temporary files, partial folders, and run folders that ``state.json``
does not list (their rows were not committed and are processed again), and finishes a merge
into ``--out/anomalies.csv`` that was cut short.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from pipeline.errors import InputError
from pipeline.store.atomic import fsync_dir, remove_temporary_files, write_bytes
from pipeline.store.names import PARTIAL_PREFIX, QUARANTINE_FILE, RUN_FOLDER, STATE_FILE
from pipeline.utc import iso_ns

log = logging.getLogger(__name__)

STATE_FORMAT = 1


# ---------------------------------------------------------------- state


@dataclass
class FileRecord:
    """A file whose content (its first ``bytes`` bytes, ``rows`` data rows) was processed."""

    digest: str  # sha256 of the processed bytes
    bytes: int
    rows: int
    run: str
    processed_at: str


@dataclass
class Quarantined:
    """A file set aside as a whole; retried only when its content (``digest``) changes."""

    digest: str
    reason: str
    at: str
    run: str


@dataclass
class RunState:
    files: dict[str, FileRecord] = field(default_factory=dict)
    quarantined: dict[str, Quarantined] = field(default_factory=dict)
    carry: dict[str, Any] | None = None  # ``stream.Carry.to_dict()``
    carries: dict[str, dict[str, Any]] = field(default_factory=dict)  # fleets: asset -> its carry
    runs: list[str] = field(default_factory=list)  # committed run folders, oldest first
    unmerged: list[str] = field(default_factory=list)  # committed runs not yet in --out/anomalies.csv
    # Drift: per stream ("" for one stream, else the asset), sensor -> batches in a row past the
    # drift limits (``pipeline.detector.drift.advance_streaks``), committed with the batch.
    drift: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": STATE_FORMAT,
            "files": {name: rec.__dict__ for name, rec in self.files.items()},
            "quarantined": {name: rec.__dict__ for name, rec in self.quarantined.items()},
            "carry": self.carry,
            "carries": self.carries,
            "runs": self.runs,
            "unmerged": self.unmerged,
            "drift": self.drift,
        }


def load_state(state_dir: Path, clean: bool = True) -> RunState:
    """Read ``state.json`` (an empty state when there is none); ``clean`` also clears leftover
    temporary files (only under the lock).

    Raises:
        InputError: ``state.json`` is not a state this version wrote (corrupt or hand-edited);
            nothing is changed.
    """
    path = state_dir / STATE_FILE
    state = _parse_state(path) if path.exists() else RunState()
    removed = remove_temporary_files(state_dir) if clean else 0
    if removed:
        log.warning("removed %d temporary file(s) an interrupted run left in %s", removed, state_dir)
    return state


def _parse_state(path: Path) -> RunState:
    hint = "restore it, or move --state and --out aside together to start the stream afresh"
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not readable as JSON ({exc}); {hint}") from None
    if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise InputError(f"{path}: state format {found!r}, this version reads {STATE_FORMAT}; {hint}")
    try:
        state = RunState(
            files={str(name): FileRecord(**rec) for name, rec in data["files"].items()},
            quarantined={str(name): Quarantined(**rec) for name, rec in data["quarantined"].items()},
            carry=data["carry"],
            carries={str(asset): carry for asset, carry in data.get("carries", {}).items()},
            runs=[str(run) for run in data["runs"]],
            unmerged=[str(run) for run in data.get("unmerged", [])],
            drift={str(k): {str(s): int(n) for s, n in v.items()} for k, v in data.get("drift", {}).items()},
        )
    except (KeyError, TypeError, AttributeError) as exc:
        raise InputError(f"{path}: not a valid state ({type(exc).__name__}: {exc}); {hint}") from None
    if state.carry is not None and not isinstance(state.carry, dict):
        raise InputError(f"{path}: not a valid state ('carry' is {type(state.carry).__name__}); {hint}")
    if not all(isinstance(carry, dict) for carry in state.carries.values()):
        raise InputError(f"{path}: not a valid state (an asset's carry is not a mapping); {hint}")
    return state


def save_state(state: RunState, state_dir: Path) -> None:
    """Commit the state atomically, then refresh the readable quarantine list."""
    write_bytes(json.dumps(state.to_dict(), indent=1).encode(), state_dir / STATE_FILE, before_rename="mid_state")
    lines = ["file,digest,quarantined_at,run,reason"]
    for name, rec in sorted(state.quarantined.items()):
        lines.append(",".join(_csv_field(v) for v in (name, rec.digest, rec.at, rec.run, rec.reason)))
    write_bytes(("\n".join(lines) + "\n").encode(), state_dir / QUARANTINE_FILE)


def _csv_field(value: str) -> str:
    return '"' + value.replace('"', '""') + '"' if any(c in value for c in ',"\n') else value


def now_iso() -> str:
    """This second, as the reports write UTC times."""
    return iso_ns(time.time_ns() // 1_000_000_000 * 1_000_000_000)


# ---------------------------------------------------------------- what to process


class Kind(StrEnum):
    """What a run does with a file of the input folder."""

    NEW = "new"  # processed whole
    APPENDED = "appended"  # grew by rows after the processed ones: only those are processed
    PROCESSED = "processed"  # this content was processed, under this or another name: skipped
    QUARANTINED = "quarantined"  # this content was quarantined before: not retried
    CHANGED = "changed"  # processed, then changed other than by appending: quarantined

    @property
    def to_process(self) -> bool:
        return self in (Kind.NEW, Kind.APPENDED)


@dataclass
class Candidate:
    """A file of the input folder and what this run does with it (``Kind``); an appended
    file's new rows start at ``skip_rows``."""

    name: str
    path: Path
    kind: Kind
    digest: str
    size: int
    skip_rows: int = 0
    note: str = ""


APPENDABLE_SUFFIXES = {".csv", ".txt", ".tsv"}


def classify(files: list[tuple[str, Path]], state: RunState) -> list[Candidate]:
    """Sort the input files into what is new, grown, already seen or changed, by content."""
    processed_digests = {rec.digest: name for name, rec in state.files.items()}
    out = []
    for name, path in files:
        record = state.files.get(name)
        prefix_len = record.bytes if record is not None else None
        digest, size, prefix_digest, byte_before = _digests(path, prefix_len)
        if digest in processed_digests:
            same = processed_digests[digest]
            out.append(
                Candidate(
                    name,
                    path,
                    Kind.PROCESSED,
                    digest,
                    size,
                    note="" if same == name else f"same content as {same}",
                )
            )
            continue
        quarantined = state.quarantined.get(name)
        if quarantined is not None and quarantined.digest == digest:
            out.append(Candidate(name, path, Kind.QUARANTINED, digest, size, note=quarantined.reason))
            continue
        if record is None:
            out.append(Candidate(name, path, Kind.NEW, digest, size))
        elif (
            path.suffix.lower() in APPENDABLE_SUFFIXES
            and size > record.bytes
            and prefix_digest == record.digest
            and byte_before == b"\n"
        ):
            out.append(
                Candidate(
                    name,
                    path,
                    Kind.APPENDED,
                    digest,
                    size,
                    skip_rows=record.rows,
                    note=f"{size - record.bytes} new bytes",
                )
            )
        else:
            out.append(
                Candidate(
                    name,
                    path,
                    Kind.CHANGED,
                    digest,
                    size,
                    note=(
                        f"content changed after {record.rows} rows were processed in run {record.run}, and not by "
                        "appending rows; its rows were already reported, so it is not processed again "
                        "(give new data a new file name)"
                    ),
                )
            )
    return out


def _digests(path: Path, prefix_len: int | None) -> tuple[str, int, str | None, bytes | None]:
    """sha256 of the file, its size, and sha256 of its first ``prefix_len`` bytes and the last
    byte of that prefix (to tell an append from an edit) in the same pass."""
    sha = hashlib.sha256()
    prefix_digest = None
    byte_before = None
    done = 0
    with path.open("rb") as handle:
        while True:
            chunk = handle.read(1 << 20)
            if prefix_len is not None and prefix_digest is None and done + len(chunk) >= prefix_len:
                cut = prefix_len - done
                sha.update(chunk[:cut])
                prefix_digest = sha.hexdigest()
                byte_before = chunk[cut - 1 : cut] if cut > 0 else None
                sha.update(chunk[cut:])
            else:
                sha.update(chunk)
            done += len(chunk)
            if not chunk:
                break
    return sha.hexdigest(), done, prefix_digest, byte_before


# ---------------------------------------------------------------- run folders


def recover_outputs(out_dir: Path, committed: list[str]) -> list[str]:
    """Remove what killed runs left under ``out_dir``: temporary files, partial run folders and
    run folders the state never committed. Returns the names removed."""
    removed = []
    if not out_dir.is_dir():
        return removed
    remove_temporary_files(out_dir)
    known = set(committed)
    for child in out_dir.iterdir():
        if child.is_dir() and (
            child.name.startswith(PARTIAL_PREFIX) or (RUN_FOLDER.match(child.name) and child.name not in known)
        ):
            shutil.rmtree(child)
            removed.append(child.name)
    if removed:
        log.warning(
            "removed output folders of interrupted runs (their rows are processed again): %s",
            ", ".join(sorted(removed)),
        )
    return removed


def publish_folder(partial: Path, final: Path) -> None:
    """Rename a complete partial folder into place (atomic on one file system) and make it durable."""
    for child in partial.iterdir():
        if child.is_file():
            with child.open("rb") as handle:
                os.fsync(handle.fileno())
    fsync_dir(partial)
    os.replace(partial, final)
    fsync_dir(final.parent)
