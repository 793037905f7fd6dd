"""Extra training digits with soft targets, and fold-honest pseudo-labels: the test digits a
member trains on are labelled only by first-round members that never saw its held-out fold."""

import numpy as np
import pytest
import torch

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import expand_checkpoints
from pipeline.data import datasets, extra
from pipeline.data.datasets import TensorDigits
from pipeline.experiments.pseudo import pseudo_label
from pipeline.inference.predictor import ensemble_probabilities, load_for_inference
from pipeline.training.checkpoints import load_checkpoint, read_payload, save_checkpoint
from pipeline.training.recipes import best_members, recipe_config
from pipeline.training.run_state import resume_payload
from pipeline.training.train import train

from conftest import assert_one_line_error, invoke


def _cfg(**changes):
    settings = dict(model="cnn", epochs=1, batch_size=64, device="cpu", max_steps=3)
    return recipe_config("fast", **(settings | changes))


def _soft_file(processed_dir, path, n=100, seed=0):
    """The first n test digits with random probability rows: (path, digest)."""
    images = datasets.load_split(processed_dir, "test").images[:n].numpy()
    targets = torch.rand(n, 10, generator=torch.Generator().manual_seed(seed)).softmax(1)
    return path, extra.save_extra(images, targets.numpy(), path)


def _weights(path):
    return load_checkpoint(path).model.state_dict()


def test_extra_digits_join_training_only_with_their_targets_and_repeat(
    small_processed_dir, tmp_path, monkeypatch
):
    path, sha = _soft_file(small_processed_dir, tmp_path / "extra.npz")
    cfg = _cfg(augment=True, extra=str(path), extra_sha256=sha)
    seen = []
    original = TensorDigits.get_batch

    def spy(self, indices):
        images, labels = original(self, indices)
        seen.append((len(self), None if labels is None else labels.dtype))
        return images, labels

    monkeypatch.setattr(TensorDigits, "get_batch", spy)
    a = train(cfg, small_processed_dir, tmp_path / "a.pt", progress=False)
    monkeypatch.undo()
    train_rows = [n for n, dtype in seen if dtype == torch.float32]
    assert set(train_rows) == {720 + 100} and len(train_rows) == 3  # every batch: soft targets
    assert {n for n, dtype in seen if dtype == torch.int64} == {80}  # validation: labels only
    assert a.history[-1]["val_accuracy"] == a.best_accuracy
    b = train(cfg, small_processed_dir, tmp_path / "b.pt", progress=False)
    wa, wb = _weights(a.checkpoint), _weights(b.checkpoint)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed, same model


def test_one_hot_targets_train_as_the_labels_do(small_processed_dir, tmp_path):
    """No extra digits: probability rows (one-hot, label smoothing on top) give the loss of the
    class labels, so the weights match a run without the option to float precision."""
    images = np.zeros((0, 28, 28), np.uint8)
    path = tmp_path / "none.npz"
    sha = extra.save_extra(images, np.zeros((0, 10), np.float32), path)
    soft_cfg = _cfg(extra=str(path), extra_sha256=sha)
    soft = train(soft_cfg, small_processed_dir, tmp_path / "s.pt", progress=False)
    hard = train(_cfg(), small_processed_dir, tmp_path / "h.pt", progress=False)
    ws, wh = _weights(soft.checkpoint), _weights(hard.checkpoint)
    assert all(torch.allclose(ws[k].float(), wh[k].float(), atol=1e-4) for k in ws)


def test_another_extra_file_retrains_and_is_refused_by_a_resume(small_processed_dir, tmp_path):
    path, sha = _soft_file(small_processed_dir, tmp_path / "extra.npz")
    out = tmp_path / "m.pt"
    cfg = _cfg(extra=str(path), extra_sha256=sha)
    train(cfg, small_processed_dir, out, progress=False)
    assert train(cfg, small_processed_dir, out, progress=False).skipped
    _, other = _soft_file(small_processed_dir, path, seed=1)  # the same path, other targets
    assert other != sha
    fingerprint = read_payload(out)["meta"]["data_fingerprint"]
    other_cfg = _cfg(extra=str(path), extra_sha256=other)
    with pytest.raises(PipelineError, match="extra_sha256"):
        resume_payload(config.last_checkpoint_path(out), other_cfg, fingerprint)
    with pytest.raises(PipelineError, match=f"{path}: extra training digits: not the file"):
        train(cfg, small_processed_dir, out, progress=False, force=True)  # the old digest
    assert not train(other_cfg, small_processed_dir, out, progress=False).skipped


BAD_FILES = {
    "keys": dict(images=np.zeros((2, 28, 28), np.uint8), labels=np.zeros(2, np.int64)),
    "dtype": dict(images=np.zeros((2, 28, 28), np.float32), targets=np.eye(10)[:2]),
    "shape": dict(images=np.zeros((2, 28, 27), np.uint8), targets=np.eye(10, dtype="f4")[:2]),
    "sums": dict(images=np.zeros((2, 28, 28), np.uint8), targets=np.full((2, 10), 0.2, "f4")),
    "nan": dict(images=np.zeros((1, 28, 28), np.uint8), targets=np.full((1, 10), np.nan, "f4")),
    "objects": dict(images=np.array([None, 1], dtype=object), targets=np.eye(10)[:2]),
}


