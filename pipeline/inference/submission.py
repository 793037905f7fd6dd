"""The submission file: Kaggle's rules for it, reading it strictly, and writing it atomically.
Kaggle reports a malformed file only after the upload, so `predict` checks what it writes and
`submit` what it sends, by the same rules."""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, file_sha256, write_json

if TYPE_CHECKING:
    import pandas as pd  # imported where a DataFrame is made: `predict` never needs pandas


def check_columns(image_ids: np.ndarray, labels: np.ndarray, n_rows: int, name: str) -> None:
    """n_rows rows, integer ImageId 1..n once each, digit labels."""
    if len(image_ids) != n_rows:
        raise PipelineError(f"{name}: has {len(image_ids)} rows, Kaggle expects {n_rows}")
    for column, values in zip(config.SUBMISSION_HEADER, (image_ids, labels), strict=True):
        if values.dtype.kind not in "iu":
            raise PipelineError(f"{name}: column {column} must hold integers only")
    if not np.array_equal(np.sort(image_ids), np.arange(1, n_rows + 1)):
        raise PipelineError(f"{name}: ImageId must be 1..{n_rows}, each exactly once")
    if not ((labels >= 0) & (labels <= 9)).all():
        raise PipelineError(f"{name}: Label must be a digit 0-9")


def read_submission(path: Path, n_rows: int = config.KAGGLE_TEST_ROWS) -> "pd.DataFrame":
    """A submission file read (the exact header, two integers a line) and checked."""
    import pandas as pd

    from pipeline.data.raw_csv import read_id_labels

    if not path.is_file():
        raise PipelineError(f"{path}: no such file (run `pipeline predict` first)")
    table = read_id_labels(path)
    check_columns(table[:, 0], table[:, 1], n_rows, str(path))
    return pd.DataFrame(table, columns=config.SUBMISSION_HEADER)


def write_submission(labels, image_ids, path: Path) -> None:
    """ImageId,Label rows for `labels` (tensors or arrays), checked, written atomically: what
    pandas' `to_csv(index=False)` writes, without its 0.1-0.3 s import."""
    image_ids, labels = np.asarray(image_ids), np.asarray(labels)
    check_columns(image_ids, labels, len(image_ids), str(path))
    rows = map("{},{}\n".format, image_ids.tolist(), labels.tolist())
    with atomic_path(path) as tmp:
        tmp.write_text(",".join(config.SUBMISSION_HEADER) + "\n" + "".join(rows))


def write_source_record(submission: Path, checkpoints: list[Path], tta: bool) -> None:
    """`<stem>.source.json`: its and its checkpoints' sha256, for `submit` to credit their runs."""
    models = [{"path": str(p.resolve()), "sha256": file_sha256(p)} for p in checkpoints]
    record = {"submission_sha256": file_sha256(submission), "checkpoints": models, "tta": tta}
    write_json(record, config.submission_source_path(submission))
