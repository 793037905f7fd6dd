"""The submission file: Kaggle's rules for it, reading it strictly, and writing it atomically.

Kaggle reports a malformed file only after the upload (as an ERROR status), so `predict`
checks what it writes and `submit` checks what it sends, with the same rules: the exact header
`ImageId,Label`, ImageId 1..N once each, integer labels 0-9, two fields on every line.
"""

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline import config
from pipeline.common.errors import PipelineError
from pipeline.common.files import atomic_path, file_sha256, write_json

if TYPE_CHECKING:
    import pandas as pd  # imported where a DataFrame is made: `predict` never needs pandas


def check_columns(image_ids: np.ndarray, labels: np.ndarray, n_rows: int, name: str) -> None:
    """The rules on the values: n_rows rows, integer ImageId 1..n once each, digit labels."""
    if len(image_ids) != n_rows:
        raise PipelineError(f"{name}: has {len(image_ids)} rows, Kaggle expects {n_rows}")
    for column, values in zip(config.SUBMISSION_HEADER, (image_ids, labels), strict=True):
        if values.dtype.kind not in "iu":
            raise PipelineError(f"{name}: column {column} must hold integers only")
    if not np.array_equal(np.sort(image_ids), np.arange(1, n_rows + 1)):
        raise PipelineError(f"{name}: ImageId must be 1..{n_rows}, each exactly once")
    if not ((labels >= 0) & (labels <= 9)).all():
        raise PipelineError(f"{name}: Label must be a digit 0-9")


def check_submission(frame: "pd.DataFrame", n_rows: int, name: str) -> None:
    """Kaggle's rules for this competition: exact header, ids 1..n once each, digit labels."""
    if list(frame.columns) != config.SUBMISSION_HEADER:
        raise PipelineError(
            f"{name}: header must be ImageId,Label, found {','.join(map(str, frame.columns))}"
        )
    columns = [frame[column].to_numpy() for column in config.SUBMISSION_HEADER]
    check_columns(*columns, n_rows, name)


def read_submission(path: Path, n_rows: int = config.KAGGLE_TEST_ROWS) -> "pd.DataFrame":
    """Read and check a submission file; raises a one-line PipelineError on any problem."""
    import pandas as pd

    from pipeline.data.raw_csv import read_id_labels

    if not path.is_file():
        raise PipelineError(f"{path}: no such file (run `pipeline predict` first)")
    frame = pd.DataFrame(read_id_labels(path), columns=config.SUBMISSION_HEADER)
    check_submission(frame, n_rows, str(path))
    return frame


def write_submission(labels, image_ids, path: Path) -> None:
    """ImageId,Label rows for `labels` (tensors or arrays), checked, written atomically.

    Written as text, byte for byte what pandas' `to_csv(index=False)` writes, without
    importing pandas (0.1-0.3 s of every `predict`).
    """
    image_ids, labels = np.asarray(image_ids), np.asarray(labels)
    check_columns(image_ids, labels, len(image_ids), str(path))
    rows = map("{},{}\n".format, image_ids.tolist(), labels.tolist())
    with atomic_path(path) as tmp:
        tmp.write_text(",".join(config.SUBMISSION_HEADER) + "\n" + "".join(rows))


def write_source_record(submission: Path, checkpoints: list[Path], tta: bool) -> None:
    """`<stem>.source.json` beside a submission just written: its sha256 and the checkpoints
    (path and sha256) that labelled it, so `submit` can credit their tracked runs."""
    models = [{"path": str(p.resolve()), "sha256": file_sha256(p)} for p in checkpoints]
    record = {"submission_sha256": file_sha256(submission), "checkpoints": models, "tta": tta}
    write_json(record, config.submission_source_path(submission))
