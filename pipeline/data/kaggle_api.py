"""The boundary to Kaggle's official `kaggle` package, shared by `download` and `submit`.
Importing `kaggle` prints auth help and may touch the network, so credentials are looked for
first and it is imported only when a command needs it. Tests replace `connect`."""

import contextlib
import io
import os
from pathlib import Path
from typing import Any

from pipeline.common.errors import PipelineError

TOKEN_HELP = (
    "create an API token at https://www.kaggle.com/settings/api and save it as "
    "~/.kaggle/access_token (or set KAGGLE_USERNAME and KAGGLE_KEY)"
)


def credential_source() -> str | None:
    """Where Kaggle credentials would come from, in the package's own order, or None."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    for name in ("access_token", "access_token.txt"):
        if (Path.home() / ".kaggle" / name).is_file():
            return f"~/.kaggle/{name}"
    legacy = Path.home() / ".kaggle"
    folder = legacy if legacy.exists() else Path.home() / ".config" / "kaggle"
    json_file = Path(os.environ.get("KAGGLE_CONFIG_DIR", folder)) / "kaggle.json"
    return str(json_file) if json_file.is_file() else None


def connect() -> Any:
    """An authenticated `KaggleApi`, or a PipelineError that says what to do."""
    if credential_source() is None:
        raise PipelineError(f"no Kaggle credentials found: {TOKEN_HELP}")
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as exc:
        raise PipelineError(
            f"the kaggle package is not installed ({exc}): pip install -e '.[kaggle]'"
        ) from None
    except SystemExit:
        raise PipelineError(f"Kaggle rejected the credentials: {TOKEN_HELP}") from None
    return api


def _one_line(text: object) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= 300 else line[:299] + "…"


def explain(
    exc: BaseException, competition: str, action: str = "download", path: Path | None = None
) -> PipelineError:
    """Anything the kaggle package raised during `action` ("download" or "submit") as one line
    saying what to do; `path`, the action's local file, is named in a local OS error."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    page = f"https://www.kaggle.com/competitions/{competition}"
    by_status = {
        401: f"Kaggle rejected the credentials (HTTP 401): {TOKEN_HELP}",
        403: f"Kaggle refused access to '{competition}' (HTTP 403): accept the competition "
        f"rules at {page}/rules with this account, then retry `pipeline {action}`",
        404: f"Kaggle has no competition '{competition}' (HTTP 404)",
    }
    # requests' errors are OSErrors without an errno: told from a local one by their module
    network = isinstance(exc, ConnectionError | TimeoutError) or any(
        cls.__module__.partition(".")[0] in {"requests", "urllib3", "socket", "ssl", "http"}
        for cls in type(exc).__mro__
    )
    if status in by_status:
        message = by_status[status]
    elif status is not None:
        message = (
            f"Kaggle answered HTTP {status} for '{competition}' during {action}: {_one_line(exc)}"
        )
    elif isinstance(exc, OSError) and exc.errno is not None and not network:
        where = path or exc.filename or f"local file error during {action}"
        message = f"{where}: {_one_line(exc.strerror or exc)}"
    elif network or isinstance(exc, OSError):
        by_hand = (
            f"upload {path or 'the submission file'} by hand at {page}/submit"
            if action == "submit"
            else f"download {competition}.zip by hand from {page}/data and run "
            "`pipeline download --zip PATH`"
        )
        message = (
            f"cannot reach kaggle.com ({type(exc).__name__}): check the network and retry "
            f"`pipeline {action}`; or {by_hand}"
        )
    elif isinstance(exc, SystemExit):
        message = (
            f"the kaggle package gave up during {action} (exit code {exc.code}); "
            f"retry `pipeline {action}`"
        )
    else:
        message = (
            f"the kaggle package failed during {action}: {type(exc).__name__}: {_one_line(exc)}"
        )
    return PipelineError(message)
