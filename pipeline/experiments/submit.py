"""Send a submission to Kaggle after checking it against Kaggle's rules; wait (bounded) for
the public score and record it on the tracked runs whose checkpoints made the file."""

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import file_sha256
from pipeline.data import kaggle_api
from pipeline.experiments.recorder import first_line
from pipeline.inference.submission import read_submission

UPLOAD_FAILED = "Could not submit to competition"
MAX_WAIT_SECONDS = 600  # the longest --wait: Kaggle scores digit-recognizer in seconds


@dataclass(frozen=True)
class Submitted:
    reply: str
    status: str  # complete, pending (not scored within the wait), error: ..., unknown: ...
    public_score: str | None
    runs: list[str]  # tracked runs credited with the file
    warning: str | None  # the store could not be updated (the upload still happened)


def await_score(api, competition, ref, message, wait, interval, sleep) -> tuple[str, str | None]:
    """(status, public score) of our submission, polling for at most `wait` seconds."""
    deadline = time.monotonic() + min(max(wait, 0), MAX_WAIT_SECONDS)
    while True:
        try:
            subs = list(api.competition_submissions(competition))
        except (Exception, SystemExit) as exc:
            return f"unknown: listing submissions failed ({type(exc).__name__})", None
        ours = [s for s in subs if ref is not None and str(getattr(s, "ref", "")) == str(ref)]
        ours = ours or [s for s in subs if getattr(s, "description", None) == message]
        if ours:  # SubmissionStatus.COMPLETE, its name, or a plain string: `complete`
            status = str(getattr(ours[0].status, "name", ours[0].status))
            status = status.rpartition(".")[2].lower()
            if status == "complete":
                return status, str(getattr(ours[0], "public_score", "") or "") or None
            if status == "error":
                error = " ".join(str(getattr(ours[0], "error_description", "") or "").split())
                return f"error: {error or 'Kaggle gave no reason'}", None
        if time.monotonic() + interval > deadline:
            return "pending", None
        sleep(interval)


def submission_checkpoints(file: Path) -> list[str]:
    """sha256 of each checkpoint that wrote `file`, from its source record if it is current."""
    try:
        record = json.loads(config.submission_source_path(file).read_text())
        if record["submission_sha256"] != file_sha256(file):
            return []  # the file was replaced or edited since predict wrote it
        return [str(c["sha256"]) for c in record["checkpoints"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []


def credit_runs(shas: list[str], tags: dict[str, str], score: str | None) -> list[str]:
    """Tag the logged runs that kept these checkpoints; log the public score as a metric."""
    from pipeline.experiments.runs import all_runs, run_key

    client, runs = all_runs()
    from mlflow.entities import Metric, RunTag  # after the store's check

    try:
        metrics = [Metric("public_score", float(score), 0, 0)] if score is not None else []
    except ValueError:
        metrics = []
    found = [run for run in runs if run.info.status != "PENDING"]  # MLflow's runs only
    found = [run for run in found if run.data.tags.get("checkpoint_sha256") in shas]
    for run in found:
        client.log_batch(run.info.run_id, metrics, tags=[RunTag(*t) for t in tags.items()])
    return [run_key(run) for run in found]


def submit(
    file: Path = config.DEFAULT_SUBMISSION,
    message: str = "pipeline submission",
    competition: str = config.COMPETITION,
    connect: Callable[[], Any] | None = None,
    wait: float = 60.0,
    interval: float = 5.0,
    track: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> Submitted:
    """Upload `file`, checked before any network call; wait for its score; credit the runs."""
    read_submission(file, n_rows=config.KAGGLE_TEST_ROWS)
    try:
        api = (connect or kaggle_api.connect)()
        response = api.competition_submit(str(file), message, competition, quiet=True)
    except PipelineError:
        raise
    except (Exception, SystemExit) as exc:
        raise kaggle_api.explain(exc, competition, action="submit", path=file) from None
    reply = str(getattr(response, "message", "") or "")
    if reply == UPLOAD_FAILED:
        raise PipelineError(f"{file}: the upload to Kaggle failed; check the network and retry")
    ref = getattr(response, "ref", None)
    status, score = "pending", None
    if wait > 0:
        status, score = await_score(api, competition, ref, message, wait, interval, sleep)
    shas = submission_checkpoints(file) if track else []
    runs, warning = [], None
    if shas:
        tags = {
            "kaggle_submission": str(file.resolve()),
            "kaggle_submission_ref": str(ref),
            "kaggle_message": message,
            "kaggle_status": status,
            "kaggle_public_score": score or "",
        }
        try:
            runs = credit_runs(shas, tags, score)
        except Exception as exc:
            why = exc if isinstance(exc, PipelineError) else first_line(exc)
            warning = f"the tracked runs were not updated: {why}"
    return Submitted(reply or "submitted", status, score, runs, warning)
