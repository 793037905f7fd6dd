"""End to end, as processes: our `prepare`, `train` and `predict` against two tutorial scripts.

`pipeline prepare`, `train --model cnn --epochs 1 --batch-size 50` and `predict` run as three
processes, wall clock including start-up, against the tutorial's single script
(`pipeline.baselines.tutorial`, DataFrame rows one by one) doing the same work on the same
CSVs, and against a lean version of the same flow (`pipeline.baselines.tutorial_lean`: arrays
in memory, a per-image Dataset, `DataLoader(batch_size=50, num_workers=2)`, every train.csv
row); each command's time is split into start-up and imports, load, work and write
(`pipeline.common.timings`). `train` runs tracked, as it does by default; the MLflow recorder it
leaves behind (`experiments.recorder`) runs beside our `predict` and is waited for before the
tutorials' turns.
"""

import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from pipeline import config
from pipeline.baselines import tutorial_lean
from pipeline.baselines.tutorial import RESULT_LINE, TUTORIAL_BATCH
from pipeline.common import timings
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import read_meta
from pipeline.inference.submission import read_submission

PHASES = (timings.IMPORT, "load", "work", "write")
E2E_DEVICE = "cpu"  # the tutorial's setting; the recipes' GPU variants do not apply


@dataclass(frozen=True)
class ProcessTiming:
    """One command run as its own process: wall clock from spawn to exit, and its phases."""

    name: str
    wall_s: float
    phases: dict[str, float]  # import (process start to first phase), load, work, write

    @property
    def other_s(self) -> float:
        """Wall time outside the phases: spawning, interpreter exit, gaps between phases."""
        return self.wall_s - sum(self.phases.values())


@dataclass(frozen=True)
class EndToEnd:
    commands: list[ProcessTiming]  # ours: prepare, train, predict
    tutorial: ProcessTiming
    val_accuracy: float  # ours: the trained checkpoint's
    tutorial_val_accuracy: float
    agreement: float  # share of test digits both submissions label alike
    repeats: int
    lean: ProcessTiming | None = None  # the lean tutorial script (trains on every row)
    lean_agreement: float | None = None

    @property
    def ours_s(self) -> float:
        return sum(c.wall_s for c in self.commands)

    @property
    def ratio(self) -> float:
        """How many times faster our three commands are than the tutorial's script."""
        return self.tutorial.wall_s / self.ours_s

    @property
    def lean_ratio(self) -> float | None:
        """How many times faster our three commands are than the lean tutorial script."""
        return None if self.lean is None else self.lean.wall_s / self.ours_s


def run_timed(name: str, args: list[str], timings_path: Path) -> tuple[ProcessTiming, str]:
    """Run `python -m <args>` with PIPELINE_TIMINGS set; its timing and its stdout."""
    env = dict(os.environ, **{timings.ENV_VAR: str(timings_path)})
    timings_path.unlink(missing_ok=True)
    spawned, start = time.time(), time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", *args], capture_output=True, text=True, env=env, timeout=3600
    )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise PipelineError(f"bench: `{' '.join(args)}` exited {done.returncode}: {last}")
    phases = json.loads(timings_path.read_text())
    phases[timings.IMPORT] = phases.get(timings.FIRST_PHASE_AT, spawned) - spawned
    return ProcessTiming(name, wall, {k: phases.get(k, 0.0) for k in PHASES}), done.stdout


