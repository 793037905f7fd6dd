"""The JSON API through FastAPI's TestClient, and `serve` as a real process.

Right labels for real validation digits in every input form; every bad request answers 4xx
with one sentence and the server keeps answering; a seeded fuzz run never gets a 5xx.
"""

import functools
import io
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.common.errors import PipelineError
from pipeline.data.datasets import TensorDigits

from conftest import require


@pytest.fixture(scope="module")
def models(fast_checkpoint):
    require("fastapi")
    from pipeline.serve.server import load_served

    torch.set_num_threads(1)
    return load_served([fast_checkpoint], "cpu")


@pytest.fixture(scope="module")
def client(models):
    require("httpx2")
    from fastapi.testclient import TestClient

    from pipeline.serve.app import create_app

    app = create_app(models)  # bound to loopback: the Host must be a loopback name
    with TestClient(
        app, base_url="http://127.0.0.1", raise_server_exceptions=False
    ) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def known_digits(models, sample_processed_dir):
    """30 validation digits the model labels right as they are: (uint8 [30,28,28], labels)."""
    val = TensorDigits.load(sample_processed_dir, "val")
    digits, labels = val.images[:60, 0].numpy(), val.labels[:60].numpy()
    right = models.predict(digits[:, None]).argmax(1) == labels
    return digits[right][:30], labels[right][:30]


def _encoded(array: np.ndarray, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def _one_sentence(response) -> str:
    detail = response.json()["detail"]
    assert isinstance(detail, str) and re.fullmatch(r"[A-Za-z\"].{5,200}\.", detail), detail
    assert "\n" not in detail and ". " not in detail and "Traceback" not in detail, detail
    return detail


# ----------------------------------------------------------------------------- answers


def test_pixels_are_predicted_as_is(client, models, known_digits):
    digits, labels = known_digits
    expected = models.predict(digits[:, None])
    for digit, label, probs in zip(digits, labels, expected, strict=True):
        response = client.post("/api/predict", json={"pixels": digit.ravel().tolist()})
        assert response.status_code == 200
        answer = response.json()
        assert answer["label"] == label
        assert answer["input"] == digit.ravel().tolist()  # no preprocessing on pixels
        assert np.allclose(answer["probabilities"], probs, atol=1e-6)
        assert abs(sum(answer["probabilities"]) - 1) < 1e-5


@pytest.mark.parametrize("form", ["png", "jpeg", "png-large-dark-on-light", "jpeg-photo"])
def test_uploads_get_the_right_labels(client, known_digits, form):
    digits, labels = known_digits
    wrong = 0
    for digit, label in zip(digits, labels, strict=True):
        image = digit
        if form in ("png-large-dark-on-light", "jpeg-photo"):  # 8x larger, ink on paper
            image = 255 - np.asarray(Image.fromarray(digit).resize((224, 224), Image.BICUBIC))
        if form == "jpeg-photo":  # off-centre on a larger grey sheet
            sheet = np.full((480, 360), 210, np.uint8)
            sheet[200:424, 40:264] = np.minimum(image, 210)
            image = sheet
        fmt = "PNG" if form.startswith("png") else "JPEG"
        files = {"file": (f"digit.{fmt.lower()}", _encoded(image, fmt), f"image/{fmt.lower()}")}
        response = client.post("/api/predict", files=files)
        assert response.status_code == 200, response.text
        answer = response.json()
        assert len(answer["input"]) == 784 and max(answer["input"]) == 255
        wrong += answer["label"] != label
    assert wrong <= 1, f"{wrong} of {len(labels)} uploads misread"


def test_health_model_page_and_docs(client, fast_checkpoint):
    assert client.get("/api/health").json() == {"status": "ok"}
    info = client.get("/api/model").json()
    meta = json.loads(fast_checkpoint.with_suffix(".json").read_text())
    assert info["checkpoints"] == [
        {
            "name": "fastnet.pt",
            "path": "fastnet.pt",  # outside the project: the name alone
            "model": "fastnet",
            "val_accuracy": pytest.approx(meta["val_accuracy"]),
            "temperature": pytest.approx(meta["temperature"]),
        }
    ]
    page = client.get("/")
    assert page.status_code == 200 and "<canvas" in page.text and 'id="upload"' in page.text
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/api/predict"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"}
    assert client.get("/docs").status_code == 200  # FastAPI's Swagger UI page


