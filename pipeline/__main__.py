"""`python -m pipeline ...`, which is also how torchrun starts it: `torchrun -m pipeline train`."""

from pipeline.cli import main

main()