def _median_run(runs: list[ProcessTiming]) -> ProcessTiming:
    return sorted(runs, key=lambda run: run.wall_s)[len(runs) // 2]


def our_commands(raw_dir: Path, work: Path, seed: int) -> dict[str, list[str]]:
    """`python -m` arguments of our three commands, writing under `work`."""
    processed, checkpoint = work / "processed", work / "cnn.pt"
    return {
        "prepare": ["pipeline", "prepare", "--raw-dir", str(raw_dir),
                    "--processed-dir", str(processed), "--seed", str(seed), "--force"],
        "train": ["pipeline", "train", "--model", "cnn", "--epochs", "1",
                  "--batch-size", str(TUTORIAL_BATCH), "--device", E2E_DEVICE,
                  "--seed", str(seed), "--processed-dir", str(processed),
                  "--out", str(checkpoint), "--force"],
        "predict": ["pipeline", "predict", "--checkpoint", str(checkpoint),
                    "--processed-dir", str(processed), "--out", str(work / "submission.csv"),
                    "--device", E2E_DEVICE],
    }  # fmt: skip


def settle_tracking() -> None:
    """Wait until `train`'s tracking record is in MLflow (its recorder process may still be
    at it), so that it never runs beside the tutorial scripts' timings."""
    from pipeline.experiments import tracking

    if tracking.wanted():
        from pipeline.experiments.recorder import record_pending

        record_pending()


def bench_end_to_end(
    raw_dir: Path, repeats: int = 1, work_dir: Path | None = None, seed: int = 0
) -> EndToEnd:
    """Our three commands against the tutorial's script and the lean one on raw_dir's CSVs,
    `repeats` times.

    Each figure is the median run's; the sides take turns going first. Everything is written
    under `work_dir` (a temporary folder by default).
    """
    with nullcontext(work_dir) if work_dir else tempfile.TemporaryDirectory() as work:
        work = Path(work)
        commands = our_commands(raw_dir, work, seed)
        tutorial_csv, clock = work / "tutorial.csv", work / "timings.json"
        tutorial_args = ["pipeline.baselines.tutorial", "--raw-dir", str(raw_dir),
                         "--out", str(tutorial_csv), "--device", E2E_DEVICE,
                         "--seed", str(seed)]  # fmt: skip
        lean_csv = work / "lean.csv"
        lean_args = ["pipeline.baselines.tutorial_lean", "--raw-dir", str(raw_dir),
                     "--out", str(lean_csv), "--device", E2E_DEVICE,
                     "--seed", str(seed)]  # fmt: skip
        ours: dict[str, list[ProcessTiming]] = {name: [] for name in commands}
        tutorial: list[ProcessTiming] = []
        lean: list[ProcessTiming] = []
        tutorial_out = lean_out = ""

        def run_ours() -> None:
            for name, args in commands.items():
                ours[name].append(run_timed(name, args, clock)[0])
            settle_tracking()

        def run_tutorial() -> None:
            nonlocal tutorial_out
            timing, tutorial_out = run_timed("tutorial", tutorial_args, clock)
            tutorial.append(timing)

        def run_lean() -> None:
            nonlocal lean_out
            timing, lean_out = run_timed("lean", lean_args, clock)
            lean.append(timing)

        sides = [run_ours, run_tutorial, run_lean]
        for repeat in range(repeats):
            for side in sides[repeat % 3 :] + sides[: repeat % 3]:
                side()
        found = RESULT_LINE.search(tutorial_out)
        if found is None:
            raise PipelineError(f"bench: the tutorial script printed no result: {tutorial_out}")
        if tutorial_lean.RESULT_LINE.search(lean_out) is None:
            raise PipelineError(f"bench: the lean tutorial printed no result: {lean_out}")
        n_test = read_meta(work / "processed")["counts"]["test"]
        ours_labels = read_submission(work / "submission.csv", n_test)["Label"].to_numpy()
        tutorial_labels = read_submission(tutorial_csv, n_test)["Label"].to_numpy()
        lean_labels = read_submission(lean_csv, n_test)["Label"].to_numpy()
        sidecar = json.loads(config.sidecar_path(work / "cnn.pt").read_text())
        return EndToEnd(
            commands=[_median_run(runs) for runs in ours.values()],
            tutorial=_median_run(tutorial),
            val_accuracy=sidecar["val_accuracy"],
            tutorial_val_accuracy=float(found.group(1)) / 100,
            agreement=float((ours_labels == tutorial_labels).mean()),
            repeats=repeats,
            lean=_median_run(lean),
            lean_agreement=float((ours_labels == lean_labels).mean()),
        )
