"""`python -m pipeline ...`, which is also how torchrun starts it: `torchrun -m pipeline train`."""

import sys

try:
    from pipeline.cli import main
except KeyboardInterrupt:  # Ctrl-C before the command line is even parsed
    sys.stderr.write("error: interrupted\n")
    sys.exit(130)

main()
