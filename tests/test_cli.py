"""Each command's wiring through typer's CliRunner, and the one-line error contract."""

import pandas as pd
import pytest
import typer

from pipeline import config
from pipeline.data import kaggle_api

from conftest import assert_one_line_error, invoke


def test_help_lists_every_stage():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("download", "prepare", "train", "ensemble", "evaluate", "predict", "submit"):
        assert command in result.stdout


@pytest.mark.parametrize("group", [[], ["baselines"]])
def test_help_gives_each_commands_first_sentence_whole(group):
    """click cuts a long description at the terminal's width with "..."."""
    from pipeline.cli import app

    result = invoke(*group, "--help")
    commands_section = result.stdout.split("Commands:")[1]
    assert result.exit_code == 0 and "..." not in commands_section
    listing = " ".join(commands_section.split())
    command = typer.main.get_command(app)
    for name in group:
        command = command.commands[name]
    for name, sub in command.commands.items():
        first = " ".join((sub.help or "").split("\n\n")[0].split()).split(". ")[0]
        assert f"{name} {first}" in listing, name


def test_a_progress_bar_redraws_at_most_once_a_second(monkeypatch):
    """A terminal recorded to a log keeps every redraw as a line: one per 25 steps wrote ~50
    lines an epoch."""
    import io
    import sys

    from pipeline.common.progress import EpochProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    progress = EpochProgress("epoch 1/1", 1000, 0, True, log=None)
    for _ in range(1000):  # well under a second
        progress.step(lambda: 0.5)
    progress.close()
    assert progress.bar is not None and terminal.getvalue().count("\r") <= 5


def test_download_bad_zip_is_one_line(tmp_path):
    bad = tmp_path / "digit-recognizer.zip"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert_one_line_error(
        invoke("download", "--source", "zip", "--zip", bad, "--raw-dir", tmp_path / "raw"),
        str(bad),
    )


def test_bad_choice_is_a_usage_error():
    result = invoke("download", "--source", "ftp")
    assert result.exit_code == 2 and "invalid value for '--source'" in result.stderr


def test_prepare_then_skip(raw_dir, tmp_path):
    out = tmp_path / "processed"
    first = invoke("prepare", "--raw-dir", raw_dir, "--processed-dir", out)
    assert first.exit_code == 0 and "written (train 3,600, val 400, test 1,000)" in first.stdout
    second = invoke("prepare", "--raw-dir", raw_dir, "--processed-dir", out)
    assert "up to date" in second.stdout


def test_prepare_malformed_csv_is_one_line_and_writes_nothing(raw_dir, tmp_path):
    (raw_dir / config.TRAIN_CSV).write_text("label,pixel0\n3,0\n")
    out = tmp_path / "processed"
    result = invoke("prepare", "--raw-dir", raw_dir, "--processed-dir", out)
    assert_one_line_error(result, str(raw_dir / config.TRAIN_CSV), "header must be")
    assert not out.exists()


def _nul_tail(raw_dir):
    """What a crash leaves: the file's first rows, then NULs where the rest should be."""
    with open(raw_dir / config.TRAIN_CSV, "r+b") as handle:
        handle.seek(100_000)
        handle.write(bytes(2_000_000))
    return config.TRAIN_CSV, "not a text CSV file: a NUL byte at offset 100,000"


def _short_test(raw_dir):
    lines = (raw_dir / config.TEST_CSV).read_text().splitlines(keepends=True)
    (raw_dir / config.TEST_CSV).write_text("".join(lines[:-1]))
    return config.TEST_CSV, "has 999 digits, sample_submission.csv lists 1,000"


@pytest.mark.parametrize("damage", [_nul_tail, _short_test], ids=["nul tail", "short test"])
def test_prepare_on_damaged_raw_csvs_is_one_line(damage, raw_dir, tmp_path):
    name, problem = damage(raw_dir)
    out = tmp_path / "processed"
    result = invoke("prepare", "--raw-dir", raw_dir, "--processed-dir", out)
    assert_one_line_error(result, f"{raw_dir / name}: {problem}")
    assert not out.exists()


