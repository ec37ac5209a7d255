"""Everything that talks to MLflow: runs, parameters, metrics, artifacts and the model registry.

The tracking store defaults to ``MLFLOW_TRACKING_URI``, else the embedded sqlite store
``mlflow/mlflow.db`` with artifacts in ``mlflow/artifacts`` (relative to the working directory).
For any ``sqlite:///`` store, artifacts go to an ``artifacts`` folder beside the database file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlflow
import pipeline

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in cron logs

DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
BUNDLE_ARTIFACT_PATH = "model"


def resolve_tracking_uri(uri: str | None) -> str:
    """The flag, else ``MLFLOW_TRACKING_URI``, else the embedded store."""
    resolved = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    # MLflow exports the URI it was given (with the busy timeout added below) to the environment.
    return resolved.removesuffix(f"?timeout={SQLITE_TIMEOUT_SECONDS}")


def _sqlite_path(uri: str) -> Path | None:
    prefix = "sqlite:///"
    return Path(uri[len(prefix) :].partition("?")[0]) if uri.startswith(prefix) else None


# Seconds a connection waits for another process's write to the sqlite store to finish before
# failing with 'database is locked' (Python's sqlite3 default is 5 s; MLflow's own PRAGMA
# busy_timeout covers its sessions but not every connection, e.g. schema checks at start-up).
SQLITE_TIMEOUT_SECONDS = 60


def _with_busy_timeout(uri: str) -> str:
    """An sqlite URI with a ``timeout`` query (passed to ``sqlite3.connect``) unless it has one."""
    if not uri.startswith("sqlite:") or "timeout=" in uri:
        return uri
    return f"{uri}{'&' if '?' in uri else '?'}timeout={SQLITE_TIMEOUT_SECONDS}"


def _process_start(pid: int) -> str | None:
    """Start time of a live process (clock ticks since boot, from /proc), None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)  # no /proc (not Linux): is the pid alive at all?
        except ProcessLookupError:
            return None
        except PermissionError:
            return "unknown"
        return "unknown"
    return stat.rpartition(")")[2].split()[19]  # field 22 of /proc/PID/stat


def _owner_tags() -> dict[str, str]:
    """Which process owns a run, so a later run can tell whether it is still alive."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "pid_start": _process_start(pid) or ""}


def git_commit() -> str | None:
    """The commit of the checkout the package runs from, if it is one."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(pipeline.__file__).parent, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def inputs_digest(digests: dict[str, str]) -> str:
    """One sha256 over the (source name, file digest) pairs."""
    sha = hashlib.sha256()
    for name in sorted(digests):
        sha.update(f"{name}\0{digests[name]}\n".encode())
    return sha.hexdigest()


