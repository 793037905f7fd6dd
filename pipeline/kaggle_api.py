"""The boundary to Kaggle's official `kaggle` package, shared by `download` and `submit`.

Importing `kaggle` prints auth help and may touch the network, so we look for credentials
first and import it only here, only when a command needs it. Tests replace `connect`.
"""

import contextlib
import io
import os
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import PipelineError

TOKEN_HELP = (
    "create an API token at https://www.kaggle.com/settings/api and save it as "
    "~/.kaggle/access_token (or set KAGGLE_USERNAME and KAGGLE_KEY)"
)


class KaggleClient(Protocol):
    """The two calls we use of `kaggle.api.kaggle_api_extended.KaggleApi`."""

    def competition_download_files(
        self, competition: str, path: str | None = None, force: bool = False, quiet: bool = True
    ) -> None: ...

    def competition_submit(
        self, file_name: str, message: str, competition: str, quiet: bool = False
    ) -> Any: ...


def _config_dir() -> Path:
    if "KAGGLE_CONFIG_DIR" in os.environ:
        return Path(os.environ["KAGGLE_CONFIG_DIR"])
    legacy = Path.home() / ".kaggle"
    return legacy if legacy.exists() else Path.home() / ".config" / "kaggle"


def credential_source() -> str | None:
    """Where Kaggle credentials would come from, in the package's own order, or None."""
    if os.environ.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    for name in ("access_token", "access_token.txt"):
        if (Path.home() / ".kaggle" / name).is_file():
            return f"~/.kaggle/{name}"
    if (_config_dir() / "kaggle.json").is_file():
        return str(_config_dir() / "kaggle.json")
    return None


def connect() -> KaggleClient:
    """An authenticated KaggleApi, or a PipelineError that says what to do."""
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


def explain(exc: Exception, competition: str) -> PipelineError:
    """Turn an error raised by the kaggle package into one line that says what to do."""
    status = getattr(getattr(exc, "response", None), "status_code", None)
    rules = f"https://www.kaggle.com/competitions/{competition}/rules"
    if status == 401:
        return PipelineError(f"Kaggle rejected the credentials (HTTP 401): {TOKEN_HELP}")
    if status == 403:
        return PipelineError(
            f"Kaggle refused access to '{competition}' (HTTP 403): accept the competition "
            f"rules at {rules} with this account, then retry"
        )
    if status == 404:
        return PipelineError(f"Kaggle has no competition '{competition}' (HTTP 404)")
    if status is not None:
        return PipelineError(f"Kaggle answered HTTP {status} for '{competition}': {exc}")
    if isinstance(exc, OSError):
        return PipelineError(
            f"cannot reach kaggle.com ({type(exc).__name__}): check the network, or download "
            f"{competition}.zip by hand and run `pipeline download --source zip --zip PATH`"
        )
    return PipelineError(f"the kaggle package failed: {type(exc).__name__}: {exc}")
