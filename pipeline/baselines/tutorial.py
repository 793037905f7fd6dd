"""The tutorial's way of training, the baseline `pipeline bench` measures against: train.csv in
a DataFrame read row by row through a per-image `Dataset` (`ToTensor` + `Normalize`),
`DataLoader(batch_size=50)`, `.item()` of the loss every step. `--lean` is the same flow as a
careful user writes it: the CSVs as uint8 arrays, two loader workers, every train.csv row."""

import argparse
import itertools
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from pipeline import config
from pipeline.common.device import seed_everything
from pipeline.common.timings import phase, write_requested
from pipeline.training.models import build_model

TUTORIAL_BATCH = 50
WORKERS = 2  # the lean script's loader processes
RESULT_LINE = re.compile(r"^tutorial: val_acc (\d+\.\d+)% .* in (\d+\.\d+) s")
LEAN_RESULT_LINE = re.compile(r"^tutorial \(lean\): trained on ([\d,]+) digits; .* in \d+\.\d+ s")


class TutorialCsvDigits(Dataset):
    """One DataFrame row per item: (image, label) if train.csv's label column leads, else image."""

    def __init__(self, frame: pd.DataFrame):
        from torchvision import transforms  # the tutorial's transforms, imported only here

        self.frame = frame
        self.labelled = frame.columns[0] == "label"
        normalize = transforms.Normalize((config.PIXEL_MEAN,), (config.PIXEL_STD,))
        self.transform = transforms.Compose([transforms.ToTensor(), normalize])

    def __len__(self) -> int:
        return len(self.frame)

    def __getitem__(self, index: int):
        pixels = self.frame.iloc[index, 1:] if self.labelled else self.frame.iloc[index]
        image = self.transform(pixels.to_numpy(dtype=np.uint8, copy=True).reshape(28, 28, 1))
        return (image, int(self.frame.iloc[index, 0])) if self.labelled else image


class ArrayDigits(Dataset):
    """The lean script's Dataset: one uint8 row of 784 pixels per item, normalised."""

    def __init__(self, pixels: np.ndarray, labels: np.ndarray | None = None):
        self.pixels, self.labels = pixels, labels

    def __len__(self) -> int:
        return len(self.pixels)

    def __getitem__(self, index: int):
        image = torch.from_numpy(self.pixels[index]).float().div_(255)
        image = image.sub_(config.PIXEL_MEAN).div_(config.PIXEL_STD).view(1, 28, 28)
        return image if self.labels is None else (image, int(self.labels[index]))


def tutorial_loader(split) -> DataLoader:
    """The split as the tutorial reads it: train.csv's columns in a DataFrame, row by row."""
    frame = pd.DataFrame(split.images.flatten(1).numpy(), columns=config.TEST_HEADER)
    frame.insert(0, "label", split.labels.numpy())
    return DataLoader(TutorialCsvDigits(frame), batch_size=TUTORIAL_BATCH, shuffle=True)


def train_tutorial(
    model_name: str, loader: DataLoader, device: torch.device, seed: int, max_steps=None, warmup=3
) -> tuple[torch.nn.Module, float]:
    """The tutorial's loop (Adam at 1e-3) for one epoch or `max_steps` steps: the model, and
    images/s after the first `warmup` steps."""
    seed_everything(seed)
    model = build_model(model_name).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    running_loss, start, steps = 0.0, time.perf_counter(), 0
    for steps, (images, labels) in enumerate(itertools.islice(loader, max_steps), 1):
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()  # also waits for the device, so the clock covers its work
        if steps == warmup:
            start = time.perf_counter()
    return model.eval(), (steps - warmup) * TUTORIAL_BATCH / (time.perf_counter() - start)


def predicted_labels(model: torch.nn.Module, loader: DataLoader, device: torch.device):
    with torch.no_grad():
        return torch.cat([model(images.to(device)).argmax(1).cpu() for images in loader]).numpy()


def tutorial_split(frame: pd.DataFrame, seed: int) -> list[pd.DataFrame]:
    """The tutorial's stratified 90/10 split: the rows `pipeline prepare --seed SEED` holds out."""
    from sklearn.model_selection import train_test_split

    return train_test_split(frame, test_size=0.1, stratify=frame["label"], random_state=seed)


def run_script(raw_dir: Path, out: Path, seed: int, device: str, lean: bool) -> str:
    """The tutorial's single script, timed in load, work and write phases; the line it prints."""
    if not lean:  # the script imports these at its top: before the clock, like every import
        import sklearn.model_selection  # noqa: F401
        import torchvision.transforms  # noqa: F401

    target = torch.device(device)  # as the tutorial does: torch's own CPU threads
    workers = WORKERS if lean else 0
    start = time.perf_counter()
    with phase("load"):
        train_frame = pd.read_csv(raw_dir / config.TRAIN_CSV)
        test_frame = pd.read_csv(raw_dir / config.TEST_CSV)
        if lean:
            train = train_frame.to_numpy(dtype=np.uint8)
            train_set = ArrayDigits(np.ascontiguousarray(train[:, 1:]), train[:, 0])
            test_set = ArrayDigits(test_frame.to_numpy(dtype=np.uint8))
        else:
            train_part, val_part = tutorial_split(train_frame, seed)
            train_set, test_set = TutorialCsvDigits(train_part), TutorialCsvDigits(test_frame)
    with phase("work"):
        loader = DataLoader(train_set, TUTORIAL_BATCH, shuffle=True, num_workers=workers)
        model, _ = train_tutorial("cnn", loader, target, seed)
        if not lean:
            val_set = TutorialCsvDigits(val_part.drop(columns="label"))
            val_labels = predicted_labels(model, DataLoader(val_set, TUTORIAL_BATCH), target)
            accuracy = float((val_labels == val_part["label"].to_numpy()).mean())
        test_loader = DataLoader(test_set, TUTORIAL_BATCH, num_workers=workers)
        labels = predicted_labels(model, test_loader, target)
    with phase("write"):
        submission = pd.DataFrame({"ImageId": np.arange(1, len(labels) + 1), "Label": labels})
        out.parent.mkdir(parents=True, exist_ok=True)
        submission.to_csv(out, index=False)
    written = f"{len(labels):,} labels -> {out} in {time.perf_counter() - start:.2f} s"
    if lean:
        return f"tutorial (lean): trained on {len(train_set):,} digits; {written}"
    return f"tutorial: val_acc {accuracy:.2%} ({len(val_part):,} digits); {written}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.baselines.tutorial",
        description="The tutorial's single script: read the CSVs, train the CNN for one epoch "
        "in batches of 50, score the validation split, write a submission.",
    )
    parser.add_argument("--raw-dir", type=Path, default=config.RAW_DIR, help="train/test.csv")
    parser.add_argument("--out", type=Path, required=True, help="Submission CSV to write.")
    parser.add_argument("--seed", type=int, default=0, help="Split, shuffle and weights seed.")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or mps.")
    parser.add_argument(
        "--lean", action="store_true", help="CSVs as uint8 arrays, 2 loader workers, every row."
    )
    args = parser.parse_args(argv)
    try:
        line = run_script(args.raw_dir, args.out, args.seed, args.device, args.lean)
    finally:
        write_requested()
    print(line)


if __name__ == "__main__":
    main()
