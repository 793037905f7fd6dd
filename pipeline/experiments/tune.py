"""`pipeline tune`: the fast recipe's options searched with Optuna (TPE, median pruning).

A study is resumed by name, refused for another search space or data, and shared by workers:
`trials` is its budget, trial n samples with seed + n, Optuna's heartbeat fails a dead worker's.
"""

import json
import os
import shlex
import socket
import subprocess
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import file_sha256
from pipeline.data import datasets
from pipeline.experiments.recorder import first_line
from pipeline.experiments.tracking import NO_RUN, data_tags, train_params
from pipeline.training.callbacks import Callback
from pipeline.training.recipes import recipe_config

HEARTBEAT_S = 10  # a running trial's heartbeat; one silent for GRACE_S is a dead one's
GRACE_S = 60
WORKER_ENV = "PIPELINE_TUNE_WORKER"  # set in the workers `--workers` starts beside itself


@dataclass(frozen=True)
class SearchSpace:
    """The ranges TPE samples from; a study remembers its own and refuses another."""

    model: str = "fastnet"
    lr: tuple[float, float] = (1e-3, 2e-2)  # log-uniform
    weight_decay: tuple[float, float] = (1e-6, 1e-2)  # log-uniform
    epochs: tuple[int, int] = (1, 4)
    widths: tuple[int, ...] = (8, 12, 16, 24)
    batch_sizes: tuple[int, ...] = (64, 128, 256)
    augment_strength: tuple[float, float] = (0.25, 1.5)  # when augmentation is on


@dataclass(frozen=True)
class TuneResult:
    study: str
    best_trial: int
    best_value: float
    command: str  # the `pipeline train` command that reproduces the best trial
    states: dict[str, int]  # trials by state: COMPLETE, PRUNED, ...
    timed_out_after: int | None  # trials run before --timeout stopped the search
    running: int  # trials other workers were still running when this one ended


def suggest(trial, space: SearchSpace) -> dict[str, Any]:
    """One trial's train options, named as `pipeline train` names them."""
    options = {
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "epochs": trial.suggest_int("epochs", *space.epochs),
        "width": trial.suggest_categorical("width", list(space.widths)),
        "batch_size": trial.suggest_categorical("batch_size", list(space.batch_sizes)),
        "augment": trial.suggest_categorical("augment", [False, True]),
    }
    if options["augment"]:
        strength = trial.suggest_float("augment_strength", *space.augment_strength)
        options["augment_strength"] = strength
    return options


def train_command(options: dict[str, Any], model: str, seed: int, extra: dict[str, Any]) -> str:
    """`pipeline train ...` with exactly these options (floats as repr: the same bits)."""
    words = ["pipeline", "train", "--model", model]
    for name in ("epochs", "batch_size", "lr", "weight_decay", "width"):
        words += [f"--{name.replace('_', '-')}", repr(options[name])]
    strength = ["--augment-strength", repr(options.get("augment_strength"))]
    words += ["--augment", *strength] if options["augment"] else ["--no-augment"]
    for name, value in {"seed": seed, **extra}.items():
        words += [f"--{name.replace('_', '-')}", str(value)]
    return shlex.join(words)


def shown(url: str) -> str:
    """A storage URL fit to print and record: its password hidden."""
    password = urlsplit(url).password
    return url if password is None else url.replace(f":{password}@", ":***@", 1)


def open_storage(url: str):
    """A database with a heartbeat, or `journal:///<file>` (a shared disk without one)."""
    from optuna import storages

    scheme = urlsplit(url).scheme.split("+")[0]
    if scheme not in ("sqlite", "postgresql", "mysql", "journal"):
        raise PipelineError(
            f"--storage {shown(url)}: expected sqlite:///<file>, a database URL such as "
            "postgresql+psycopg2://<user>@<host>/<db>, or journal:///<file>"
        )
    try:
        if scheme == "journal":
            backend = storages.journal.JournalFileBackend(url.removeprefix("journal://"))
            return storages.JournalStorage(backend)
        return storages.RDBStorage(url, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S)
    except Exception as exc:  # a missing driver's name is in the cause Optuna wraps
        why = first_line(exc.__cause__ or exc)
        raise PipelineError(f"--storage {shown(url)}: {why}") from None


def open_study(name: str, storage, space: SearchSpace, fingerprint: str):
    """The study `name` (created if new), refused if it searched another space or data."""
    import optuna

    try:
        study = optuna.create_study(study_name=name, storage=storage, load_if_exists=True,
                                    direction="maximize")  # fmt: skip
    except Exception as exc:
        raise PipelineError(f"--study {name}: {first_line(exc)}") from None
    for key, value, other in (
        ("search_space", json.dumps(asdict(space), sort_keys=True), "another search space"),
        ("data_fingerprint", fingerprint, "other prepared data"),
    ):
        if (saved := study.user_attrs.get(key, value)) != value:
            raise PipelineError(
                f"--study {name}: made for {other} ({saved}); resume it with the same options "
                "and data or pick another --study name"
            )
        study.set_user_attr(key, value)
    study.pruner = optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=2)
    optuna.storages.fail_stale_trials(study)  # a dead worker's trial no longer counts
    return study


def over_budget(study, number: int, budget: int) -> bool:
    """Whether trial `number` is past the budget: the study's first `budget` trials by number."""
    from optuna.trial import TrialState

    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING)
    ahead = study.get_trials(deepcopy=False, states=counted)
    return sum(trial.number < number for trial in ahead) >= budget


class OverBudget(Exception):
    """Ends a trial past the budget before it samples or trains anything."""


