"""The digit classifiers: normalised [B,1,28,28] floats in, logits out. `build_model(name,
**arch_args)` makes every model, so a checkpoint recording both rebuilds itself."""

import inspect
from collections.abc import Callable

import torch
from torch import nn

from pipeline import config
from pipeline.common.errors import PipelineError

SIDE = config.IMAGE_SIDE


class Classifier(nn.Module):
    """`features` then a `classifier` head on their flattened output."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).flatten(1))


class TutorialCNN(Classifier):
    """The tutorial's CNN: two 5x5 conv/ReLU/max-pool stages, one linear layer."""

    def __init__(self, channels: tuple[int, int] = (16, 32)):
        super().__init__()
        c1, c2 = channels
        self.features = nn.Sequential(
            nn.Conv2d(1, c1, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(c2 * 7 * 7, config.N_CLASSES)  # 28 -> 14 -> 7


class LeNet5(Classifier):
    """LeNet-5 (conv6, conv16, fc120, fc84, fc10); `padding=2` turns 28x28 into its 32x32, and
    ReLU and max-pooling replace its squashing units and subsampling, as modern re-runs do."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 6, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 28 -> 14
            nn.Conv2d(6, 16, 5),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 14 -> 10 -> 5
        )
        self.classifier = nn.Sequential(
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(),
            nn.Linear(120, 84),
            nn.ReLU(),
            nn.Linear(84, config.N_CLASSES),
        )


class MLP(nn.Module):
    """784-200-10 with ReLU: the fully connected baseline."""

    def __init__(self, hidden: int = 200):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(config.N_PIXELS, hidden),
            nn.ReLU(),
            nn.Linear(hidden, config.N_CLASSES),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def conv_bn(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding: int = 1):
    return [
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


class FastNet(Classifier):
    """Three conv-BN-ReLU-maxpool stages (28 -> 14 -> 7 -> 3) and a linear head; `kernel` (odd)
    and `convs` (layers per stage) make the `best` ensemble's members differ."""

    def __init__(
        self,
        widths: tuple[int, ...] = (16, 32, 64),
        dropout: float = 0.0,
        kernel: int = 3,
        convs: int = 1,
    ):
        super().__init__()
        layers, c_in, side = [], 1, SIDE
        for width in widths:
            for _ in range(convs):
                layers += conv_bn(c_in, width, kernel, padding=kernel // 2)
                c_in = width
            layers.append(nn.MaxPool2d(2))
            side //= 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(c_in * side * side, config.N_CLASSES)
        )


class DeepCNN(Classifier):
    """Chris Deotte's Kaggle ensemble member (0.99757): two blocks of two conv3x3-BN and a
    strided 5x5 conv instead of pooling, then a 4x4 conv: 28 -> 24 -> 12 -> 8 -> 4 -> 1."""

    def __init__(self, widths: tuple[int, int, int] = (32, 64, 128), dropout: float = 0.4):
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            *conv_bn(1, c1, padding=0),
            *conv_bn(c1, c1, padding=0),
            *conv_bn(c1, c1, kernel=5, stride=2, padding=2),
            nn.Dropout(dropout),
            *conv_bn(c1, c2, padding=0),
            *conv_bn(c2, c2, padding=0),
            *conv_bn(c2, c2, kernel=5, stride=2, padding=2),
            nn.Dropout(dropout),
            *conv_bn(c2, c3, kernel=4, padding=0),
        )
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c3, config.N_CLASSES))


class NoPoolNet(Classifier):
    """Conv-BN-ReLU layers without padding or pooling (An et al., 2020): each trims kernel - 1
    pixels (kernel 5: 28 -> 24 -> ... -> 8), so the head sees where the strokes are."""

    def __init__(self, widths: tuple[int, ...] = (8, 16, 24, 32, 40), kernel: int = 5):
        super().__init__()
        layers, c_in, side = [], 1, SIDE
        for width in widths:
            layers += conv_bn(c_in, width, kernel, padding=0)
            c_in, side = width, side - (kernel - 1)
        if side < 1:
            raise ValueError(f"{len(widths)} layers of kernel {kernel} shrink 28 px below 1")
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Linear(c_in * side * side, config.N_CLASSES, bias=False),
            nn.BatchNorm1d(config.N_CLASSES),
        )


