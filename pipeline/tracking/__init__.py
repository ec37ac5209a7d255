"""Everything that talks to MLflow: runs, parameters, metrics, artifacts, the model registry and
the registered model itself (``AnomalyModel``, an MLflow pyfunc, in ``pyfunc.py``). No module outside
this package imports mlflow.

The tracking store defaults to ``MLFLOW_TRACKING_URI``, else the embedded sqlite store
``mlflow/mlflow.db`` with artifacts in ``mlflow/artifacts`` (relative to the working directory).
For any ``sqlite:///`` store, artifacts go to an ``artifacts`` folder beside the database file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import subprocess
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import pandas as pd
from mlflow.data.pandas_dataset import PandasDataset
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import mlflow
import pipeline
from pipeline import serving
from pipeline.errors import InputError
from pipeline.store.lock import process_start
from pipeline.store.names import BUNDLE_FOLDER, DATA_FOLDER, INPUT_PATHS_ARTIFACT, MODEL_ARTIFACT
from pipeline.tracking.pyfunc import AnomalyModel  # noqa: F401  (versions registered before pyfunc.py load it from here)
from pipeline.tracking.reviews import ReviewTracking

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in cron logs
# Each start_run otherwise probes for Databricks' dbutils (resuming serverless GPU jobs' runs), 0.2-0.4 s.
os.environ.setdefault("MLFLOW_ENABLE_SGC_RUN_RESUMPTION_FOR_DATABRICKS_JOBS", "false")

DEFAULT_TRACKING_URI = "sqlite:///mlflow/mlflow.db"
CHAMPION = "champion"  # the alias score and run use
CHALLENGER = "challenger"  # the alias of a newer version waiting for promotion
DESCRIPTION_TAG = "mlflow.note.content"  # what the MLflow UI shows as a run's description
TAG_LIMIT = 5000  # characters an MLflow tag holds
INPUT_PATHS_TAG = "input_paths"  # JSON list of the files a run read (promote re-reads them)
INPUT_PATHS_ARTIFACT_TAG = "input_paths_artifact"  # ... or the artifact holding it, when too long for a tag
# The registered model is logged from code (nothing pickled): MLflow runs this file to load it.
PYFUNC_CODE = (
    "from mlflow.models import set_model\n\nfrom pipeline.tracking.pyfunc import AnomalyModel\n\nset_model(AnomalyModel())\n"
)


DATASET_SAMPLE_ROWS = 100  # rows of an input table whose schema is inferred and logged as its sample


class _SampledPandasDataset(PandasDataset):
    """A pandas dataset built on a sample of a table, reporting the whole table's row count."""

    def __init__(self, sample: pd.DataFrame, source: Any, name: str, digest: str, n_rows: int) -> None:
        super().__init__(sample, source, name=name, digest=digest)
        self.n_rows = n_rows

    @property
    def profile(self) -> dict[str, int]:
        return {"num_rows": self.n_rows, "num_elements": self.n_rows * len(self._df.columns)}


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


