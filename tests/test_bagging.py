"""Bagging: folds, each member's bag and out-of-bag digits, and the out-of-bag vote."""

import pytest
import torch

from pipeline.common.errors import PipelineError
from pipeline.data import datasets, folds
from pipeline.data.folds import member_bag
from pipeline.data.processed import processed_fingerprint
from pipeline.experiments.bagging import OobEstimate, format_oob, oob_estimate, score_out_of_bag
from pipeline.training.recipes import best_members
from pipeline.training.train import train


def test_labelled_digits_are_train_csv_in_order_whatever_the_split(sample_raw_dir, tmp_path):
    from pipeline.data.prepare import prepare

    views = []
    for seed in (0, 1):
        prepare(sample_raw_dir, tmp_path / str(seed), seed=seed)
        views.append(folds.labelled_digits(tmp_path / str(seed)))
    first, second = views
    assert first.ids.tolist() == list(range(1, 4001))  # every row of train.csv, in order
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)
    fingerprints = {processed_fingerprint(tmp_path / str(seed), whole=True) for seed in (0, 1)}
    assert len(fingerprints) == 1  # a member's bag survives `prepare --seed`


def test_folds_are_stratified_and_seeded():
    labels = torch.arange(10).repeat_interleave(53)  # 530 digits, 53 of each class
    fold = folds.fold_of_each(labels, 5, seed=0)
    assert torch.equal(fold, folds.fold_of_each(labels, 5, seed=0))
    assert not torch.equal(fold, folds.fold_of_each(labels, 5, seed=1))
    for digit in range(10):
        per_fold = torch.bincount(fold[labels == digit], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1  # 53 = 11+11+11+10+10
    assert torch.bincount(fold).tolist() == [106] * 5


def test_bags_differ_and_every_digit_is_out_of_bag_for_members_over_folds():
    labels = torch.randint(0, 10, (400,), generator=torch.Generator().manual_seed(3))
    bags = [member_bag(labels, 4, k % 4, fold_seed=7) for k in range(8)]
    assert len({tuple(b.train.tolist()) for b in bags[:4]}) == 4  # four different bags
    held_out_count = torch.zeros(400, dtype=torch.int64)
    for bag in bags:
        assert not set(bag.train.tolist()) & set(bag.oob.tolist())
        assert sorted(bag.train.tolist() + bag.oob.tolist()) == list(range(400))
        assert abs(len(bag.oob) - 100) <= 10
        held_out_count[bag.oob] += 1
    assert held_out_count.tolist() == [2] * 400  # 8 members over 4 folds
    with pytest.raises(PipelineError, match="--folds 1"):
        member_bag(labels, 1, 0, 0)


def test_oob_estimate_of_hand_made_votes():
    labels = torch.tensor([0, 1, 2, 3])
    a = (torch.tensor([0, 1]), torch.tensor([[0.9, 0.1, 0, 0], [0.6, 0.4, 0, 0]]))
    b = (torch.tensor([1, 2]), torch.tensor([[0.0, 1.0, 0, 0], [0.7, 0, 0.3, 0]]))
    # digit 0: a alone, right; digit 1: a says 0 (0.6), b says 1 (1.0): mean 0.3/0.7, right;
    # digit 2: b alone, wrong; digit 3: no member left it out, so it is not counted.
    estimate = oob_estimate([a, b], labels)
    assert estimate == OobEstimate(accuracy=2 / 3, covered=3, total=4, mean_voters=4 / 3)
    assert "66.67% on 3 of 4 labelled digits (1.3 voters" in format_oob(estimate)
    assert oob_estimate([], labels).covered == 0


def test_best_ensemble_is_sized_per_device(monkeypatch):
    from pipeline.training import recipes

    cpu = best_members(device="cpu")
    assert len(cpu) == len(recipes.BEST_MEMBERS["cpu"]) and len({c.seed for c in cpu}) == len(cpu)
    assert all(c.folds == recipes.BEST_FOLDS["cpu"] and c.ema and c.augment for c in cpu)
    assert [c.fold for c in cpu] == [k % cpu[0].folds for k in range(len(cpu))]
    for k in range(cpu[0].folds):  # the members holding out one fold are different nets
        nets = {(c.model, str(c.arch_args)) for c in cpu if c.fold == k}
        assert len(nets) == len([c for c in cpu if c.fold == k]) > 1
    assert not any(c.compile for c in cpu)
    assert best_members(3, seed=5, bagged=False, device="cpu", epochs=1)[2].seed == 7
    widened = best_members(2, device="cpu", width=8)  # --width keeps each member's kernel
    assert [c.arch_args for c in widened] == [
        {"widths": [8, 16, 32]},
        {"kernel": 5, "widths": [8, 16, 32]},
    ]
    monkeypatch.setattr(recipes, "device_kind", lambda device: "cuda")
    cuda = best_members(device="cuda")
    assert all(c.compile for c in cuda) and cuda[0].model == "deepcnn"
    cpu_work = sum(c.epochs for c in cpu)
    assert sum(c.epochs for c in cuda) > cpu_work  # more epochs of bigger nets
    monkeypatch.undo()
    assert recipes.device_kind("cpu") == "cpu"


def test_a_bagged_member_never_trains_on_its_out_of_bag_digits(
    processed_dir, tmp_path, monkeypatch
):
    cfg = best_members(1, device="cpu", epochs=1, max_steps=4, batch_size=64)[0]
    digits = folds.labelled_digits(processed_dir)
    bag = member_bag(digits.labels, cfg.folds, cfg.fold, cfg.fold_seed)
    out_of_bag = {bytes(image.numpy()) for image in digits.images[bag.oob]}
    in_bag = {bytes(image.numpy()) for image in digits.images[bag.train]}
    assert len(out_of_bag) == len(bag.oob) and not out_of_bag & in_bag  # no duplicate digits
    drawn = []
    original = datasets.TensorDigits.get_batch

    def spy(self, indices):
        images, labels = original(self, indices)
        if self.labels is not None and len(indices) == cfg.batch_size:  # training batches
            drawn.extend(bytes(image.numpy()) for image in images)
        return images, labels

    monkeypatch.setattr(datasets.TensorDigits, "get_batch", spy)
    result = train(cfg, processed_dir, tmp_path / "m.pt", progress=False)
    monkeypatch.undo()
    assert len(drawn) == 4 * 64 and set(drawn) <= in_bag
    meta = torch.load(tmp_path / "m.pt", weights_only=True)["meta"]
    assert meta["bag"]["oob_rows"] == len(bag.oob) == 800 and result.history
    fingerprint = processed_fingerprint(processed_dir, whole=True)
    again = folds.verified_bag(meta["bag"], digits.labels, fingerprint, tmp_path / "m.pt")
    assert torch.equal(again.oob, bag.oob)
    with pytest.raises(PipelineError, match="its bag does not match"):
        folds.verified_bag(meta["bag"], digits.labels[:-1], fingerprint, tmp_path / "m.pt")
    estimate, members = score_out_of_bag([tmp_path / "m.pt"], processed_dir, "cpu")
    assert estimate.covered == 800 and estimate.mean_voters == 1.0
    assert members == [pytest.approx(estimate.accuracy)]