def test_served_probabilities_are_the_checkpoints_calibrated_ones(
    models, fast_checkpoint, known_digits
):
    """softmax(logits / the stored temperature): clean digits read near certain, not ~92%."""
    from pipeline.inference.predictor import load_for_inference, predict_logits
    from pipeline.training.calibration import calibrated_probabilities

    loaded = load_for_inference([fast_checkpoint], torch.device("cpu"))[0]
    temperature = loaded.meta["temperature"]
    digits, labels = known_digits
    logits = predict_logits(loaded.model, TensorDigits(torch.from_numpy(digits[:, None])))
    served = models.predict(digits[:, None])
    assert np.allclose(served, calibrated_probabilities(logits, temperature).numpy(), atol=1e-5)
    assert (served.argmax(1) == labels).all()
    raw_top = logits.softmax(1).max(1).values.numpy()
    assert np.median(served.max(1)) > 0.99 > np.median(raw_top)


def test_an_ensemble_from_a_glob(fast_checkpoint, known_digits, models, tmp_path):
    from pipeline.serve.server import load_served

    for member in range(2):  # two copies: their mean must equal the single model
        (tmp_path / f"member-{member}.pt").write_bytes(fast_checkpoint.read_bytes())
    ensemble = load_served([tmp_path / "member-*.pt"], "cpu")
    assert [member.path.name for member in ensemble.members] == ["member-0.pt", "member-1.pt"]
    digits, _ = known_digits
    assert np.allclose(
        ensemble.predict(digits[:, None]), models.predict(digits[:, None]), atol=1e-6
    )


def test_the_page_fetches_nothing_from_outside(client):
    for path in ("/", "/static/app.js", "/static/style.css"):
        text = client.get(path).text
        assert "://" not in text and not re.search(r"""(src|href|url)\(?=?["']?//""", text), path


# ------------------------------------------------------------------------ bad requests

PIXELS = [0] * 784
JSON = {"content-type": "application/json"}


