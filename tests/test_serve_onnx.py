"""`pipeline serve` on exported `.onnx` graphs: the same page and API, and torch never loaded."""

import io
import json
import signal
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.datasets import load_split
from pipeline.inference.onnx_runtime import load_onnx

from conftest import require

require("uvicorn")
require("onnxruntime")


def _post(url: str, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(url + "api/predict", body, {"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def _multipart(png: bytes) -> tuple[bytes, str]:
    boundary = "digitboundary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="d.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_serve_on_onnx_answers_without_importing_torch(
    linear_onnx, sample_processed_dir, tmp_path, no_torch, sigint_as_at_a_terminal
):
    graph = linear_onnx(tmp_path / "linear.onnx")
    code = no_torch + (
        "from pipeline.__main__ import main\n"
        "sys.argv = ['pipeline', 'serve', '--port', '0', '--checkpoint', sys.argv[1]]\n"
        "main()\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(graph)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=sigint_as_at_a_terminal,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("serve: http://127.0.0.1:"), line + child.stdout.read()
        assert "(linear.onnx on cpu (onnxruntime))" in line
        url = line.split()[1]
        val = load_split(sample_processed_dir, "val")
        digits = val.images[:20].numpy()
        expected = load_onnx(graph).predict(digits)
        for digit, probs in zip(digits, expected, strict=True):
            status, answer = _post(
                url, json.dumps({"pixels": digit.ravel().tolist()}).encode(), "application/json"
            )
            assert status == 200 and answer["label"] == int(probs.argmax())
            assert np.allclose(answer["probabilities"], probs, atol=1e-6)
        # A photo-like upload: dark ink on white, larger, goes through digitize (PIL, NumPy).
        ink = 255 - np.kron(digits[0, 0], np.ones((4, 4), np.uint8))
        png = io.BytesIO()
        Image.fromarray(ink).save(png, format="PNG")
        status, answer = _post(url, *_multipart(png.getvalue()))
        assert status == 200 and len(answer["input"]) == 784
        status, answer = _post(url, b'{"pixels": [1, 2]}', "application/json")
        assert status == 422 and answer["detail"].startswith("pixels must hold exactly 784")
        with urllib.request.urlopen(url + "api/model", timeout=30) as response:
            info = json.loads(response.read())
        assert info["device"] == "cpu (onnxruntime)"
        assert info["checkpoints"] == [
            {
                "name": "linear.onnx",
                "path": "linear.onnx",  # never an absolute path
                "model": "linear",
                "val_accuracy": 0.85,
                "temperature": 1.0,
            }
        ]
        with urllib.request.urlopen(url, timeout=30) as response:
            assert b"<canvas" in response.read()
    finally:
        child.send_signal(signal.SIGINT)  # as Ctrl-C does
        output, _ = child.communicate(timeout=30)
    assert child.returncode == 0, output  # Ctrl-C is how a server stops: a normal stop
    assert "serve: stopped" in output and "Traceback" not in output and "error" not in output
    assert "torch-check: attempts=[] loaded=False" in output, output


@pytest.mark.parametrize("kind", ["damaged", "foreign", "mixed"])
def test_serve_refuses_bad_graphs_in_one_line(kind, linear_onnx, tmp_path, monkeypatch):
    """In process (the one-line contract is the CLI's, as in test_cli); a refusal that failed
    would get as far as binding a port, which raises here instead of serving forever."""
    from pipeline.serve import server

    def never_bind(host, port):
        raise AssertionError(f"serve went on to bind {host}:{port} with a bad graph")

    monkeypatch.setattr(server, "bind", never_bind)
    graph = linear_onnx(tmp_path / "graph.onnx", **({"props": None} if kind == "foreign" else {}))
    if kind == "damaged":
        graph.write_bytes(graph.read_bytes()[:200])
    args = ["--checkpoint", str(graph)]
    if kind == "mixed":
        args += ["--checkpoint", str(tmp_path / "model.pt")]
    done = CliRunner().invoke(app, ["serve", "--port", "0", *args])
    assert done.exit_code == 1 and done.stdout == "", done.output
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    expected = {
        "damaged": f"{graph}: not a readable ONNX model",
        "foreign": f"{graph}: not an ONNX file written by `pipeline export`",
        "mixed": "give either checkpoints (.pt) or exported graphs (.onnx), not both",
    }[kind]
    assert expected in lines[0]
