"""Cross-validation trains an ensemble per split and scores members, ensemble and TTA."""

import statistics

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.datasets import load_split
from pipeline.experiments.crossval import cross_validate, format_summary
from pipeline.training.recipes import recipe_config


@pytest.mark.slow
def test_each_split_is_its_own_stratified_split_with_scored_members(sample_raw_dir, tmp_path):
    cfg = recipe_config("fast", epochs=2, device="cpu")
    models, data = tmp_path / "models", tmp_path / "data"
    result = cross_validate(cfg, 2, [0, 1], sample_raw_dir, models, data, progress=False)
    assert [s.split_seed for s in result.splits] == [0, 1]
    val_ids = [set(load_split(data / f"split-{k}", "val").ids.tolist()) for k in (0, 1)]
    assert val_ids[0] != val_ids[1] and len(val_ids[0]) == result.splits[0].val_images == 400
    for split in result.splits:
        assert len(split.member_accuracies) == 2
        assert all(0.85 < a <= 1.0 for a in split.member_accuracies)  # 3,600 digits, 2 epochs
        assert min(split.member_accuracies) - 0.02 <= split.ensemble_accuracy
        assert 0.85 < split.tta_accuracy <= 1.0
        members = sorted(p.name for p in (models / f"split-{split.split_seed}").glob("*-?.pt"))
        assert members == ["fast-0.pt", "fast-1.pt"]
    mean, sd = result.ensemble
    accuracies = [s.ensemble_accuracy for s in result.splits]
    assert mean == sum(accuracies) / 2
    assert sd == pytest.approx(statistics.stdev(accuracies))  # the spread of the two splits
    assert "ensemble+TTA" in format_summary(result)


def test_crossval_command_prints_mean_and_spread(sample_raw_dir, tmp_path):
    reply = CliRunner().invoke(
        app,
        [
            "crossval", "--splits", "2", "--members", "1", "--recipe", "fast", "--epochs", "1",
            "--max-steps", "3", "--device", "cpu", "--raw-dir", str(sample_raw_dir),
            "--work-dir", str(tmp_path / "models"), "--processed-dir", str(tmp_path / "data"),
        ],
    )  # fmt: skip
    assert reply.exit_code == 0, reply.output
    assert "1 member(s) x 2 split(s)" in reply.output and "sd" in reply.output
    for k in (0, 1):  # each split: its own prepared data and its own member
        assert (tmp_path / "models" / f"split-{k}" / "fast-0.pt").is_file()
        val = set(load_split(tmp_path / "data" / f"split-{k}", "val").ids.tolist())
        train = set(load_split(tmp_path / "data" / f"split-{k}", "train").ids.tolist())
        assert len(val) == 400 and not val & train


@pytest.mark.slow  # MLflow's store
def test_cross_validate_tracks_one_run_with_each_member_a_child(
    sample_raw_dir, tmp_path, tracking_store
):
    from pipeline.experiments import runs

    cfg = recipe_config("fast", epochs=1, max_steps=3, device="cpu")
    models, data = tmp_path / "models", tmp_path / "data"
    result = cross_validate(cfg, 1, [0, 1], sample_raw_dir, models, data, progress=False,
                            track=True)  # fmt: skip
    parent, all_runs = runs.find_run(result.run_id, tracking_store)
    assert parent.data.tags["command"] == "crossval"
    assert parent.data.metrics["ensemble_acc_mean"] == pytest.approx(result.ensemble[0])
    children = [r for r in all_runs if runs.is_child(r, parent)]
    assert sorted(r.data.tags["split"] for r in children) == ["0", "1"]