@functools.cache
def _bomb(side: int) -> bytes:
    """A small PNG that decodes to side x side pixels (6000: 4 KB -> 36 MP, our limit refuses
    it; 20000: 48 KB -> 400 MP, past Pillow's own DecompressionBombError)."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, "PNG")
    return buffer.getvalue()


def _noise_png() -> bytes:  # about 4 KB, so a cut at 2 KB loses half the pixel data
    return _png(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8))


def _png(array: np.ndarray) -> bytes:
    return _encoded(array, "PNG")


BAD_REQUESTS = {  # name -> keyword arguments of client.post, built when the test runs
    "not JSON": lambda: dict(content=b"{pixels: [1, 2", headers=JSON),
    "text, not JSON": lambda: dict(content=b"hello", headers={"content-type": "text/plain"}),
    "URL-encoded form": lambda: dict(data={"pixels": "1,2,3"}),
    "JSON array": lambda: dict(json=PIXELS),
    "JSON string": lambda: dict(json="pixels"),
    "wrong field": lambda: dict(json={"pixel": PIXELS}),
    "extra field": lambda: dict(json={"pixels": PIXELS, "label": 3}),
    "pixels not a list": lambda: dict(json={"pixels": "0" * 784}),
    "too few pixels": lambda: dict(json={"pixels": PIXELS[:783]}),
    "too many pixels": lambda: dict(json={"pixels": PIXELS + [0]}),
    "28x28 nested": lambda: dict(json={"pixels": [PIXELS[:28]] * 28}),
    "pixel over 255": lambda: dict(json={"pixels": PIXELS[:5] + [256] + PIXELS[6:]}),
    "negative pixel": lambda: dict(json={"pixels": [-1] + PIXELS[1:]}),
    "fractional pixel": lambda: dict(json={"pixels": [0.5] + PIXELS[1:]}),
    "5,000-digit pixel": lambda: dict(
        content=b'{"pixels": [' + b"9" * 5000 + b", 0" * 783 + b"]}", headers=JSON
    ),
    "string pixel": lambda: dict(json={"pixels": ["7"] + PIXELS[1:]}),
    "boolean pixel": lambda: dict(json={"pixels": [True] + PIXELS[1:]}),
    "NaN": lambda: dict(content=b'{"pixels": [NaN' + b", 0" * 783 + b"]}", headers=JSON),
    "Infinity": lambda: dict(content=b'{"pixels": [Infinity' + b", 0" * 783 + b"]}", headers=JSON),
    "empty body": lambda: dict(content=b""),
    "empty JSON body": lambda: dict(content=b"", headers=JSON),
    "non-image upload": lambda: dict(files={"file": ("digit.png", b"just text", "image/png")}),
    "GIF upload": lambda: dict(files={"file": ("d.gif", b"GIF89a" + bytes(40), "image/gif")}),
    "truncated PNG": lambda: dict(files={"file": ("digit.png", _noise_png()[:2000], "image/png")}),
    "decompression bomb": lambda: dict(files={"file": ("bomb.png", _bomb(6_000), "image/png")}),
    "huge decompression bomb": lambda: dict(files={"file": ("b.png", _bomb(20_000), "image/png")}),
    "blank image": lambda: dict(files={"file": ("blank.png", _png(np.zeros((64, 64), np.uint8)))}),
    "empty upload": lambda: dict(files={"file": ("digit.png", b"", "image/png")}),
    "upload in the wrong field": lambda: dict(
        files={"image": ("d.png", _png(np.eye(9, dtype=np.uint8)), "")}
    ),
    "text in the file field": lambda: dict(files={"file": (None, "not a file")}),
    "two files": lambda: dict(files=[("file", ("a.png", b"1")), ("file", ("b.png", b"2"))]),
    "multipart without boundary": lambda: dict(
        content=b"--x\r\n\r\n", headers={"content-type": "multipart/form-data"}
    ),
    "broken multipart": lambda: dict(
        content=b"--b\r\nContent-Disposition: form-data\r\n\r\nxx",
        headers={"content-type": "multipart/form-data; boundary=b"},
    ),
    "body over the limit": lambda: dict(content=b"0" * (10 * 1024 * 1024 + 1)),
    "over the limit, chunked": lambda: dict(content=iter([b"0" * (1024 * 1024)] * 11)),
}


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_bad_requests_get_one_sentence_4xx(client, name):
    response = client.post("/api/predict", **BAD_REQUESTS[name]())
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    print(f"{name}: {response.status_code} {_one_sentence(response)}")
    assert client.get("/api/health").status_code == 200


def test_bad_request_statuses(client):
    def status(name):
        return client.post("/api/predict", **BAD_REQUESTS[name]()).status_code

    assert status("not JSON") == 400 and status("empty body") == 400
    assert status("text, not JSON") == 415
    assert status("body over the limit") == 413 and status("over the limit, chunked") == 413
    assert status("pixel over 255") == 422 and status("decompression bomb") == 422
    huge = client.post("/api/predict", **BAD_REQUESTS["5,000-digit pixel"]())
    assert huge.status_code == 422 and "far outside 0-255" in _one_sentence(huge)
    assert status("huge decompression bomb") == 422 and status("truncated PNG") == 422
    assert client.get("/nowhere").status_code == 404
    assert client.put("/api/predict").status_code == 405
    _one_sentence(client.get("/nowhere"))
    _one_sentence(client.delete("/api/health"))


def test_fuzzed_bodies_never_get_a_5xx(client):
    rng = np.random.default_rng(13)
    valid = json.dumps({"pixels": PIXELS}).encode()
    png = _encoded(np.eye(40, dtype=np.uint8) * 255, "PNG")
    json_values = [None, True, 1, -1, 1.5, "x", [], {}, [1, 2], {"pixels": None}, 1e309, "\u00e9"]
    statuses = []
    for i in range(300):
        kind = i % 6
        headers = {"content-type": "application/json"}
        if kind == 0:  # random bytes
            body = rng.bytes(int(rng.integers(0, 3000)))
        elif kind == 1:  # a valid body with bytes flipped, cut or inserted
            body = bytearray(valid)
            for _ in range(int(rng.integers(1, 6))):
                at = int(rng.integers(0, len(body)))
                body[at] = int(rng.integers(0, 256))
            body = bytes(body[: int(rng.integers(1, len(body) + 1))])
        elif kind == 2:  # JSON of the wrong shape
            pixels = [json_values[int(rng.integers(0, len(json_values)))] for _ in range(784)]
            choice = [pixels, pixels[: int(rng.integers(0, 784))], {"pixels": pixels}]
            body = json.dumps(choice[int(rng.integers(0, 3))]).encode()
        elif kind == 3:  # integers, some out of range
            pixels = rng.integers(-300, 600, size=int(rng.choice([783, 784, 785]))).tolist()
            body = json.dumps({"pixels": pixels}).encode()
        elif kind == 4:  # a PNG, damaged, in a multipart form
            damaged = bytearray(png)
            for _ in range(int(rng.integers(1, 20))):
                damaged[int(rng.integers(0, len(damaged)))] = int(rng.integers(0, 256))
            response = client.post("/api/predict", files={"file": ("x.png", bytes(damaged))})
            statuses.append(response.status_code)
            continue
        else:  # a random multipart-looking body under a random content type
            body = b"--b\r\n" + rng.bytes(int(rng.integers(0, 500)))
            headers = {
                "content-type": str(
                    rng.choice(
                        [
                            "multipart/form-data; boundary=b",
                            "multipart/form-data",
                            "image/png",
                            "application/octet-stream",
                        ]
                    )
                )
            }
        response = client.post("/api/predict", content=body, headers=headers)
        statuses.append(response.status_code)
        if response.status_code >= 400:
            _one_sentence(response)
    assert max(statuses) < 500, sorted(set(statuses))
    assert client.get("/api/health").status_code == 200
    print(f"fuzz: {len(statuses)} bodies, statuses {sorted(set(statuses))}")


def test_uploads_stay_in_memory(client, monkeypatch):
    """A 2 MB upload (over Starlette's 1 MB spool size) never rolls over to a temp file."""

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was written to disk")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", refuse)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    noise = np.random.default_rng(1).integers(0, 255, (900, 900, 3), dtype=np.uint8)
    data = _encoded(noise, "PNG")
    assert len(data) > 2 * 1024 * 1024
    response = client.post("/api/predict", files={"file": ("big.png", data, "image/png")})
    assert response.status_code in (200, 422), response.text


