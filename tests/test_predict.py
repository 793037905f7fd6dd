"""Prediction, ensembling, test-time augmentation and the submission rules."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.data.datasets import TensorDigits
from pipeline.inference.predictor import (
    LoadedModel,
    ensemble_probabilities,
    predict_logits,
    tta_views,
)
from pipeline.inference.submission import check_columns, read_submission, write_submission


class FixedLogits(nn.Module):
    """Returns the same logits for every image: makes averaging checkable by hand."""

    def __init__(self, logits):
        super().__init__()
        self.logits = nn.Parameter(torch.tensor(logits), requires_grad=False)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def _data(n=6):
    return TensorDigits(torch.zeros(n, 1, 28, 28, dtype=torch.uint8), torch.zeros(n).long())


def test_ensemble_averages_calibrated_probabilities_not_logits():
    a = FixedLogits([4.0, 0.0, 0.0] + [-9.0] * 7)
    b = FixedLogits([0.0, 1.0, 0.0] + [-9.0] * 7)
    members = [LoadedModel(Path(f"{name}.pt"), m, {}) for name, m in (("a", a), ("b", b))]
    probs = ensemble_probabilities(members, _data(), batch_size=4)
    expected = (a.logits.softmax(0) + b.logits.softmax(0)) / 2
    assert probs.shape == (6, 10) and torch.allclose(probs, expected.expand(6, -1))
    assert torch.allclose(probs.sum(1), torch.ones(6))
    # Each member's own temperature divides its logits before the mean: here it flips the vote
    # (raw softmax says 0, calibrated says 1).
    hot = LoadedModel(Path("a.pt"), a, {"temperature": 8.0})
    cold = LoadedModel(Path("b.pt"), b, {"temperature": 0.25})
    probs = ensemble_probabilities([hot, cold], _data(), batch_size=4)
    expected = ((a.logits / 8.0).softmax(0) + (b.logits / 0.25).softmax(0)) / 2
    assert torch.allclose(probs, expected.expand(6, -1))
    assert expected.argmax() == 1 != ((a.logits.softmax(0) + b.logits.softmax(0)) / 2).argmax()


def test_tta_views_are_the_image_and_one_pixel_shifts():
    x = torch.zeros(2, 1, 28, 28)
    x[:, :, 14, 14] = 1.0
    views = tta_views(x)
    assert len(views) == 5 and torch.allclose(views[0], x, atol=1e-6)
    for view in views[1:]:
        moved = (view[0, 0] > 0.5).nonzero().tolist()
        assert len(moved) == 1 and sum(abs(a - 14) for a in moved[0]) == 1


def test_tta_logits_are_the_mean_over_views(processed_dir):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).eval()
    data = TensorDigits.load(processed_dir, "val")
    plain = predict_logits(model, data)
    with_tta = predict_logits(model, data, tta=True)
    assert with_tta.shape == plain.shape == (400, 10)
    assert not torch.allclose(plain, with_tta)


@pytest.mark.parametrize(
    "ids, labels, problem",
    [
        ([1, 2, 3, 4], [3, 1, 4, 1], "has 4 rows, Kaggle expects 5"),
        ([0, 1, 2, 3, 4], [3, 1, 4, 1, 5], "ImageId must be 1..5"),
        ([1, 1, 2, 3, 4], [3, 1, 4, 1, 5], "ImageId must be 1..5"),
        ([1, 2, 3, 4, 5], [3, 1, 10, 1, 5], "Label must be a digit"),
        ([1, 2, 3, 4, 5], [3.0, 1.5, 4.0, 1.0, 5.0], "Label must hold integers"),
        ([1, 2, 3, 4, 5], [3, None, 4, 1, 5], "Label must hold integers"),
        ([1.0, 2, 3, 4, 5], [3, 1, 4, 1, 5], "ImageId must hold integers"),
    ],
)
def test_submission_rules(ids, labels, problem):
    with pytest.raises(PipelineError, match=problem):
        check_columns(np.array(ids), np.array(labels), 5, "sub.csv")


def test_written_submission_reads_back_valid_and_ordered(tmp_path):
    path = tmp_path / "sub.csv"
    write_submission(torch.tensor([7, 2, 1]), torch.tensor([1, 2, 3]), path)
    assert path.read_text().splitlines() == ["ImageId,Label", "1,7", "2,2", "3,1"]
    assert read_submission(path, n_rows=3)["Label"].tolist() == [7, 2, 1]
    with pytest.raises(PipelineError, match="has 3 rows, Kaggle expects 28000"):
        read_submission(path)
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]  # no temp file left


def test_unreadable_submissions_are_refused(tmp_path):
    with pytest.raises(PipelineError, match="no such file"):
        read_submission(tmp_path / "absent.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(PipelineError, match="not a readable CSV"):
        read_submission(tmp_path / "empty.csv")
    assert config.KAGGLE_TEST_ROWS == 28_000


def _kaggle_rows(n=5):
    return ["ImageId,Label", *(f"{i},{i % 10}" for i in range(1, n + 1))]


@pytest.mark.parametrize(
    "lines, problem",
    [
        (["ImageId,Label", *(f"7,{i},{i % 10}" for i in range(1, 6))], "line 2 has 3 fields"),
        (_kaggle_rows()[:3] + ["3,4,"] + _kaggle_rows()[4:], "line 4 has 3 fields"),
        (_kaggle_rows()[:2] + ["2"] + _kaggle_rows()[3:], "line 3 has 1 fields"),
        (_kaggle_rows()[:2] + ["2,x"] + _kaggle_rows()[3:], "line 3: '2,x' is not two integers"),
        (_kaggle_rows()[:2] + ["2,1.0"] + _kaggle_rows()[3:], "is not two integers"),
        (["imageid,label"] + _kaggle_rows()[1:], "header must be ImageId,Label"),
        (["ImageId,label"] + _kaggle_rows()[1:], "header must be ImageId,Label"),
        (["ImageId,Label,extra"] + [f"{r},1" for r in _kaggle_rows()[1:]], "header must be"),
    ],
)
def test_submissions_are_read_strictly(tmp_path, lines, problem):
    """pandas would take a leading extra field as the index and pass `7,1,0` rows."""
    path = tmp_path / "sub.csv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(PipelineError, match=problem):
        read_submission(path, n_rows=5)


def test_a_strictly_valid_submission_reads_back(tmp_path):
    path = tmp_path / "sub.csv"
    path.write_text("\n".join(_kaggle_rows()) + "\n")
    frame = read_submission(path, n_rows=5)
    assert frame["ImageId"].tolist() == [1, 2, 3, 4, 5] and frame["Label"].tolist() == [
        1,
        2,
        3,
        4,
        5,
    ]


@pytest.mark.parametrize(
    "name", ["model.pt", "model.onnx", "processed/meta.json", "processed/x.csv"]
)
def test_predict_never_writes_over_an_input_nor_anything_but_a_csv(
    name, processed_dir, linear_onnx, tmp_path
):
    """Checked before any work: the model named here does not even exist."""
    from conftest import assert_one_line_error, invoke

    before = {p: p.read_bytes() for p in processed_dir.iterdir() if p.is_file()}
    out = tmp_path / name
    model = tmp_path / "model.onnx" if name == "model.onnx" else tmp_path / "model.pt"
    if name == "model.onnx":
        graph = linear_onnx(model).read_bytes()
    args = ["--checkpoint", model, "--processed-dir", processed_dir, "--out", out]
    result = invoke("predict", *args)
    problem = "would replace an input" if name.endswith(".csv") else "a submission is a .csv"
    assert_one_line_error(result, f"--out {out}", problem)
    assert {p: p.read_bytes() for p in processed_dir.iterdir() if p.is_file()} == before
    assert not (processed_dir / "x.csv").exists() and not (tmp_path / "model.pt").exists()
    assert name != "model.onnx" or model.read_bytes() == graph


def test_a_folder_as_checkpoint_says_it_is_a_folder(processed_dir, tmp_path):
    from conftest import assert_one_line_error, invoke

    result = invoke("predict", "--checkpoint", tmp_path, "--processed-dir", processed_dir)
    assert_one_line_error(result, f"{tmp_path}: is a folder")
    result = invoke("evaluate", "--checkpoint", tmp_path, "--processed-dir", processed_dir)
    assert_one_line_error(result, f"{tmp_path}: is a folder")
