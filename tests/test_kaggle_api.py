"""kaggle_api.explain: one line per failure, with advice that fits what the user was doing."""

import errno
from pathlib import Path
from types import SimpleNamespace

from pipeline.data.kaggle_api import explain

from conftest import require

SUBMISSION = Path("submissions/submission.csv")


def test_a_network_failure_during_submit_gets_submit_advice():
    message = str(explain(ConnectionError("offline"), "digit-recognizer", "submit", SUBMISSION))
    assert message == (
        "cannot reach kaggle.com (ConnectionError): check the network and retry "
        "`pipeline submit`; or upload submissions/submission.csv by hand at "
        "https://www.kaggle.com/competitions/digit-recognizer/submit"
    )
    assert "download" not in message


def test_the_default_action_is_download():
    message = str(explain(ConnectionError("offline"), "digit-recognizer"))
    assert message.startswith("cannot reach kaggle.com (ConnectionError): check the network")
    assert message.endswith("and run `pipeline download --zip PATH`")


def test_refused_access_says_which_command_to_retry():
    error = OSError("403 Client Error")
    error.response = SimpleNamespace(status_code=403)
    message = str(explain(error, "digit-recognizer", "submit", SUBMISSION))
    assert "(HTTP 403): accept the competition rules at" in message
    assert message.endswith("then retry `pipeline submit`")


def test_a_local_os_error_names_the_file_not_the_network():
    error = PermissionError(errno.EACCES, "Permission denied", "/tmp/x")
    message = str(explain(error, "digit-recognizer", "submit", SUBMISSION))
    assert message == f"{SUBMISSION}: Permission denied"
    no_path = str(explain(OSError(errno.ENOSPC, "No space left on device"), "digit-recognizer"))
    assert no_path == "local file error during download: No space left on device"


def test_requests_errors_are_network_errors_whatever_their_base_class():
    requests = require("requests", extra="kaggle")
    urllib3 = require("urllib3", extra="kaggle")
    for error in (
        requests.ConnectionError("Max retries exceeded"),
        requests.Timeout("read timed out"),
        requests.exceptions.ChunkedEncodingError("connection broken"),
        urllib3.exceptions.ProtocolError("Connection aborted."),  # not an OSError
    ):
        message = str(explain(error, "digit-recognizer", "submit", SUBMISSION))
        assert message.startswith(f"cannot reach kaggle.com ({type(error).__name__}): "), message


def test_long_multi_line_replies_become_one_short_line():
    error = OSError("<html>\n" + "x " * 1000 + "\n</html>")
    error.response = SimpleNamespace(status_code=502)
    message = str(explain(error, "digit-recognizer"))
    assert message.startswith("Kaggle answered HTTP 502 for 'digit-recognizer' during download:")
    assert "\n" not in message and len(message) < 400 and message.endswith("…")