def tune(
    study_name: str = "tune",
    trials: int | None = 10,
    timeout: float | None = None,
    space: SearchSpace = SearchSpace(),
    processed_dir: Path = config.PROCESSED_DIR,
    work_dir: Path = config.TUNE_DIR,
    storage: str | None = None,
    seed: int = 0,
    device: str = "auto",
    parent=NO_RUN,
    enqueue: tuple[dict[str, Any], ...] = (),
    log: Callable[[str], None] = lambda message: None,
    helpers: tuple[list[str], ...] = (),
) -> TuneResult:
    """Add trials to the study until it holds `trials` and/or for `timeout` seconds, beside
    the workers `helpers` (commands) start; trial n trains `<work_dir>/<study>/trial-<n>.pt`."""
    import optuna
    from optuna.trial import TrialState

    from pipeline.training.run_state import TrainingInterrupted
    from pipeline.training.train import train

    if trials is None and timeout is None:
        raise PipelineError("give --trials N, --timeout S or both")
    if storage is None:
        config.TUNE_DB.parent.mkdir(parents=True, exist_ok=True)
        storage = f"sqlite:///{config.TUNE_DB}"
    fingerprint = datasets.processed_fingerprint(processed_dir)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failure is the command's one line
    with warnings.catch_warnings(action="ignore", category=optuna.exceptions.ExperimentalWarning):
        study = open_study(study_name, open_storage(storage), space, fingerprint)  # heartbeat
    for params in enqueue:
        study.enqueue_trial(params)
    parent.set_tags({"study": study_name, "study_storage": shown(storage)})
    ran: list[int] = []

    def objective(trial) -> float:
        if trials is not None and over_budget(study, trial.number, trials):
            trial.set_user_attr("over_budget", True)
            study.stop()
            raise OverBudget
        ran.append(trial.number)
        study.sampler = optuna.samplers.TPESampler(n_startup_trials=4, seed=seed + trial.number)
        options = suggest(trial, space)
        cfg = recipe_config("fast", model=space.model, seed=seed, device=device, **options)
        out = work_dir / study_name / f"trial-{trial.number}.pt"
        tags = {"study": study_name, "trial": trial.number, **data_tags(processed_dir)}
        run = parent.child(out.stem, "tune", train_params(cfg) | {"width": options["width"]}, tags)
        trial.set_user_attr("seed", seed)  # what reproduces it, whatever a resume is given
        trial.set_user_attr("device", device)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        pruning = Callback()  # reports each epoch's val accuracy; stops a trial that falls behind

        def prune(record: dict[str, float]) -> None:
            trial.report(record["val_accuracy"], int(record["epoch"]))
            if trial.should_prune():
                run.set_tags({"pruned_at_epoch": int(record["epoch"])})
                raise optuna.TrialPruned()

        pruning.epoch_end = prune
        result = train(
            cfg, processed_dir, out, log=lambda line: log(f"trial {trial.number}: {line}"),
            progress=False, force=True, callbacks=[run, pruning],
        )  # fmt: skip
        if kept := run.kept():
            trial.set_user_attr("kept", kept)
        log(f"trial {trial.number}: val_acc {result.best_accuracy:.2%} {_brief(options)}")
        return result.best_accuracy

    def said_pruned(study, trial) -> None:
        if trial.state == TrialState.PRUNED:
            log(f"trial {trial.number}: pruned at epoch {trial.last_step} {_brief(trial.params)}")

    # the trials a budget counts: complete, pruned or running (a failed one is run again)
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    callbacks = [said_pruned]
    if trials is not None:  # checked before each new trial, against every worker's
        callbacks.append(optuna.study.MaxTrialsCallback(trials, states=counted))
    env = os.environ | {WORKER_ENV: "1"}
    workers = [subprocess.Popen(command, env=env) for command in helpers]
    try:
        if trials is None or len(study.get_trials(states=counted)) < trials:
            study.optimize(objective, timeout=timeout, callbacks=callbacks, catch=(OverBudget,))
        failed = [code for worker in workers if (code := worker.wait())]
    except TrainingInterrupted as stopped:  # its resume state is no use: trials start afresh
        error = PipelineError(
            f"interrupted: trial {ran[-1] if ran else '-'} stopped; the study keeps the trials "
            "that finished, and the same command goes on with new ones"
        )
        error.exit_code = stopped.exit_code
        raise error from None
    finally:  # a worker left behind by an error here is stopped as this one is
        for worker in workers:
            worker.terminate()  # nothing when it has ended
            worker.wait()
    if failed:
        raise PipelineError(
            f"--workers: {len(failed)} of the {len(workers)} other workers failed (exit "
            f"{', '.join(map(str, failed))}); their error lines are above"
        )
    states = Counter(t.state.name for t in study.trials if not t.user_attrs.get("over_budget"))
    if not states["COMPLETE"]:
        raise PipelineError(f"--study {study_name}: no trial finished yet; give more time")
    best = study.best_trial
    device = best.user_attrs.get("device", "auto")
    extra: dict[str, Any] = {"device": device} if device != "auto" else {}
    if processed_dir != config.PROCESSED_DIR:
        extra["processed_dir"] = processed_dir
    command = train_command(best.params, space.model, best.user_attrs.get("seed", 0), extra)
    parent.log_metrics({"best_val_acc": best.value})
    parent.set_tags({"best_trial": best.number, "reproduce": command})
    if (kept := Path(best.user_attrs.get("kept", ""))).is_file():  # `--run <study run>`: its best
        parent.set_tags({"checkpoint": kept, "checkpoint_sha256": file_sha256(kept)})
    tally = sum(states[state.name] for state in counted)
    timed_out = timeout is not None and (trials is None or tally < trials)
    return TuneResult(study_name, best.number, best.value, command, dict(states),
                      len(ran) if timed_out else None, states["RUNNING"])  # fmt: skip


def _brief(options: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in options.items()
    )
