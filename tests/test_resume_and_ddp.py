"""Long runs: a signal mid-training saves a resumable state; torchrun DDP equals one process."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from pipeline import config
from pipeline.training.checkpoints import read_payload
from pipeline.training.recipes import recipe_config
from pipeline.training.train import train

TRAIN = [sys.executable, "-m", "pipeline", "train", "--model", "cnn", "--device", "cpu"]


# `torchrun --standalone --nproc-per-node 2 -m pipeline`, through this interpreter
TORCHRUN_TWO = [
    sys.executable,
    "-m",
    "torch.distributed.run",
    "--standalone",
    "--nproc-per-node",
    "2",
    "-m",
    "pipeline",
]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")
    return env


def _weights(path):
    return read_payload(path)["state_dict"]


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_then_resume_gives_the_uninterrupted_weights(signum, processed_dir, tmp_path):
    torch.set_num_threads(1)  # the subprocess runs with OMP_NUM_THREADS=1: same kernels
    options = ["--epochs", "2", "--batch-size", "32", "--processed-dir", processed_dir]
    out = tmp_path / "cut.pt"
    proc = subprocess.Popen(
        [*map(str, TRAIN + options), "--out", str(out)],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    last = config.last_checkpoint_path(out)
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signum)  # epoch 1 is saved: we are inside epoch 2
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, stderr  # SIGTERM: 143, not 130
    assert "interrupted" in stderr and "--resume" in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and signal.Signals(signum).name in stderr
    loop = read_payload(last)["training_state"]["loop"]
    assert loop["epoch"] == 1 and loop["step"] > 0

    resumed = subprocess.run(
        [*map(str, TRAIN + options), "--out", str(out), "--resume"],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    cfg = recipe_config("fast", model="cnn", epochs=2, batch_size=32, device="cpu")
    whole = train(cfg, processed_dir, tmp_path / "whole.pt", progress=False)
    expected, got = _weights(config.last_checkpoint_path(whole.checkpoint)), _weights(last)
    assert all(torch.equal(expected[k], got[k]) for k in expected)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process_with_the_same_global_batch(processed_dir, tmp_path):
    options = [
        "--epochs",
        "1",
        "--max-steps",
        "12",
        "--batch-size",
        "64",
        "--augment",
        "--processed-dir",
        str(processed_dir),
    ]
    ddp_out = tmp_path / "ddp.pt"
    launch = [*TORCHRUN_TWO, "train"]
    ddp = subprocess.run(
        [*launch, "--model", "cnn", "--device", "cpu", *options, "--out", str(ddp_out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    reports = [line for line in ddp.stdout.splitlines() if line.startswith("train: ")]
    assert len(reports) == 2 and "val_acc" in reports[0]  # rank 0 alone reports (+ its curves)
    single_out = tmp_path / "single.pt"
    single = subprocess.run(
        [*map(str, TRAIN), *options, "--out", str(single_out)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    a, b = (
        _weights(config.last_checkpoint_path(ddp_out)),
        _weights(config.last_checkpoint_path(single_out)),
    )
    assert set(a) == set(b)
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-5, rtol=1e-4), name


# `pipeline ensemble --recipe best` cut to 4 members of 3 steps, on the sample's digits
ENSEMBLE = ["ensemble", "--recipe", "best", "--members", "4", "--epochs", "1", "--max-steps", "3"]
ENSEMBLE += ["--device", "cpu", "--no-track"]
MEMBER = re.compile(r"^member (\d)/4 .*?( \(kept: trained earlier\))?$", re.M)


def _oob(text):
    """The out-of-bag line(s) of an ensemble's output: what follows "min); " on each."""
    return [
        line.split("min); ")[1] for line in text.splitlines() if "ensemble: 4 members in" in line
    ]


