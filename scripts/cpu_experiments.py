"""CPU experiments behind the `best` recipe's figures in docs/accuracy.md.

Run from the repository root after `pipeline download --zip ... && pipeline prepare`:

    python scripts/cpu_experiments.py member e1b '{"augment": true, "epochs": 12, "ema": 0.999}'
    python scripts/cpu_experiments.py best /tmp/best1     # the CPU members, OOB, a submission
    python scripts/cpu_experiments.py oob /tmp/best1      # OOB with/without TTA, per kernel

`member` trains one config on the prepared 90/10 split with one torch thread (the setting of
an ensemble member) and prints a RESULT line; `best` trains the device's best members into
DIR (finished members there are kept), prints the out-of-bag estimate and writes
DIR/submission.csv; `oob` re-scores DIR's members (paired: the same members every time).
"""

import json
import sys
import time
from pathlib import Path

PROCESSED = Path("data/processed")


def member(name: str, spec: str) -> None:
    import torch

    from pipeline.training.recipes import TrainConfig
    from pipeline.training.train import train

    torch.set_num_threads(1)
    cfg = TrainConfig(**json.loads(spec))
    out = Path("/tmp") / "cpu_experiments" / f"{name}.pt"
    start = time.perf_counter()
    result = train(cfg, PROCESSED, out, log=print, progress=False, force=True)
    print(
        f"RESULT {name} {spec} final {result.final_accuracy:.4%} best {result.best_accuracy:.4%}"
        f" train_s {result.train_seconds:.0f} wall {time.perf_counter() - start:.0f}"
    )


def best(models: Path) -> None:
    from tqdm import tqdm

    from pipeline.experiments.bagging import format_oob, score_out_of_bag
    from pipeline.experiments.ensemble import train_members
    from pipeline.inference.predict import predict
    from pipeline.training.recipes import best_members

    start = time.perf_counter()
    results = train_members(best_members(device="cpu"), PROCESSED, models, log=tqdm.write)
    trained = time.perf_counter()
    estimate, members = score_out_of_bag([r.checkpoint for r in results], PROCESSED, "cpu")
    print(format_oob(estimate))
    print("members' own OOB:", " ".join(f"{a:.2%}" for a in members))
    scored = time.perf_counter()
    checkpoints = [r.checkpoint for r in results]
    predict(checkpoints, PROCESSED, models / "submission.csv", device="cpu")
    print(
        f"train {trained - start:.0f} s, oob {scored - trained:.0f} s, predict "
        f"{time.perf_counter() - scored:.0f} s, total {time.perf_counter() - start:.0f} s"
    )


def oob(models: Path) -> None:
    import torch

    from pipeline.experiments.bagging import format_oob, score_out_of_bag
    from pipeline.inference.predictor import expand_checkpoints

    torch.set_num_threads(1)
    checkpoints = expand_checkpoints([models / "best-*.pt"])
    for tta in (False, True):
        estimate, members = score_out_of_bag(checkpoints, PROCESSED, "cpu", tta=tta)
        scores = " ".join(f"{a:.2%}" for a in members)
        print(f"tta={tta}: {format_oob(estimate)}; members {scores}")
    for parity, name in ((0, "k3 members only"), (1, "k5 members only")):
        subset = [c for c in checkpoints if int(c.stem.split("-")[1]) % 2 == parity]
        print(f"{name}: {format_oob(score_out_of_bag(subset, PROCESSED, 'cpu')[0])}")


if __name__ == "__main__":  # the members' processes are spawned: this guard is required
    part, *args = sys.argv[1:]
    {"member": member, "best": lambda d: best(Path(d)), "oob": lambda d: oob(Path(d))}[part](*args)