# -------------------------------------------------------------------- serve, for real


def test_serve_refuses_bad_checkpoints_and_busy_ports(tmp_path, fast_checkpoint):
    require("uvicorn")
    from pipeline.serve.server import serve

    with pytest.raises(PipelineError, match="no such checkpoint"):
        serve([tmp_path / "missing.pt"], port=0, device="cpu")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(PipelineError, match="not a readable checkpoint"):
        serve([tmp_path / "junk.pt"], port=0, device="cpu")
    with pytest.raises(PipelineError, match="no checkpoint matches"):
        serve([tmp_path / "none-*.pt"], port=0, device="cpu")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        with pytest.raises(PipelineError, match="cannot listen"):
            serve([fast_checkpoint], port=busy.getsockname()[1], device="cpu")


@pytest.mark.slow
def test_serve_answers_over_http_and_stops_on_ctrl_c(fast_checkpoint, sample_processed_dir):
    require("uvicorn")
    from pipeline.bench.serve_load import digit_bodies, expected_labels

    code = (
        "import sys; from pathlib import Path; from pipeline.serve.server import serve; "
        "serve([Path(sys.argv[1])], port=0, device='cpu')"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, str(fast_checkpoint)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = child.stdout.readline()
        assert line.startswith("serve: http://127.0.0.1:"), line
        url = line.split()[1]
        labels = expected_labels(url, digit_bodies(sample_processed_dir, 20))
        val = TensorDigits.load(sample_processed_dir, "val")
        assert np.mean(np.array(labels) == val.labels[:20].numpy()) >= 0.9
    finally:
        child.send_signal(signal.SIGINT)  # as Ctrl-C does
        output, _ = child.communicate(timeout=30)
    assert child.returncode == 0, output
    assert output.strip().endswith("serve: stopped") and "Traceback" not in output


@pytest.mark.slow
def test_load_test_is_bounded_and_counts_errors(fast_checkpoint, sample_processed_dir):
    require("uvicorn")
    from pipeline.bench.serve_load import run_load_test

    (result,) = run_load_test([fast_checkpoint], sample_processed_dir, requests=300, clients=4)
    assert result.requests == 300 and result.errors == 0 and len(result.latencies_ms) == 300
    assert 0 < result.percentile(50) <= result.percentile(99) and result.requests_per_second > 0
    print(result.summary())