@pytest.fixture(scope="module")
def one_process(sample_processed_dir, tmp_path_factory):
    """The members trained one after another in this process, and the out-of-bag line."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    out = tmp_path_factory.mktemp("one")
    options = [*ENSEMBLE, "--jobs", "1", "--processed-dir", str(sample_processed_dir)]
    reply = CliRunner().invoke(app, [*options, "--out-dir", str(out)])
    assert reply.exit_code == 0, reply.output
    (oob,) = _oob(reply.output)
    return out, oob


def _same_members(out, one_out):
    for k in range(4):
        a, b = read_payload(out / f"best-{k}.pt"), read_payload(one_out / f"best-{k}.pt")
        assert a["meta"]["seed"] == b["meta"]["seed"] == k
        assert all(torch.equal(v, b["state_dict"][name]) for name, v in a["state_dict"].items())


@pytest.mark.slow
def test_best_members_spread_over_torchrun_ranks_as_trained_in_one_process(
    sample_processed_dir, one_process, tmp_path
):
    """Member k trains on rank k % 2, bit for bit as in one process; rank 0 alone scores the
    ensemble, once every member exists; a rerun trains only the members missing."""
    options = [*ENSEMBLE, "--processed-dir", str(sample_processed_dir)]
    launch = [*TORCHRUN_TWO[:-2], "--tee", "3", "-m", "pipeline", *options]
    spread = tmp_path / "spread"

    def torchrun():
        done = subprocess.run(
            [*launch, "--out-dir", str(spread)], env=_env(), capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    stdout = torchrun()
    trained = re.findall(r"^\[default(\d)\]:member (\d)/4 ", stdout, flags=re.M)
    assert sorted(trained) == [("0", "1"), ("0", "3"), ("1", "2"), ("1", "4")]
    (summary,) = [line for line in stdout.splitlines() if "ensemble: 4 members in" in line]
    assert summary.startswith("[default0]:") and "on 3,200 of 4,000 labelled digits" in summary
    assert _oob(stdout) == [one_process[1]]
    _same_members(spread, one_process[0])
    weights = _weights(spread / "best-3.pt")
    for path in spread.glob("best-3.*"):  # member 4 lost with its machine
        path.unlink()
    again = torchrun()
    assert again.count("(kept: trained earlier)") == 3 and "[default1]:member 4/4 " in again
    assert all(torch.equal(v, _weights(spread / "best-3.pt")[k]) for k, v in weights.items())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Nodes:
    """Two `torchrun --nnodes 2` launchers on loopback, one per pretend machine, sharing one
    --out-dir; node 0 starts first, so it hosts the c10d rendezvous store."""

    def __init__(self, processed_dir, out, logs, lost_after=10):
        port, self.logs, self.procs = _free_port(), [logs / f"node{i}.log" for i in (0, 1)], []
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2",
                   "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
                   f"127.0.0.1:{port}", "--rdzv-id", f"ensemble-{port}", "--rdzv-conf",
                   "join_timeout=60", "-m", "pipeline", *ENSEMBLE, "--processed-dir",
                   str(processed_dir), "--out-dir", str(out)]  # fmt: skip
        env = _env() | {"GLOO_SOCKET_IFNAME": "lo", "PIPELINE_LOST_RANK_SECONDS": str(lost_after)}
        for log in self.logs:
            with open(log, "w") as sink:
                self.procs.append(subprocess.Popen(
                    command, env=env, stdout=sink, stderr=subprocess.STDOUT,
                    start_new_session=True,
                ))  # fmt: skip
            deadline = time.monotonic() + 60
            while not self.procs[1:] and time.monotonic() < deadline:  # node 0 hosts the store
                with socket.socket() as sock:
                    if sock.connect_ex(("127.0.0.1", port)) == 0:
                        break
                time.sleep(0.05)

    def text(self, node: int) -> str:
        return self.logs[node].read_text()

    def rank(self, node: int, timeout=120) -> int:
        deadline = time.monotonic() + timeout
        while not (found := re.search(r"\(rank (\d) of 2\)", self.text(node))):
            assert time.monotonic() < deadline and self.procs[node].poll() is None, self.text(node)
            time.sleep(0.05)
        return int(found[1])

    def wait(self, node: int, timeout=300) -> int:
        return self.procs[node].wait(timeout=timeout)

    def tree(self, node: int) -> list[int]:
        """The launcher and its workers (which sit in sessions of their own)."""

        def below(pid):
            kids = [int(k) for task in Path(f"/proc/{pid}/task").glob("*")
                    for k in (task / "children").read_text().split()]  # fmt: skip
            return [pid, *(d for k in kids for d in below(k))]

        return below(self.procs[node].pid)

    def kill(self) -> None:
        for node, proc in enumerate(self.procs):
            if proc.poll() is None:
                for pid in self.tree(node):
                    os.kill(pid, signal.SIGKILL)
                proc.wait()


@contextmanager
def two_nodes(processed_dir, out, logs):
    nodes = Nodes(processed_dir, out, logs)
    try:
        yield nodes
    finally:
        nodes.kill()


def _members(text):
    """{member number: kept?} from one node's log."""
    return {int(m[1]): bool(m[2]) for m in MEMBER.finditer(text)}


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, binds loopback")
def test_two_torchrun_nodes_split_the_members_as_one_process_trains_them(
    sample_processed_dir, one_process, tmp_path
):
    """`--nnodes 2` with a c10d rendezvous: member k on rank k % 2 whichever machine holds
    it, the same weights as one process, and rank 0 alone writes the out-of-bag line."""
    shared = tmp_path / "shared"
    with two_nodes(sample_processed_dir, shared, tmp_path) as nodes:
        assert [nodes.wait(0), nodes.wait(1)] == [0, 0], nodes.text(0) + nodes.text(1)
        ranks = [nodes.rank(0), nodes.rank(1)]
        assert sorted(ranks) == [0, 1]
        for node, rank in enumerate(ranks):
            assert _members(nodes.text(node)) == {rank + 1: False, rank + 3: False}
        main = nodes.text(ranks.index(0))
        assert _oob(main) == [one_process[1]] and not _oob(nodes.text(ranks.index(1)))
    _same_members(shared, one_process[0])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc, binds loopback")
