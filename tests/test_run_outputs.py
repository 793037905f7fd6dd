"""What runs write: globs pick checkpoints only, --out names that collide are refused, one run
at a time per --out, a full disk leaves the old set whole, ensemble seeds are checked up front,
and a killed run's temp files are cleaned by the next run."""

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from pipeline import config
from pipeline.cli import app
from pipeline.common.errors import PipelineError
from pipeline.common.files import expand_checkpoints
from pipeline.data.prepare import prepare
from pipeline.experiments.crossval import cross_validate
from pipeline.experiments.ensemble import seed_members
from pipeline.training.checkpoints import save_checkpoint
from pipeline.training.models import build_model
from pipeline.training.recipes import recipe_config
from pipeline.training.train import train


def _cfg(**changes):
    settings = dict(model="cnn", epochs=1, batch_size=64, device="cpu", seed=0, max_steps=3)
    return recipe_config("fast", **(settings | changes))


def _members(folder, k=3):
    """An ensemble's files as `pipeline ensemble` leaves them: each member beside its
    resume state (untrained nets: only the file names matter here)."""
    folder.mkdir(parents=True, exist_ok=True)
    for member in range(k):
        path = config.member_checkpoint_path("best", member, folder)
        model = build_model("mlp", hidden=8)
        meta = {"model": "mlp", "arch_args": {"hidden": 8}}
        save_checkpoint(path, model, meta)
        save_checkpoint(config.last_checkpoint_path(path), model, meta, {}, sidecar=False)
    return folder


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


# ----------------------------------------------------------------------- 1. ensemble globs


def test_a_glob_selects_checkpoints_not_resume_states_and_says_so(tmp_path):
    folder = _members(tmp_path / "models")
    said = []
    paths = expand_checkpoints([folder / "best-*.pt"], log=said.append)
    assert paths == [folder / f"best-{k}.pt" for k in range(3)]
    assert said == [
        f"{folder / 'best-*.pt'}: 3 checkpoint(s): best-0.pt, best-1.pt, best-2.pt; "
        "skipped 3 resume states, other files or ones given before"
    ]


def test_a_glob_of_resume_states_only_and_a_file_named_twice(tmp_path):
    folder = _members(tmp_path / "models", k=2)
    with pytest.raises(
        PipelineError, match=r"no checkpoint matches \(only 2 resume states, other files"
    ):
        expand_checkpoints([folder / "*.last.pt"])
    twice = expand_checkpoints([folder / "best-0.pt", folder / "best-*.pt"])
    assert twice == [folder / "best-0.pt", folder / "best-1.pt"]


def test_predict_averages_each_member_once(sample_processed_dir, tmp_path):
    folder = _members(tmp_path / "models")
    out = tmp_path / "submission.csv"
    args = ["predict", "--checkpoint", str(folder / "best-*.pt"), "--out", str(out)]
    result = CliRunner().invoke(app, [*args, "--processed-dir", str(sample_processed_dir)])
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"predict: {folder / 'best-*.pt'}: 3 checkpoint(s): ")
    assert "from 3 model(s)" in result.output


# ----------------------------------------------------------------------- 2. --out names


@pytest.mark.parametrize("name", ["m.json", "m.last.pt", "m", "m.metrics.csv", "m.curves.png"])
def test_an_out_that_is_not_a_checkpoint_name_is_refused_before_training(
    name, sample_processed_dir, tmp_path
):
    with pytest.raises(PipelineError, match=r"a checkpoint's name must end in \.pt and not"):
        train(_cfg(), sample_processed_dir, tmp_path / name, progress=False)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------- 3. one run per --out

HOLDER = """
import sys, time
from pathlib import Path
from pipeline import config
from pipeline.common.files import run_lock
out = Path(sys.argv[1])
with run_lock(out, config.lock_path(out)):  # what `train` holds, without importing torch
    print("locked", flush=True)
    time.sleep(120)
"""


def test_a_second_run_to_the_same_out_is_refused_until_the_first_dies(
    sample_processed_dir, tmp_path
):
    out = tmp_path / "run.pt"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(PipelineError) as refused:
            train(_cfg(), sample_processed_dir, out, progress=False)
        assert str(refused.value).startswith(f"another run is writing {out} (pid {holder.pid})")
        assert not out.exists()
    finally:
        holder.send_signal(signal.SIGKILL)  # a killed run's lock goes with it
        holder.wait()
    result = train(_cfg(), sample_processed_dir, out, progress=False)
    assert result.checkpoint == out and out.is_file()
    assert not config.lock_path(out).exists()  # released and removed with the run


@pytest.mark.slow
def test_two_train_commands_to_one_out_never_mix(sample_processed_dir, tmp_path):
    out = tmp_path / "run.pt"
    command = [sys.executable, "-m", "pipeline", "train", "--model", "cnn", "--device", "cpu"]
    command += ["--epochs", "2", "--processed-dir", str(sample_processed_dir), "--out", str(out)]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock = config.lock_path(out)
    try:
        while not (lock.is_file() and lock.read_text().strip() == str(first.pid)):
            assert first.poll() is None, first.communicate()
        second = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert second.stderr == f"error: another run is writing {out} (pid {first.pid}); " + (
            "wait for it or stop it\n"
        )
        assert first.wait(timeout=300) == 0
    finally:
        first.kill()
    assert torch.load(out, weights_only=True)["meta"]["epochs_trained"] == 2


