"""Per model: training images/s of `pipeline train`'s own step against the tutorial's loop for
the same model and batch, and prediction speed."""

import statistics
import timeit
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from pipeline.baselines.tutorial import TUTORIAL_BATCH, train_tutorial, tutorial_loader
from pipeline.data.datasets import TensorDigits, load_split
from pipeline.inference.predictor import inference_model, predict_logits
from pipeline.training import run_state
from pipeline.training.distributed import Ranks
from pipeline.training.models import build_model
from pipeline.training.recipes import recipe_config
from pipeline.training.train import new_run, train_one_epoch


def median_seconds(work: Callable[[], object], repeats: int = 3) -> float:
    return statistics.median(timeit.repeat(work, number=1, repeat=repeats))


def project_images_per_second(
    model_name: str,
    train_data: TensorDigits,
    device: torch.device,
    batch_size: int,
    steps: int,
    augment: bool = False,
    compile_model: bool = False,
) -> tuple[float, float]:
    """(images/s, warm-up seconds) of `pipeline train`'s step at a constant learning rate; the
    warm-up steps absorb cuDNN's kernel search and compiling."""
    warmup = 10 if compile_model else 3
    steps_per_epoch = max(1, len(train_data) // batch_size)
    cfg = recipe_config(
        model=model_name,
        batch_size=batch_size,
        schedule="constant",
        augment=augment,
        device=str(device),
        epochs=-(-(warmup + steps) // steps_per_epoch),
        max_steps=warmup + steps,
    )
    cfg = replace(cfg, arch_args={}, compile=compile_model)
    if compile_model:
        torch.compiler.reset()  # a fresh compile per batch size, as a real run would have
    run = new_run(cfg, train_data, train_data, Ranks(), device, out=Path("bench.pt"))
    never = run_state.StopSignals()  # not entered: no signal handler, nothing stops the steps

    def timed_steps(count: int) -> float:
        run.total_steps = run.steps_done + count
        seconds = 0.0
        while run.steps_done < run.total_steps:
            seconds += train_one_epoch(run, never, log=None)
            if run.state.step >= run.steps_per_epoch:
                run.state.next_epoch()
        return seconds

    warm = timed_steps(warmup)
    return steps * batch_size / timed_steps(steps), warm


@dataclass(frozen=True)
class ModelBench:
    model: str
    train_per_s: float  # images/s at the bench's batch size
    warmup_s: float
    tutorial_at_50: float  # images/s of the tutorial's loop, same model, batch 50
    ours_at_50: float
    predict_per_s: float
    predict_test_s: float


def bench_models(
    processed_dir: Path, device: torch.device, models: list[str], steps: int, batch_size: int
) -> list[ModelBench]:
    train_split = load_split(processed_dir, "train")
    per_image = tutorial_loader(train_split)
    train_data = TensorDigits.from_split(train_split).to(device)
    test_data = TensorDigits.load(processed_dir, "test").to(device)
    results = []
    for name in models:
        per_s, warm = project_images_per_second(name, train_data, device, batch_size, steps)
        at_50, _ = project_images_per_second(name, train_data, device, TUTORIAL_BATCH, steps)
        _, tutorial = train_tutorial(name, per_image, device, 0, max_steps=steps + 3)  # 3 warm-up
        model = inference_model(build_model(name).to(device).to(memory_format=torch.channels_last))
        predict_logits(model, test_data)  # warm-up
        predict_s = median_seconds(lambda m=model: predict_logits(m, test_data).argmax(1).cpu())
        results.append(
            ModelBench(name, per_s, warm, tutorial, at_50, len(test_data) / predict_s, predict_s)
        )
    return results


@dataclass(frozen=True)
class BestNetBench:
    model: str
    batch_size: int
    compiled: bool
    images_per_second: float
    warmup_s: float


def bench_best_net(
    processed_dir: Path,
    device: torch.device,
    batch_sizes: tuple[int, ...],
    steps: int,
    compile_model: bool | None = None,
) -> list[BestNetBench]:
    """The best recipe's net with its augmentation on, per batch size (default: the recipe's)."""
    cfg = recipe_config("best", device=str(device), compile=compile_model)
    train_data = TensorDigits.load(processed_dir, "train").to(device)
    rows = []
    for batch_size in batch_sizes or [cfg.batch_size]:
        per_s, warm = project_images_per_second(
            cfg.model, train_data, device, batch_size, steps, True, cfg.compile
        )
        rows.append(BestNetBench(cfg.model, batch_size, cfg.compile, per_s, warm))
    return rows