def test_a_machine_lost_mid_run_then_the_same_command_trains_only_its_missing_members(
    sample_processed_dir, one_process, tmp_path
):
    """Node 1 freezes (a machine gone silent: no socket closes) once its first member is
    saved, then is killed. The survivor gives up in one line within the lost-rank wait
    instead of waiting for ever; no member is left half-written; the same two commands
    again keep every saved member untouched, train the rest, and end with one process's
    weights and out-of-bag line."""
    shared = tmp_path / "shared"
    with two_nodes(sample_processed_dir, shared, tmp_path) as nodes:
        lost = nodes.rank(1)
        first = shared / f"best-{lost}.last.pt"  # renamed last of a member's files
        deadline = time.monotonic() + 240
        while not first.exists():
            assert time.monotonic() < deadline and nodes.procs[1].poll() is None, nodes.text(1)
            time.sleep(0.01)
        tree = nodes.tree(1)
        for pid in tree:
            os.kill(pid, signal.SIGSTOP)
        assert nodes.wait(0, timeout=180) != 0  # the lost-rank wait is 10 s here
        survivor = nodes.text(0)
        errors = [line for line in survivor.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and f"rank {lost} of 2 has been silent for 10 s" in errors[0]
        assert "run the same command again" in errors[0]
        assert "Traceback" not in survivor.split(errors[0])[0]  # (torchrun's own report follows)
        for pid in tree:
            os.kill(pid, signal.SIGKILL)
    saved = {
        k: (path.stat().st_ino, path.stat().st_mtime_ns)
        for k in range(4)
        if (path := shared / f"best-{k}.last.pt").exists()
    }
    for k in saved:  # whatever a killed rank left is whole
        assert read_payload(shared / f"best-{k}.pt")["meta"]["seed"] == k
    assert lost in saved and lost + 2 not in saved  # its second member died with it

    logs = tmp_path / "again"
    logs.mkdir()
    with two_nodes(sample_processed_dir, shared, logs) as nodes:
        assert [nodes.wait(0), nodes.wait(1)] == [0, 0], nodes.text(0) + nodes.text(1)
        runs = _members(nodes.text(0)) | _members(nodes.text(1))
        assert sorted(runs) == [1, 2, 3, 4]
        assert {k - 1 for k, kept in runs.items() if kept} == set(saved)
        assert sum(len(_oob(nodes.text(node))) for node in (0, 1)) == 1
        assert _oob(nodes.text(0) + nodes.text(1)) == [one_process[1]]
    for k, stamp in saved.items():  # kept: the very same files
        path = shared / f"best-{k}.last.pt"
        assert (path.stat().st_ino, path.stat().st_mtime_ns) == stamp
    _same_members(shared, one_process[0])
    assert not list(shared.glob(".*.tmp"))
