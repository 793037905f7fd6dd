"""Stage 6: send a submission to Kaggle, after checking it locally against Kaggle's rules."""

from collections.abc import Callable
from pathlib import Path

from pipeline import config, kaggle_api
from pipeline.errors import PipelineError
from pipeline.submission import read_submission

UPLOAD_FAILED = "Could not submit to competition"


def submit(
    file: Path = config.DEFAULT_SUBMISSION,
    message: str = "pipeline submission",
    competition: str = config.COMPETITION,
    connect: Callable[[], kaggle_api.KaggleClient] | None = None,
) -> str:
    """Validate `file` (28,000 rows for digit-recognizer), upload it; return Kaggle's reply.

    `connect` replaces the real client (tests); it is looked up late so it can be patched.
    """
    read_submission(file, n_rows=config.KAGGLE_TEST_ROWS)
    try:
        api = (connect or kaggle_api.connect)()
        response = api.competition_submit(str(file), message, competition, quiet=True)
    except PipelineError:
        raise
    except (Exception, SystemExit) as exc:
        raise kaggle_api.explain(exc, competition, action="submit", path=file) from None
    reply = str(getattr(response, "message", "") or "")
    if reply == UPLOAD_FAILED:
        raise PipelineError(f"{file}: the upload to Kaggle failed; check the network and retry")
    return reply or "submitted"
