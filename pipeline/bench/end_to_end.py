"""End to end, as processes: our `prepare`, `train` and `predict` against the tutorial's script
and its lean version on the same CSVs, wall clock from spawn to exit, split into start-up, load,
work and write (`pipeline.common.timings`)."""

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from pipeline import config
from pipeline.baselines.tutorial import LEAN_RESULT_LINE, RESULT_LINE, TUTORIAL_BATCH
from pipeline.common import timings
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import read_meta
from pipeline.inference.submission import read_submission

PHASES = ("import", "load", "work", "write")  # import: spawn to the first phase
E2E_DEVICE = "cpu"  # the tutorial's setting; the recipes' GPU variants do not apply


@dataclass(frozen=True)
class ProcessTiming:
    name: str
    wall_s: float
    phases: dict[str, float]  # seconds per PHASES


@dataclass(frozen=True)
class EndToEnd:
    commands: list[ProcessTiming]  # ours: prepare, train, predict
    scripts: list[ProcessTiming]  # the tutorial's script, then its lean version (every row)
    agreements: list[float]  # per script: share of test digits its submission labels as ours
    val_accuracy: float  # ours: the trained checkpoint's
    tutorial_val_accuracy: float
    repeats: int

    @property
    def ours_s(self) -> float:
        return sum(c.wall_s for c in self.commands)


def run_timed(name: str, args: list[str], timings_path: Path) -> tuple[ProcessTiming, str]:
    """`python -m <args>` with PIPELINE_TIMINGS set: its timing and its stdout."""
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
    phases["import"] = phases.get(timings.FIRST_PHASE_AT, spawned) - spawned
    return ProcessTiming(name, wall, {k: phases.get(k, 0.0) for k in PHASES}), done.stdout


def our_commands(raw_dir: Path, work: Path, seed: int) -> dict[str, list[str]]:
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


def bench_end_to_end(
    raw_dir: Path, repeats: int = 1, work_dir: Path | None = None, seed: int = 0
) -> EndToEnd:
    """Each side `repeats` times, taking turns to go first; each figure is the median run's."""
    from pipeline.experiments import tracking
    from pipeline.experiments.recorder import record_pending

    with nullcontext(work_dir) if work_dir else tempfile.TemporaryDirectory() as work:
        work = Path(work)
        scripts = {  # the tutorial's script and its lean version, each writing <name>.csv
            name: ["pipeline.baselines.tutorial", *lean, "--raw-dir", str(raw_dir),
                   "--out", str(work / f"{name}.csv"), "--device", E2E_DEVICE,
                   "--seed", str(seed)]
            for name, lean in (("tutorial", []), ("lean", ["--lean"]))
        }  # fmt: skip
        runs: dict[str, list[ProcessTiming]] = defaultdict(list)
        printed: dict[str, str] = {}
        sides = [list(our_commands(raw_dir, work, seed).items()), *([s] for s in scripts.items())]
        for repeat in range(repeats):
            for side in sides[repeat % 3 :] + sides[: repeat % 3]:
                for name, args in side:
                    timing, printed[name] = run_timed(name, args, work / "timings.json")
                    runs[name].append(timing)
                if tracking.wanted():  # `train`'s MLflow record must not run beside a timing
                    record_pending()
        found = RESULT_LINE.search(printed["tutorial"])
        if found is None or LEAN_RESULT_LINE.search(printed["lean"]) is None:
            raise PipelineError(f"bench: a tutorial script printed no result: {printed}")
        n_test = read_meta(work / "processed")["counts"]["test"]
        labels = {
            name: read_submission(work / f"{name}.csv", n_test)["Label"].to_numpy()
            for name in ("submission", *scripts)
        }
        median = {
            name: sorted(r, key=lambda run: run.wall_s)[len(r) // 2] for name, r in runs.items()
        }
        return EndToEnd(
            [median[name] for name in ("prepare", "train", "predict")],
            [median[name] for name in scripts],
            [float((labels["submission"] == labels[name]).mean()) for name in scripts],
            json.loads(config.sidecar_path(work / "cnn.pt").read_text())["val_accuracy"],
            float(found.group(1)) / 100,
            repeats,
        )