def _owner_tags() -> dict[str, str]:
    """Which process owns a run, so a later run can tell whether it is still alive."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "pid": str(pid), "pid_start": process_start(pid) or ""}


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


@dataclass(frozen=True)
class RegisteredVersion:
    """One version of a registered model: its number, the run that trained it, its aliases."""

    name: str
    version: str
    run_id: str
    aliases: tuple[str, ...]


class Tracker(ReviewTracking):
    """A tracking store and one experiment in it.

    ``experiment_name`` is used unless ``MLFLOW_EXPERIMENT_NAME`` names another (the jobs name
    the experiment after the model). Operators' verdicts: ``ReviewTracking`` (``tracking/reviews.py``).
    """

    def __init__(self, tracking_uri: str | None, experiment_name: str):
        experiment_name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or experiment_name
        self.experiment_name = experiment_name
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
            mlflow.set_tag("error", f"{type(exc).__name__}: {message}"[:TAG_LIMIT])
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
            started = process_start(int(tags["pid"]))
            if started is not None and (started == "unknown" or not tags.get("pid_start") or started == tags["pid_start"]):
                continue  # still alive
            self.client.set_tag(
                run.info.run_id, "error", f"process {tags['pid']} on {host} ended without closing this run (killed)"
            )
            self.client.set_terminated(run.info.run_id, status="KILLED")
            marked.append(run.info.run_id)
        if marked:
            log.warning("marked %d run(s) left RUNNING by killed processes as KILLED: %s", len(marked), ", ".join(marked))
        return marked

    def record_input_paths(self, paths: list[Path]) -> None:
        """Record the files a run read, as a JSON tag, or as an artifact when too long for one."""
        text = json.dumps([str(Path(p).resolve()) for p in paths])
        if len(text) <= TAG_LIMIT:
            mlflow.set_tag(INPUT_PATHS_TAG, text)
        else:
            mlflow.log_text(text, INPUT_PATHS_ARTIFACT)
            mlflow.set_tag(INPUT_PATHS_ARTIFACT_TAG, INPUT_PATHS_ARTIFACT)

    def recorded_input_paths(self, run: Any) -> list[str]:
        """The files ``record_input_paths`` recorded for a run (empty when it recorded none)."""
        tags = run.data.tags
        if INPUT_PATHS_TAG in tags:
            return json.loads(tags[INPUT_PATHS_TAG])
        if INPUT_PATHS_ARTIFACT_TAG in tags:
            return json.loads(mlflow.artifacts.load_text(f"{run.info.artifact_uri}/{tags[INPUT_PATHS_ARTIFACT_TAG]}"))
        return []

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

    def log_artifacts(self, folder: Path, artifact_path: str | None = None) -> None:
        """Every file of ``folder`` in one call (one artifact-store look-up, not one per file)."""
        mlflow.log_artifacts(str(folder), artifact_path)

    def set_description(self, markdown: str) -> None:
        """The run's description, shown at the top of its page in the MLflow UI."""
        mlflow.set_tag(DESCRIPTION_TAG, markdown)

    def log_dataset(self, frame: Any, name: str, digest: str, paths: list[Path], context: str, n_rows: int | None = None) -> None:
        """Log a table as the run's input dataset without visiting every row: the schema of its first
        ``DATASET_SAMPLE_ROWS`` rows (also logged as a sample artifact), ``n_rows`` (default
        ``len(frame)``), the given digest (the files' sha256) and the files (or their folder) as source."""
        paths = [Path(p).resolve() for p in paths]
        where = paths[0] if len(paths) == 1 else Path(os.path.commonpath([str(p) for p in paths]))
        sample = frame.head(DATASET_SAMPLE_ROWS)
        with warnings.catch_warnings():  # "source can be interpreted in multiple ways": it is a local path
            warnings.simplefilter("ignore", UserWarning)
            source = mlflow.data.from_pandas(sample.head(0), source=str(where), name=name, digest=digest[:32]).source
        dataset = _SampledPandasDataset(sample, source, name, digest[:32], len(frame) if n_rows is None else int(n_rows))
        mlflow.log_input(dataset, context=context)
        mlflow.log_text(sample.to_csv(index=False), f"{DATA_FOLDER}/{context}_sample.csv")

    def register_model(
        self,
        bundle_folder: Path,
        model_name: str,
        run_id: str,
        example_input: Any,
        example_output: Any,
        tags: dict[str, str] | None = None,
    ) -> tuple[str, str]:
        """Log the bundle as the pyfunc ``AnomalyModel`` and register it (``tags`` on the model and the version).

        The first version of a name gets the alias ``champion``, later ones ``challenger``
        (promote moves ``champion``). Returns (version, alias).
        """
        from mlflow.models import infer_signature

        package = Path(pipeline.__file__).parent
        with (
            tempfile.TemporaryDirectory(prefix="pyfunc-") as code_dir,
            warnings.catch_warnings(),  # "integer columns cannot hold missing values": anomaly is 0/1, never missing
        ):
            warnings.simplefilter("ignore", UserWarning)
            code_file = Path(code_dir) / "anomaly_model.py"
            code_file.write_text(PYFUNC_CODE)
            signature = infer_signature(
                example_input, example_output, params={"source": serving.DEFAULT_SOURCE, "output": "scores", "estimate": "last"}
            )
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT,
                python_model=str(code_file),
                artifacts={BUNDLE_FOLDER: str(bundle_folder)},
                code_paths=[str(package)],
                signature=signature,
                input_example=example_input,
                pip_requirements=serving.requirements(),
            )
        with contextlib.suppress(MlflowException):  # already registered
            self.client.create_registered_model(model_name, tags=tags)
        created = self.client.create_model_version(
            model_name, source=info.model_uri, run_id=run_id, model_id=info.model_id, tags=tags
        )
        version = str(created.version)
        alias = CHALLENGER if self._alias_version(model_name, CHAMPION) else CHAMPION
        self.client.set_registered_model_alias(model_name, alias, version)
        return version, alias

    def _alias_version(self, model_name: str, alias: str) -> str | None:
        try:
            return str(self.client.get_model_version_by_alias(model_name, alias).version)
        except MlflowException as exc:
            if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def model_version(self, model_name: str, version: str | None = None, alias: str = CHAMPION) -> RegisteredVersion:
        """A registered version by number, else the one holding ``alias``.

        One registry look-up when the version (or alias) exists; the model's existence is looked
        up only to name what is missing.

        Raises:
            InputError: no such model, version or alias.
        """
        try:
            if version is None:
                found = self.client.get_model_version_by_alias(model_name, alias)
            else:
                found = self.client.get_model_version(model_name, str(version))
        except MlflowException as exc:
            if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                raise
            if self.latest_version(model_name) is None:
                hint = "run 'anomaly-pipeline train' first"
                raise InputError(f"no registered model named '{model_name}' in {self.uri}: {hint}") from None
            if version is not None:
                raise InputError(f"model '{model_name}' has no version '{version}'") from None
            hint = (
                f"promote one with 'anomaly-pipeline promote --model-name {model_name} --version N'"
                if alias == CHAMPION
                else "train a new version first, or name one with --version"
            )
            raise InputError(f"model '{model_name}' has no version with alias '{alias}': {hint}") from None
        return RegisteredVersion(model_name, str(found.version), found.run_id, tuple(found.aliases or ()))

    def aliases(self, model_name: str) -> dict[str, str]:
        """Alias -> version of a registered model."""
        return {alias: str(v) for alias, v in (self.client.get_registered_model(model_name).aliases or {}).items()}

    def set_alias(self, model_name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(model_name, alias, version)

    def delete_alias(self, model_name: str, alias: str) -> None:
        self.client.delete_registered_model_alias(model_name, alias)

    def latest_run(self, stage: str, model_name: str) -> Any | None:
        """The newest finished run of ``stage`` for ``model_name`` in this experiment, or None."""
        quote = '"' if "'" in model_name else "'"
        runs = self.client.search_runs(
            [self.experiment_id],
            filter_string=(
                f"tags.stage = '{stage}' and tags.model_name = {quote}{model_name}{quote} and attributes.status = 'FINISHED'"
            ),
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        return runs[0] if runs else None

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
    def downloaded_bundle(self, model_name: str, version: str) -> Iterator[Path]:
        """A registered version's bundle folder (the pyfunc's ``bundle`` artifact), copied to a
        temporary folder that is removed afterwards."""
        root = self.client.get_model_version_download_uri(model_name, version).rstrip("/")
        with tempfile.TemporaryDirectory(prefix="bundle-") as target:
            yield Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{root}/artifacts/{BUNDLE_FOLDER}", dst_path=target))