@pytest.mark.parametrize("bad", BAD_FILES)
def test_a_bad_extra_file_is_one_line_naming_it(bad, tmp_path, monkeypatch):
    path = tmp_path / f"{bad}.npz"
    np.savez(path, **BAD_FILES[bad])
    with pytest.raises(PipelineError, match=f"^{path}: extra training digits: ") as error:
        extra.load_extra(path, "0" * 64)
    assert "\n" not in str(error.value)
    monkeypatch.setattr(extra, "MAX_EXTRA", 1)
    images, targets = np.zeros((2, 1, 28, 28), np.uint8), np.eye(10, dtype="f4")[:2]
    sha = extra.save_extra(images, targets, path)
    with pytest.raises(PipelineError, match="holds 2 digits, more than 1"):
        extra.load_extra(path, sha)


@pytest.fixture(scope="module")
def round1(small_processed_dir, tmp_path_factory):
    """Three tiny bagged members of `best`: holding out folds 0, 1 and 0 (members 0, 1, 5)."""
    folder = tmp_path_factory.mktemp("round1")
    configs = best_members(6, device="cpu", epochs=1, max_steps=3, batch_size=64)
    paths = []
    for k in (0, 1, 5):
        paths.append(folder / f"best-{k}.pt")
        train(configs[k], small_processed_dir, paths[-1], progress=False)
    return paths


def _constant(path, out, digit=3):
    """A copy of `path`'s member (its bag and all) whose net answers `digit` for every image."""
    saved = load_checkpoint(path)
    head = saved.model.classifier[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.nn.functional.one_hot(torch.tensor(digit), 10) * 20.0)
    save_checkpoint(out, saved.model, saved.meta)
    return out


def _read(path):
    with np.load(path, allow_pickle=False) as archive:
        return archive["images"], archive["targets"]


def test_fold_k_is_labelled_by_its_own_teachers_only(round1, small_processed_dir, tmp_path):
    m0, m1, m5 = round1
    test = TensorDigits.load(small_processed_dir, "test")
    probs = ensemble_probabilities(load_for_inference([m0, m5], torch.device("cpu")), test)
    top, label = probs.max(1)
    threshold = float(top.median())  # tiny members: about half their digits are kept
    keep = top >= threshold
    report = pseudo_label(round1, small_processed_dir, tmp_path / "a", threshold, "cpu")
    assert [(r.fold, r.teachers) for r in report] == [(0, [m0, m5]), (1, [m1])]
    images, targets = _read(report[0].path)
    assert 0 < keep.sum() < len(test) and report[0].kept == int(keep.sum())
    assert np.array_equal(images, test.images[keep].numpy())
    assert np.array_equal(targets.argmax(1), label[keep].numpy()) and (targets.max(1) == 1).all()
    assert report[0].mean_top == pytest.approx(float(top[keep].mean()))
    extra.load_extra(report[0].path, report[0].sha256)  # round 2 reads it back as written

    # Another fold's teacher swapped for a net that always says 3: fold 0's labels stay.
    swapped = [m0, _constant(m1, tmp_path / "best-1.pt"), m5]
    again = pseudo_label(swapped, small_processed_dir, tmp_path / "b", threshold, "cpu")
    assert again[0].sha256 == report[0].sha256
    kept_again, targets_again = _read(again[0].path)
    assert np.array_equal(kept_again, images) and np.array_equal(targets_again, targets)
    fold1 = _read(again[1].path)[1]
    assert again[1].kept == len(test) and (fold1.argmax(1) == 3).all()
    assert again[1].sha256 != report[1].sha256
    # ...and a teacher of fold 0 swapped changes fold 0's: the rule is not vacuous.
    swapped = [_constant(m0, tmp_path / "best-0.pt", 7), m1, m5]
    third = pseudo_label(swapped, small_processed_dir, tmp_path / "c", threshold, "cpu")
    assert third[0].sha256 != report[0].sha256 and third[1].sha256 == report[1].sha256


def test_teachers_must_be_bagged(round1, tiny_run_files, small_processed_dir, tmp_path):
    with pytest.raises(PipelineError, match="not a bagged member"):
        pseudo_label([round1[0], tiny_run_files], small_processed_dir, tmp_path, 0.9, "cpu")
    assert not list(tmp_path.iterdir())  # nothing written
    result = invoke("ensemble", "--recipe", "fast", "--pseudo-label", "--device", "cpu")
    assert_one_line_error(result, "--pseudo-label needs bagged members")


@pytest.mark.slow
def test_ensemble_pseudo_label_trains_two_rounds(small_processed_dir, tmp_path):
    result = invoke(
        "ensemble", "--recipe", "best", "--members", 2, "--epochs", 1, "--max-steps", 2,
        "--batch-size", 64, "--device", "cpu", "--jobs", 1, "--processed-dir",
        small_processed_dir, "--out-dir", tmp_path, "--pseudo-label", "--pseudo-threshold",
        0.2, "--no-track",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    lines = lines[next(i for i, line in enumerate(lines) if line.startswith("round 1: ")) :]
    assert lines[0].startswith("round 1: ensemble: 2 members in") and "round1" in lines[0]
    assert "out-of-bag accuracy" in lines[0] and "out-of-bag accuracy" in lines[-1]
    assert lines[1].startswith("pseudo-labels for fold 0: ") and "of 800 test digits" in lines[1]
    assert lines[2].startswith("pseudo-labels for fold 1: ") and "best-1.pt" in lines[2]
    assert lines[-1].startswith("round 2: ensemble: 2 members in")
    final = expand_checkpoints([config.members_glob("best", tmp_path)])
    assert [p.name for p in final] == ["best-0.pt", "best-1.pt"]  # round 1's are not picked
    for k in range(2):
        meta = read_payload(tmp_path / f"best-{k}.pt")["meta"]["train_config"]
        assert meta["extra"] == str(config.pseudo_labels_path(tmp_path / "round1", k))
        first = read_payload(tmp_path / "round1" / f"best-{k}.pt")["meta"]["train_config"]
        assert first["extra"] is None and first["fold"] == meta["fold"] == k