class Tracker:
    """A tracking store and the experiment of one model name."""

    def __init__(self, tracking_uri: str | None, experiment_name: str):
        self.uri = resolve_tracking_uri(tracking_uri)
        db_path = _sqlite_path(self.uri)
        connect_uri = _with_busy_timeout(self.uri)
        artifact_location = None
        if db_path is not None:
            db_path.parent.mkdir(parents=True, exist_ok=True)
            artifact_location = (db_path.parent / "artifacts").resolve().as_uri()
        logging.getLogger("alembic").setLevel(logging.WARNING)  # schema migrations on first use
        mlflow.set_tracking_uri(connect_uri)
        self.client = MlflowClient(connect_uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        if experiment is None:
            experiment_id = self.client.create_experiment(experiment_name, artifact_location=artifact_location)
        else:
            experiment_id = experiment.experiment_id
        self.experiment_id = experiment_id

    @contextlib.contextmanager
    def run(self, stage: str, run_name: str, tags: dict[str, str] | None = None, nested: bool = False) -> Iterator[str]:
        """A run that ends FINISHED, or FAILED with the error message in tag ``error``; yields its id."""
        all_tags = {"stage": stage, "project_version": pipeline.__version__, **_owner_tags(), **(tags or {})}
        commit = git_commit()
        if commit:
            all_tags["git_commit"] = commit
        active = mlflow.start_run(experiment_id=self.experiment_id, run_name=run_name, nested=nested, tags=all_tags)
        try:
            yield active.info.run_id
        except BaseException as exc:
            message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            mlflow.set_tag("error", f"{type(exc).__name__}: {message}"[:5000])
            mlflow.end_run(status="FAILED")
            raise
        mlflow.end_run(status="FINISHED")

    def end_stale_runs(self) -> list[str]:
        """Mark runs of this experiment that earlier processes left RUNNING as KILLED.

        A run killed with its process (kill -9, OOM, power cut) cannot end itself. A RUNNING
        run is stale when it was started on this host by a process that is gone (its pid is not
        alive, or now belongs to a process started at another time). Runs from other hosts,
        or without owner tags, are left alone: there is no telling whether they are alive.

        Returns:
            The ids of the runs marked.
        """
        host = socket.gethostname()
        marked = []
        for run in self.client.search_runs([self.experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=1000):
            tags = run.data.tags
            if tags.get("host") != host or not tags.get("pid", "").isdigit():
                continue
            started = _process_start(int(tags["pid"]))
            if started is not None and (started == "unknown" or not tags.get("pid_start") or started == tags["pid_start"]):
                continue  # still alive
            self.client.set_tag(run.info.run_id, "error", f"process {tags['pid']} on {host} ended without closing this run (killed)")
            self.client.set_terminated(run.info.run_id, status="KILLED")
            marked.append(run.info.run_id)
        if marked:
            log.warning("marked %d run(s) left RUNNING by killed processes as KILLED: %s", len(marked), ", ".join(marked))
        return marked

    def log_params(self, params: dict[str, Any]) -> None:
        mlflow.log_params({key: ("" if value is None else str(value)[:6000]) for key, value in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        mlflow.log_metrics({key: float(value) for key, value in metrics.items()}, step=step)

    def log_history(self, history: dict[str, list[float]]) -> None:
        """Per-epoch series, step = epoch number (1-based)."""
        for key, series in history.items():
            for epoch, value in enumerate(series, start=1):
                mlflow.log_metric(key, float(value), step=epoch)

    def set_tags(self, tags: dict[str, str]) -> None:
        mlflow.set_tags(tags)

    def log_dict(self, data: dict, file_name: str) -> None:
        mlflow.log_dict(data, file_name)

    def log_text(self, text: str, file_name: str) -> None:
        mlflow.log_text(text, file_name)

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        mlflow.log_artifact(str(path), artifact_path)

    def register_bundle(self, bundle_folder: Path, model_name: str, run_id: str) -> str:
        """Log a bundle folder as the run's ``model`` artifacts and register it; returns the version."""
        mlflow.log_artifacts(str(bundle_folder), BUNDLE_ARTIFACT_PATH)
        with contextlib.suppress(MlflowException):  # already registered
            self.client.create_registered_model(model_name)
        source = f"runs:/{run_id}/{BUNDLE_ARTIFACT_PATH}"
        version = self.client.create_model_version(model_name, source=source, run_id=run_id)
        return str(version.version)

    def latest_version(self, model_name: str) -> tuple[str, str] | None:
        """(version, run id) of the newest registered version of ``model_name``, or None."""
        try:
            self.client.get_registered_model(model_name)
        except MlflowException as exc:
            if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
                return None
            raise  # a store error is not "no model": never retrain or fail as if there were none
        quote = '"' if "'" in model_name else "'"
        versions = self.client.search_model_versions(f"name = {quote}{model_name}{quote}")
        if not versions:
            return None
        newest = max(versions, key=lambda v: int(v.version))
        return str(newest.version), newest.run_id

    @contextlib.contextmanager
    def downloaded_bundle(self, run_id: str) -> Iterator[Path]:
        """A run's bundle folder, copied to a temporary folder that is removed afterwards."""
        with tempfile.TemporaryDirectory(prefix="bundle-") as target:
            yield Path(mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=BUNDLE_ARTIFACT_PATH, dst_path=target))