MODELS: dict[str, Callable[..., nn.Module]] = {
    "cnn": TutorialCNN,
    "lenet": LeNet5,
    "mlp": MLP,
    "fastnet": FastNet,
    "deepcnn": DeepCNN,
    "nopool": NoPoolNet,
}


def resolved_arch_args(name: str, arch_args: dict) -> dict:
    """The constructor's defaults under `arch_args`: a checkpoint survives a default's change."""
    parameters = inspect.signature(MODELS[name]).parameters.values()
    resolved = {p.name: p.default for p in parameters if p.default is not p.empty}
    resolved.update(arch_args)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in resolved.items()}


# How `--width W` sizes each model: its first layer's width, doubling stage by stage.
WIDTHS: dict[str, Callable[[int], dict]] = {
    "cnn": lambda w: {"channels": [w, 2 * w]},
    "mlp": lambda w: {"hidden": w},
    "fastnet": lambda w: {"widths": [w, 2 * w, 4 * w]},
    "deepcnn": lambda w: {"widths": [w, 2 * w, 4 * w]},
}


def width_args(name: str, width: int) -> dict:
    """The arch_args `--width` gives model `name`, or a one-line error (LeNet-5 is fixed)."""
    if name not in WIDTHS:
        raise PipelineError(f"--width: {name} has fixed widths; use it with {', '.join(WIDTHS)}")
    if not 1 <= width <= 1024:
        raise PipelineError(f"--width {width}: must be 1 to 1024")
    return WIDTHS[name](width)


# What a checkpoint or config may ask for (the widest recipe: 128 channels, 2.4 M parameters).
MAX_WIDTH = 2048
MAX_LAYERS = 16  # NoPoolNet with kernel 3 stacks ten layers
MAX_PARAMETERS = 50_000_000


def arch_args_problem(name: str, arch_args: dict) -> str | None:
    """What is wrong with `arch_args` for model `name`, or None; counted on the meta device."""
    parameters = inspect.signature(MODELS[name]).parameters
    for key, value in arch_args.items():
        if key not in parameters:
            return f"{key!r} is not an argument of {name!r}"
        default = parameters[key].default
        if isinstance(default, tuple):
            if not isinstance(value, list | tuple) or not 1 <= len(value) <= MAX_LAYERS:
                return f"{key} must be a list of 1 to {MAX_LAYERS} sizes"
            if isinstance(default[0], int) and not all(
                type(v) is int and 1 <= v <= MAX_WIDTH for v in value
            ):
                return f"{key} {list(value)!r:.60} must be whole numbers 1 to {MAX_WIDTH}"
        elif isinstance(default, float):
            if type(value) not in (int, float) or not 0 <= value < 1:
                return f"{key} {value!r:.20} must be a number in [0, 1)"
        elif isinstance(default, int):
            if type(value) is not int or not 1 <= value <= MAX_WIDTH * 4:
                return f"{key} {value!r:.20} must be a whole number 1 to {MAX_WIDTH * 4}"
    try:
        with torch.device("meta"):
            size = sum(p.numel() for p in build_model(name, **arch_args).parameters())
    except (TypeError, ValueError, RuntimeError) as exc:
        return f"they do not build a {name!r} ({str(exc)[:60]})"
    if size > MAX_PARAMETERS:
        return f"they ask for {size:,} parameters (at most {MAX_PARAMETERS:,})"
    return None


def build_model(name: str, **arch_args) -> nn.Module:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    tuples = {k: tuple(v) if isinstance(v, list) else v for k, v in arch_args.items()}
    return MODELS[name](**tuples)