def test_download_of_a_zip_with_a_symlink_keeps_the_raw_csvs(raw_dir, tmp_path):
    import stat
    import zipfile

    archive = tmp_path / "digit-recognizer.zip"
    with zipfile.ZipFile(archive, "w") as opened:
        link = zipfile.ZipInfo(config.TRAIN_CSV)
        link.create_system, link.external_attr = 3, (stat.S_IFLNK | 0o777) << 16
        opened.writestr(link, "/etc/passwd")
        for name in (config.TEST_CSV, config.SAMPLE_SUBMISSION_CSV):
            opened.write(raw_dir / name, name)
    before = {p.name: p.read_bytes() for p in raw_dir.iterdir()}
    result = invoke("download", "--zip", archive, "--raw-dir", raw_dir)
    assert_one_line_error(result, f"{archive}: train.csv is a symbolic link, not a plain file")
    assert {p.name: p.read_bytes() for p in raw_dir.iterdir()} == before


def test_train_evaluate_predict(processed_dir, tmp_path):
    ckpt = tmp_path / "cnn.pt"
    trained = invoke(
        "train",
        "--model",
        "cnn",
        "--epochs",
        "1",
        "--max-steps",
        "5",
        "--device",
        "cpu",
        "--processed-dir",
        processed_dir,
        "--out",
        ckpt,
    )
    assert trained.exit_code == 0, trained.output
    assert "train: " in trained.stdout and "epoch   1/1" in trained.output
    again = invoke(
        "train",
        "--model",
        "cnn",
        "--epochs",
        "1",
        "--max-steps",
        "5",
        "--device",
        "cpu",
        "--processed-dir",
        processed_dir,
        "--out",
        ckpt,
    )
    assert "up to date" in again.stdout

    evaluated = invoke(
        "evaluate",
        "--checkpoint",
        ckpt,
        "--processed-dir",
        processed_dir,
        "--device",
        "cpu",
        "--figures-dir",
        tmp_path / "figures",
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert "precision" in evaluated.stdout and "val accuracy" in evaluated.stdout
    assert (tmp_path / "figures" / "cnn_val_confusion.png").stat().st_size > 0
    assert "train: curves " + str(tmp_path / "cnn.curves.png") in trained.stdout

    sub = tmp_path / "sub.csv"
    predicted = invoke(
        "predict",
        "--checkpoint",
        ckpt,
        "--checkpoint",
        ckpt,
        "--processed-dir",
        processed_dir,
        "--out",
        sub,
        "--device",
        "cpu",
    )
    assert predicted.exit_code == 0 and "1,000 labels from 2 model(s)" in predicted.stdout
    # the sample's digits: said again as the last line, where `make all` ends
    last = predicted.stderr.strip().splitlines()[-1]
    assert "this submission is from 5,000 sample digits, not Kaggle's" in last
    assert len(pd.read_csv(sub)) == 1000
    scored = invoke("evaluate", "--submission", sub, "--processed-dir", processed_dir)
    assert scored.exit_code == 0 and "on the offline sample's answers" in scored.stdout


def test_corrupt_checkpoint_is_one_line(processed_dir, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"\x80\x02 definitely not torch")
    out = tmp_path / "out"
    result = invoke(
        "evaluate", "--checkpoint", broken, "--processed-dir", processed_dir, "--figures-dir", out
    )
    assert_one_line_error(result, str(broken))
    result = invoke(
        "predict",
        "--checkpoint",
        broken,
        "--processed-dir",
        processed_dir,
        "--out",
        out / "sub.csv",
    )
    assert_one_line_error(result, str(broken))
    assert not out.exists()  # neither figures nor a submission were written


def test_predict_without_any_matching_checkpoint(processed_dir, tmp_path):
    result = invoke(
        "predict",
        "--checkpoint",
        tmp_path / "best-*.pt",
        "--processed-dir",
        processed_dir,
        "--out",
        tmp_path / "s.csv",
    )
    assert_one_line_error(result, "no checkpoint matches")
    assert not (tmp_path / "s.csv").exists()


def test_train_without_prepared_data_is_one_line(tmp_path):
    result = invoke("train", "--processed-dir", tmp_path / "nothing")
    assert_one_line_error(result, "run `pipeline prepare`")


def test_submit_refuses_the_sample_submission(tmp_path):
    sub = tmp_path / "sub.csv"
    pd.DataFrame({"ImageId": range(1, 1001), "Label": 1}).to_csv(sub, index=False)
    assert_one_line_error(invoke("submit", "--file", sub), "has 1000 rows")


@pytest.mark.parametrize("reply", ["Successfully submitted to Digit Recognizer"])
def test_submit_with_a_faked_client(tmp_path, monkeypatch, reply):
    from types import SimpleNamespace

    calls = []

    class Client:
        def competition_submit(self, file_name, message, competition, quiet=False):
            calls.append((file_name, message, competition))
            return SimpleNamespace(message=reply)

    monkeypatch.setattr(kaggle_api, "connect", lambda: Client())
    sub = tmp_path / "submission.csv"
    pd.DataFrame({"ImageId": range(1, 28_001), "Label": 1}).to_csv(sub, index=False)
    result = invoke("submit", "--file", sub, "--message", "cli test")
    assert result.exit_code == 0 and reply in result.stdout
    assert calls == [(str(sub), "cli test", "digit-recognizer")]


@pytest.mark.parametrize(
    ("option", "value", "fragment"),
    [("--models", "mlp,resnet", "mlp,resnet"), ("--best-batch-sizes", "64,x", "64,x")],
)
def test_bench_refuses_bad_options_in_one_line(processed_dir, option, value, fragment):
    result = invoke("bench", "--processed-dir", processed_dir, option, value)
    assert_one_line_error(result, option, fragment)


def _help_text(*command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    return result.stdout


COMMANDS = [
    "download",
    "prepare",
    "train",
    "ensemble",
    "crossval",
    "evaluate",
    "predict",
    "submit",
    "bench",
]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_option_says_what_it_does(command):
    """typer shows an option's help on its line; no python types leak into the help."""
    import re

    text = _help_text(command)
    assert "<bool>" not in text and "list[" not in text and "Path]" not in text, text
    options = re.findall(r"^\s+(--[a-z-]+(?:/--[a-z-]+)?)(.*)$", text, flags=re.M)
    assert options, text
    for name, rest in options:
        if name != "--help":
            assert re.search(r"[A-Za-z]{3,}", rest.split("[default")[0].replace("PATH", "")), (
                f"{command} {name} has no description: {rest!r}"
            )


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["train", "--model", "resnet"], "'resnet' is not one of"),
        (["train", "--seed", "-1"], "'--seed': Input should be greater than or equal to 0"),
        (["download", "--seed", "-1"], "'--seed': Input should be greater than or equal to 0"),
        (["evaluate", "--split", "../x/train"], "'../x/train' is not one of"),
        (["prepare", "--limit-rows", "0"], "greater than or equal to 1"),
        (["predict", "--no-such-option"], "no such option: --no-such-option"),
    ],
)
def test_usage_errors_are_one_line(args, fragment):
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error") or line.startswith("error")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr
    assert not any(char in result.stderr for char in "╭╰│"), result.stderr  # no box


