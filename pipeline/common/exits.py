"""How every command ends: at most one `error:` line, one exit code, whatever the moment.

SIGINT exits 130 and SIGTERM 143, with one line and no output published. Python drops a
KeyboardInterrupt raised in a weakref callback or `__del__` (torch's imports), so the first signal
is also noted: `raise_if_stopped()` runs before every rename that publishes an output.
"""

import atexit
import os
import signal
import sys
from contextlib import suppress
from typing import NoReturn

_installed = False  # only a `pipeline` process notes signals: a library caller is left alone
_stopped: int | None = None  # the first SIGINT/SIGTERM received
_said = False  # whether an error line was printed
_exit_code: int | None = None  # set by finish(): the code the process ends with
_previous_unraisablehook = sys.unraisablehook  # what `_unraisable` hands the rest to


class Stopped(KeyboardInterrupt):
    """SIGINT or SIGTERM as a KeyboardInterrupt, so cleanup written for Ctrl-C runs for both."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def exit_code(signum: int) -> int:
    return 128 + signum


def _handle(signum: int, frame: object) -> None:
    global _stopped
    if _stopped is None and _exit_code is None:
        _stopped = signum
        raise Stopped(signum)


def install() -> None:
    """Route SIGINT and SIGTERM through the note; arm the fast exit (its atexit callback runs
    last: `pipeline.__main__` calls this first)."""
    global _installed, _previous_unraisablehook
    _installed = True
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _handle)
    if sys.unraisablehook is not _unraisable:
        _previous_unraisablehook = sys.unraisablehook
        sys.unraisablehook = _unraisable
    atexit.unregister(_skip_teardown)
    atexit.register(_skip_teardown)


def _unraisable(unraisable) -> None:
    """Drop a Stopped raised where Python cannot raise it (noted all the same), not a traceback."""
    if not isinstance(unraisable.exc_value, Stopped):
        _previous_unraisablehook(unraisable)


def stop(signum: int) -> NoReturn:
    """Stop now, as the first signal does (training's handler on a second Ctrl-C)."""
    global _stopped
    if _stopped is None and _installed:
        _stopped = signum
    raise Stopped(_stopped or signum)


def forget() -> None:
    """A signal that ended the work as intended (Ctrl-C stopping `serve`): no interruption."""
    global _stopped
    _stopped = None


def stopped() -> int | None:
    return _stopped


def raise_if_stopped() -> None:
    """Raise Stopped if a signal came, even one whose exception C code swallowed."""
    if _stopped is not None:
        raise Stopped(_stopped)


def say(message: str) -> None:
    """Print the command's `error: ...` line on stderr (finish() then adds no other)."""
    global _said
    _said = True
    with suppress(OSError, ValueError):  # a closed pipe: nothing left to say there
        sys.stderr.write(f"error: {message}\n")
        sys.stderr.flush()


def stop_message(signum: int) -> str:
    verb = "interrupted" if signum == signal.SIGINT else "terminated"
    return f"{verb}; nothing half-written was left behind"


def finish(code: int | str | None) -> NoReturn:
    """Exit with `code`, or 128 + the signal if one came (saying so unless a line was said).
    The last atexit callback then skips the teardown of torch's modules (0.3-0.6 s)."""
    global _exit_code
    _exit_code = code if isinstance(code, int) else 0 if code is None else 1
    if code is not None and not isinstance(code, int):
        say(str(code))
    if _stopped is not None:
        if not _said:
            say(stop_message(_stopped))
        _exit_code = exit_code(_stopped)
    sys.exit(_exit_code)


def _skip_teardown() -> None:
    if _exit_code is None:  # not ended through finish(): an uncaught exception, say
        return
    for stream in (sys.stdout, sys.stderr):
        with suppress(OSError, ValueError):
            stream.flush()
    os._exit(_exit_code)
