"""One signal story: real SIGINT/SIGTERM sent to real `python -m pipeline` processes.

Every command, at every moment after `pipeline.__main__` starts (the interpreter's own
start-up is Python's), exits 130 on SIGINT and 143 on SIGTERM with one line on stderr, no
traceback and no output. Offsets count from the moment the process has its handlers (read from
/proc/<pid>/status), so the window inside the typer, torch and pandas imports is covered
whatever the machine's load.
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.common import exits

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/status").exists(), reason="reads SigCgt from /proc (Linux)"
)
MESSAGES = {
    signal.SIGINT: "error: interrupted; nothing half-written was left behind",
    signal.SIGTERM: "error: terminated; nothing half-written was left behind",
}


def _handles_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM: `pipeline.__main__` has started."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    caught = next(line for line in status.splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) & (1 << (signal.SIGTERM - 1)))


def _signalled(args, preexec_fn, offsets, signum, second_after=None):
    """Start `python -m pipeline *args`, wait until it handles signals, sleep `offset`, send
    `signum` (and again `second_after` s later); return (returncode, stderr)."""
    command = [sys.executable, "-m", "pipeline", *map(str, args)]
    proc = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=preexec_fn,
    )
    deadline = time.monotonic() + 30
    while not _handles_sigterm(proc.pid) and proc.poll() is None:
        assert time.monotonic() < deadline, "the command never installed its handlers"
        time.sleep(0.001)
    time.sleep(offsets)
    proc.send_signal(signum)
    if second_after is not None:
        time.sleep(second_after)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    return proc.returncode, stderr


def _assert_stopped(returncode, stderr, signum, output: Path):
    """One line, the signal's exit code, no output. Train stopped inside its loop says instead
    where its resume state went (and that state exists): stopping there is what it is for."""
    assert returncode == exits.exit_code(signum), stderr
    lines = stderr.splitlines()
    resume_state = output.with_suffix(".last.pt")
    if output.suffix == ".pt" and lines and "state saved to" in lines[0]:
        assert len(lines) == 1 and lines[0].startswith(f"error: interrupted: {signum.name} at"), (
            stderr
        )
        assert f"state saved to {resume_state}" in lines[0] and "--resume" in lines[0], stderr
        assert resume_state.exists(), stderr
    else:
        assert lines == [MESSAGES[signum]], stderr
    assert not output.exists(), f"{output} was written by a stopped command"


def _commands(raw_dir, processed_dir, fast_checkpoint, tmp_path):
    out = tmp_path / "out"
    return {
        "prepare": (
            ["prepare", "--raw-dir", raw_dir, "--processed-dir", out],
            out / "meta.json",
        ),
        "train": (
            ["train", "--processed-dir", processed_dir, "--max-steps", "2"]
            + ["--device", "cpu", "--out", out / "m.pt"],
            out / "m.pt",
        ),
        "predict": (
            ["predict", "--checkpoint", fast_checkpoint, "--processed-dir", processed_dir]
            + ["--device", "cpu", "--out", out / "s.csv"],
            out / "s.csv",
        ),
    }


@pytest.mark.parametrize(
    "command, signum, offset",
    [
        ("prepare", signal.SIGTERM, 0.0),  # inside the import of typer
        pytest.param("predict", signal.SIGINT, 0.05, marks=pytest.mark.slow),
    ],
)
def test_a_signal_while_the_command_starts_is_one_line(
    command, signum, offset, raw_dir, processed_dir, fast_checkpoint, tmp_path,
    sigint_as_at_a_terminal,
):  # fmt: skip
    args, output = _commands(raw_dir, processed_dir, fast_checkpoint, tmp_path)[command]
    returncode, stderr = _signalled(args, sigint_as_at_a_terminal, offset, signum)
    _assert_stopped(returncode, stderr, signum, output)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("command", ["prepare", "train", "predict"])
def test_a_signal_at_any_moment_is_one_line_and_no_output(
    command, signum, raw_dir, processed_dir, fast_checkpoint, tmp_path, sigint_as_at_a_terminal
):
    """The start-up window, inside the imports of typer, torch and pandas, and the work."""
    commands = _commands(raw_dir, processed_dir, fast_checkpoint, tmp_path)
    for offset in (0.0, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 2.5):
        args, output = commands[command]
        returncode, stderr = _signalled(args, sigint_as_at_a_terminal, offset, signum)
        if returncode == 0:  # finished before the signal (a fast machine): nothing to check
            assert output.exists(), stderr
            break
        _assert_stopped(returncode, stderr, signum, output)


@pytest.mark.parametrize("second_after", [0.0, pytest.param(0.05, marks=pytest.mark.slow)])
def test_a_second_ctrl_c_during_cleanup_adds_no_traceback(
    second_after, raw_dir, tmp_path, sigint_as_at_a_terminal
):
    out = tmp_path / "out"
    args = ["prepare", "--raw-dir", raw_dir, "--processed-dir", out]
    returncode, stderr = _signalled(
        args, sigint_as_at_a_terminal, 0.3, signal.SIGINT, second_after=second_after
    )
    _assert_stopped(returncode, stderr, signal.SIGINT, out / "meta.json")


def test_the_exit_keeps_atexit_callbacks_and_the_code(tmp_path):
    """`finish` skips the interpreter's teardown with os._exit from the last atexit callback
    (registered first): callbacks registered later (libraries') still run, the exit code and
    unflushed output survive, and an exception nobody caught still exits 1 with its traceback."""
    marker = tmp_path / "ran"
    script = (
        "import atexit, sys\n"
        "from pipeline.common import exits\n"
        "exits.install()\n"
        f"atexit.register(lambda: open({str(marker)!r}, 'w').close())\n"
        "sys.stdout.write('unflushed')\n"
        "if sys.argv[1] == 'bug':\n"
        "    raise RuntimeError('a bug')\n"
        "exits.finish(int(sys.argv[1]))\n"
    )
    for code in (0, 3):
        ran = subprocess.run([sys.executable, "-c", script, str(code)], capture_output=True)
        assert ran.returncode == code and ran.stdout == b"unflushed" and marker.exists()
        marker.unlink()
    bug = subprocess.run([sys.executable, "-c", script, "bug"], capture_output=True, text=True)
    assert bug.returncode == 1 and "RuntimeError: a bug" in bug.stderr and marker.exists()


def test_a_signal_python_cannot_raise_still_stops_the_command_in_one_line():
    """Ctrl-C inside a `__del__` or weakref callback (importlib's module locks, while torch
    imports) is "Exception ignored" to Python, which goes on: the command still ends 130 with
    the one line, and the dropped exception prints nothing (exits swaps sys.unraisablehook)."""
    script = (
        "import signal\n"
        "from pipeline.common import exits\n"
        "exits.install()\n"
        "class Finalised:\n"
        "    def __del__(self):\n"
        "        signal.raise_signal(signal.SIGINT)  # raises Stopped inside __del__\n"
        "Finalised()\n"
        "print('went on')\n"
        "exits.finish(0)\n"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert ran.stdout == "went on\n"  # Python dropped the exception and went on
    assert ran.returncode == 130 and ran.stderr.splitlines() == [MESSAGES[signal.SIGINT]]


def test_pipeline_alone_prints_the_help_and_exits_2():
    """Through click's public Context.get_help (no matching typer's NoArgsIsHelpError by name)."""
    alone = subprocess.run([sys.executable, "-m", "pipeline"], capture_output=True, text=True)
    assert alone.returncode == 2 and alone.stdout == "", alone
    assert alone.stderr.startswith("Usage: pipeline [OPTIONS] COMMAND")
    assert (
        "Commands:" in alone.stderr and "prepare" in alone.stderr and "Error" not in alone.stderr
    )


def test_a_library_caller_is_not_left_stopped(tmp_path):
    """Training's handler in-process (a test, a notebook): two Ctrl-Cs stop the loop, then
    interrupt; the process is not marked stopped afterwards, so later writes still publish."""
    from pipeline.common.files import write_json
    from pipeline.training.run_state import StopSignals

    with pytest.raises(exits.Stopped), StopSignals() as stop:
        signal.raise_signal(signal.SIGINT)  # the handler has run when this returns
        assert stop.signum == signal.SIGINT  # first: a flag the loop reads
        signal.raise_signal(signal.SIGINT)  # second: interrupts at once
        pytest.fail("the second Ctrl-C did not interrupt")
    assert exits.stopped() is None
    write_json({"ok": True}, tmp_path / "after.json")
    assert (tmp_path / "after.json").exists()