def test_help_and_usage_errors_import_nothing_heavy():
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pipeline.cli import app\n"
        "runner = CliRunner()\n"
        "for args in (['--help'], ['train', '--help'], ['predict', '--help'],\n"
        "             ['baselines', '--help'], ['train', '--model', 'resnet']):\n"
        "    runner.invoke(app, args)\n"
        "heavy = [m for m in ('torch', 'pandas', 'sklearn', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(heavy) or 'none')\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert result.stdout.strip() == "none", result.stdout + result.stderr


def test_prepare_into_a_file_is_one_line(raw_dir, tmp_path):
    blocker = tmp_path / "processed"
    blocker.write_text("a file where a folder belongs")
    result = invoke("prepare", "--raw-dir", raw_dir, "--processed-dir", blocker)
    assert_one_line_error(result, str(blocker))


def test_a_file_name_too_long_for_the_files_beside_it_is_one_line_before_training(
    processed_dir, tmp_path
):
    """245 bytes fit one file but not its temporary and sidecar names: refused up front."""
    out = tmp_path / ("a" * 245 + ".pt")
    result = invoke("train", "--processed-dir", processed_dir, "--out", out, "--device", "cpu")
    assert_one_line_error(result, "the file name is too long")
    assert "val_acc" not in result.output  # no epoch ran
    assert [p.name for p in tmp_path.iterdir()] == [processed_dir.name]  # nothing written


def test_train_resume_with_other_options_is_one_line(tiny_run, processed_dir):
    """tiny_run: the session's run of `train --model cnn --max-steps 3 --device cpu`."""
    base = ["train", "--model", "cnn", "--max-steps", "3", "--device", "cpu"]
    base += ["--processed-dir", processed_dir, "--out", tiny_run]
    assert "up to date" in invoke(*base).stdout  # the same options make the same run
    assert invoke(*base, "--resume").exit_code == 0
    changed = invoke(
        "train", "--resume", "--out", tiny_run, "--epochs", "9", "--processed-dir", processed_dir
    )
    assert_one_line_error(changed, "epochs 9 (saved 4) differ")
