"""`python -m pipeline ...` and the `pipeline` script; the signal handlers go in before any
other import, so a Ctrl-C while torch loads ends like one at any later moment."""

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
