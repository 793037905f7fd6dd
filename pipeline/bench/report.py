"""`pipeline bench`'s report as text: one line or table per section of a `BenchReport`."""

import pandas as pd
import torch

from pipeline.baselines.tutorial import TUTORIAL_BATCH
from pipeline.bench.end_to_end import E2E_DEVICE, PHASES, EndToEnd, ProcessTiming
from pipeline.bench.run import BenchReport


def format_end_to_end(e2e: EndToEnd) -> list[str]:
    def row(timing: ProcessTiming, label: str) -> str:
        phases = " ".join(f"{timing.phases[k]:6.2f}" for k in PHASES)
        other = timing.wall_s - sum(timing.phases.values())  # spawn, exit, gaps between phases
        return f"{label:18} {timing.wall_s:7.2f} {phases} {other:6.2f}"

    lines = [
        "",
        f"end to end on {E2E_DEVICE} (cnn, batch {TUTORIAL_BATCH}, 1 epoch; each command a "
        f"process, wall clock, median of {e2e.repeats}):",
        f"{'seconds':18} {'wall':>7} " + " ".join(f"{k:>6}" for k in (*PHASES, "other")),
        *(row(c, f"pipeline {c.name}") for c in e2e.commands),
        f"{'ours, 3 commands':18} {e2e.ours_s:7.2f}  val accuracy {e2e.val_accuracy:.2%}",
    ]
    notes = (f"val accuracy {e2e.tutorial_val_accuracy:.2%}", "(trained on every row)")
    for i, label in enumerate(("tutorial script", "lean tutorial")):
        timing = e2e.scripts[i]
        lines += [
            f"{row(timing, label)}  {notes[i]}",
            f"ours vs the {label}: {timing.wall_s / e2e.ours_s:.2f}x as fast ({timing.wall_s:.2f}"
            f" s / {e2e.ours_s:.2f} s; target >= 1.50x); the submissions agree on "
            f"{e2e.agreements[i]:.1%} of the test digits",
        ]
    return lines + [
        "(import: from the process's start to its first phase; load, work, write: the "
        "stage's phases, imports made inside them included; other: spawn, exit and the "
        "untimed gaps between phases)",
    ]


def format_report(report: BenchReport) -> str:
    lines = [
        f"device: {report.device}  (torch {torch.__version__}, {torch.get_num_threads()} threads)",
        f"parse train.csv + test.csv      {report.parse_csvs_s:6.2f} s  (median of 3, "
        f"pandas {pd.__version__})",
        f"prepare (parse, split, save)    {report.prepare_s:6.2f} s",
        f"load cached tensors             {report.load_cache_s:6.2f} s",
        "",
        f"{'model':8} {'train img/s':>12} {'warm-up s':>10} {'ours@50':>9} {'tutorial@50':>12} "
        f"{'ratio':>6} {'predict img/s':>14} {'28k test s':>10}",
    ]
    for m in report.models:
        lines.append(
            f"{m.model:8} {m.train_per_s:12,.0f} {m.warmup_s:10.2f} {m.ours_at_50:9,.0f} "
            f"{m.tutorial_at_50:12,.0f} {m.ours_at_50 / m.tutorial_at_50:5.2f}x "
            f"{m.predict_per_s:14,.0f} {m.predict_test_s:10.2f}"
        )
    for b in report.best_net:
        lines.append(
            f"best recipe's net ({b.model}, augmentation on, batch {b.batch_size}"
            f"{', compiled' if b.compiled else ''}): {b.images_per_second:,.0f} "
            f"img/s (warm-up {b.warmup_s:.1f} s)"
        )
    if f := report.fast_recipe:
        to_99 = "not reached" if f.seconds_to_99 is None else f"{f.seconds_to_99:.2f} s"
        warm = f"; warm-up run {f.warmup_s:.1f} s" if f.warmup_s else ""
        lines += [
            "",
            f"fast recipe (batch {f.batch_size}{', compiled' if f.compiled else ''}): "
            f"val accuracy {f.val_accuracy:.2%} after {f.train_seconds:.2f} s of "
            f"training; 99.0% after {to_99}{warm}; curve {f.curve}",
        ]
    if d := report.ddp:
        lines += [
            f"torchrun {d.model}: 1 process {d.one_process:,.0f} img/s, "
            f"2 processes {d.two_processes:,.0f} img/s ({d.two_processes / d.one_process:.2f}x)"
        ]
    if e := report.ensemble:
        lines += [
            f"best ensemble ({e.members} members of {e.steps} steps): 1 at a time {e.one:.1f} "
            f"members/min, {e.slots} at once {e.many:.1f} members/min ({e.many / e.one:.2f}x)"
        ]
    if b := report.busy_core:
        lines += [
            f"cpu training ({b.model}, {b.cores} cores): quiet {b.quiet:,.0f} img/s at "
            f"{b.quiet_threads} threads, one core busy {b.busy:,.0f} img/s at {b.busy_threads} "
            f"({b.busy / b.quiet:.2f} of quiet; fair share {(b.cores - 1) / b.cores:.2f})"
        ]
    if report.end_to_end:
        lines += format_end_to_end(report.end_to_end)
    if report.serve:
        lines += ["", "pipeline serve under load (cpu, 127.0.0.1):"]
        lines += [f"  {line}" for line in report.serve.splitlines()]
    return "\n".join(lines)
