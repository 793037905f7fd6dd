"""The options every baseline command shares."""

from pathlib import Path
from typing import Annotated

import typer

from pipeline.device import DEVICE_CHOICES

DeviceOption = Annotated[str, typer.Option(help="|".join(DEVICE_CHOICES))]
FigureOption = Annotated[Path, typer.Option(help="Figure to write.")]