# ----------------------------------------------------------------------- 7. a full disk


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 4 MB file system to fill up: a tmpfs, which needs root to mount."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs to fill up needs root")
    mount = tmp_path / "tmpfs"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def _fill(folder: Path, leave: int) -> None:
    """Take every free byte of `folder`'s file system but `leave`."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        try:
            while True:
                handle.write(b"\0" * (1 << 16))
                handle.flush()
        except OSError:
            pass
    with open(filler, "r+b") as handle:
        handle.truncate(max(filler.stat().st_size - leave, 0))


@pytest.mark.parametrize(
    "room", [pytest.param("none", marks=pytest.mark.slow), "for the checkpoint only"]
)
def test_a_full_disk_names_the_file_and_keeps_the_old_run_whole(
    room, small_tmpfs, sample_processed_dir
):
    out = small_tmpfs / "run.pt"
    train(_cfg(), sample_processed_dir, out, progress=False)
    before = _files(small_tmpfs)
    assert config.last_checkpoint_path(out).stat().st_size > 2 * out.stat().st_size
    fits = out.stat().st_size + config.sidecar_path(out).stat().st_size + (32 << 10)
    _fill(small_tmpfs, 0 if room == "none" else fits)
    with pytest.raises(PipelineError) as full:
        train(_cfg(), sample_processed_dir, out, force=True, progress=False)
    message = str(full.value)
    assert message.endswith(": cannot be written (No space left on device)"), message
    written = out if room == "none" else config.last_checkpoint_path(out)
    assert message.startswith(str(written))
    (small_tmpfs / "filler").unlink()
    assert _files(small_tmpfs) == before  # all old: no new checkpoint beside an old state


# ----------------------------------------------------------------------- 11. ensemble seeds


def test_member_seeds_past_the_range_are_refused_before_any_training(
    sample_processed_dir, sample_raw_dir, tmp_path
):
    cfg = _cfg(seed=2**32 - 1)
    expected = r"--seed 4294967295 with --members 2: member seeds run to 4294967296"
    with pytest.raises(PipelineError, match=expected):
        seed_members(cfg, 2)
    with pytest.raises(PipelineError, match=expected):
        cross_validate(cfg, 2, [0], sample_raw_dir, tmp_path / "cv", tmp_path / "cvdata")
    assert list(tmp_path.iterdir()) == []
    args = ["ensemble", "--seed", "4294967295", "--members", "2", "--device", "cpu"]
    args += ["--processed-dir", str(sample_processed_dir), "--out-dir", str(tmp_path / "m")]
    for recipe in ("best", "fast"):  # the differing members, and K seeds of one recipe
        result = CliRunner().invoke(app, [*args, "--recipe", recipe])
        assert result.exit_code == 1 and result.output.startswith("error: --seed 4294967295")
    assert not (tmp_path / "m").exists()


# ----------------------------------------------------------------------- 12. dead temp files

KILLED_WRITER = """
import sys, time
from pathlib import Path
from pipeline.common.files import atomic_path, temp_dir
folder = Path(sys.argv[1])
pngs = temp_dir(folder, "images")
Path(pngs.name, "1.png").write_bytes(b"half a png")
with atomic_path(folder / sys.argv[2]) as tmp:
    tmp.write_bytes(b"half a file")
    print("writing", flush=True)
    time.sleep(120)
"""


def _killed_mid_write(folder: Path, name: str) -> list[Path]:
    """Run a writer in `folder` and SIGKILL it mid-write; return the temp entries it left:
    its PNG folder and its temp file."""
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(folder), name],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    left = sorted(p for p in folder.iterdir() if str(writer.pid) in p.name)
    assert [p.is_dir() for p in left] == [True, False], left  # .images-<pid>-*, .<name>.<pid>.tmp
    return left


def test_prepare_removes_a_killed_runs_temp_files_and_no_live_ones(raw_dir, tmp_path):
    processed = tmp_path / "processed"
    prepare(raw_dir, processed)
    dead = _killed_mid_write(processed, "train.pt")
    live = [processed / f".train.pt.{os.getpid()}.tmp", processed / f".images-{os.getpid()}-x1"]
    foreign = [processed / ".images-old", processed / "notes.tmp", processed / ".x.99999999.bak"]
    live[0].write_bytes(b"a live run's work")
    live[1].mkdir()
    foreign[0].mkdir()
    foreign[1].write_text("not ours")
    foreign[2].write_text("not ours")
    result = prepare(raw_dir, processed)
    assert result.skipped  # the cache is current: the clean-up does not depend on a rebuild
    assert not any(p.exists() for p in dead)
    assert all(p.exists() for p in live + foreign)


def test_the_next_train_removes_a_killed_runs_temp_files(sample_processed_dir, tmp_path):
    out = tmp_path / "run.pt"
    train(_cfg(), sample_processed_dir, out, progress=False)
    dead = _killed_mid_write(tmp_path, config.last_checkpoint_path(out).name)
    result = train(_cfg(), sample_processed_dir, out, progress=False)
    assert result.skipped
    pngs, resume_state_tmp = dead
    assert not resume_state_tmp.exists()
    assert pngs.exists()  # a PNG folder is prepare's to clean, not train's
