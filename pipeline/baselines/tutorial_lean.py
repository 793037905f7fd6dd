"""The seeds' own flow, written lean: the stronger baseline `pipeline bench` measures against.

Where `pipeline.baselines.tutorial` reads DataFrame rows one by one, this holds the CSVs as
uint8 arrays in memory, serves them through a per-image `Dataset` (one array row to one
normalised tensor), and lets `DataLoader(batch_size=50, num_workers=2)` batch them in worker
processes: the flow a careful user of the tutorial would write. It trains the same CNN with the
same step (`tutorial_step`) on all of train.csv for one epoch, in one process, and writes a
submission for test.csv:

    python -m pipeline.baselines.tutorial_lean --raw-dir data/raw --out /tmp/lean.csv
"""

import argparse
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline import config
from pipeline.baselines.tutorial import TUTORIAL_BATCH, tutorial_step
from pipeline.common.device import seed_everything
from pipeline.common.timings import phase, write_requested
from pipeline.training.models import build_model

WORKERS = 2


class ArrayDigits(Dataset):
    """One uint8 row of 784 pixels per item, normalised into a [1, 28, 28] float tensor."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray | None = None):
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.pixels[index]).float().div_(255)
        image = image.sub_(config.PIXEL_MEAN).div_(config.PIXEL_STD).view(1, 28, 28)
        return image if self.labels is None else (image, int(self.labels[index]))


@dataclass(frozen=True)
class LeanResult:
    train_rows: int
    test_rows: int
    submission: Path
    seconds: float  # from reading the CSVs to the written submission


RESULT_LINE = re.compile(r"^tutorial \(lean\): trained on ([\d,]+) digits; .* in (\d+\.\d+) s")


def run_lean(
    raw_dir: Path, out: Path, seed: int = 0, device: str = "cpu", epochs: int = 1
) -> LeanResult:
    """train.csv and test.csv as arrays -> the tutorial CNN, Adam (lr 1e-3), batches of 50 from
    two loader workers, `epochs` passes over every training row -> ImageId,Label for test.csv.
    Timed in load, work and write phases."""
    target = torch.device(device)
    start = time.perf_counter()
    with phase("load"):
        train = pd.read_csv(raw_dir / config.TRAIN_CSV).to_numpy(dtype=np.uint8)
        test = pd.read_csv(raw_dir / config.TEST_CSV).to_numpy(dtype=np.uint8)
        labels = train[:, 0].astype(np.int64)
        train = np.ascontiguousarray(train[:, 1:])
    with phase("work"):
        seed_everything(seed)
        model = build_model("cnn").to(target)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        loader = DataLoader(
            ArrayDigits(train, labels), batch_size=TUTORIAL_BATCH, shuffle=True,
            num_workers=WORKERS,
        )  # fmt: skip
        model.train()
        for _ in range(epochs):
            running_loss = 0.0
            for images, batch_labels in loader:
                running_loss += tutorial_step(model, optimizer, images, batch_labels, target)
        model.eval()
        predictions = []
        test_loader = DataLoader(ArrayDigits(test), TUTORIAL_BATCH, num_workers=WORKERS)
        with torch.no_grad():
            for images in test_loader:
                predictions.append(model(images.to(target)).argmax(1).cpu())
    with phase("write"):
        predicted = torch.cat(predictions).numpy()
        submission = pd.DataFrame(
            {"ImageId": np.arange(1, len(predicted) + 1), "Label": predicted}
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        submission.to_csv(out, index=False)
    return LeanResult(len(train), len(predicted), out, time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    """`python -m pipeline.baselines.tutorial_lean --raw-dir data/raw --out lean.csv`."""
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.baselines.tutorial_lean",
        description="The seeds' flow, lean: CSVs as arrays, a per-image Dataset, DataLoader "
        "(batch 50, 2 workers), the CNN trained on every train.csv row, a submission.",
    )
    parser.add_argument("--raw-dir", type=Path, default=config.RAW_DIR, help="train/test.csv")
    parser.add_argument("--out", type=Path, required=True, help="Submission CSV to write.")
    parser.add_argument("--seed", type=int, default=0, help="Shuffle and weights seed.")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps.")
    parser.add_argument("--epochs", type=int, default=1, help="Passes over the training rows.")
    args = parser.parse_args(argv)
    try:
        result = run_lean(args.raw_dir, args.out, args.seed, args.device, args.epochs)
    finally:
        write_requested()
    print(
        f"tutorial (lean): trained on {result.train_rows:,} digits; "
        f"{result.test_rows:,} labels -> {result.submission} in {result.seconds:.2f} s"
    )


if __name__ == "__main__":
    main()
