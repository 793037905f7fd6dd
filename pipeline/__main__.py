"""`python -m pipeline ...` and the `pipeline` script; torchrun starts it as `-m pipeline` too.

The signal handlers go in before anything else is imported, so a Ctrl-C or SIGTERM while
typer, torch or pandas load ends like one at any later moment (pipeline.common.exits).
"""

from pipeline.common import exits


def main() -> None:
    exits.install()
    code: int | str | None = 0
    try:
        from pipeline.cli import run

        code = run()
    except exits.Stopped:  # before the command line is even parsed: finish() says so
        pass
    exits.finish(code)


if __name__ == "__main__":
    main()
