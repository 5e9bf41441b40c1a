"""1-D ResNet over powder patterns (PyTorch), saved in the package's safetensors model format."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from xtec.classifier.symmetry import CRYSTAL_SYSTEMS, crystal_system_index
from xtec.errors import InputError, ParameterError
from xtec.nn import load_model_file, read_safetensors, save_model_file

log = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
MODEL_KIND = "classifier_resnet1d"


@dataclass
class ModelConfig:
    """Everything needed to rebuild a classifier and feed it patterns.

    ``space_groups`` are the classes (International numbers, in output order);
    ``blocks`` the residual blocks per stage (its length is the number of stages,
    each halving the length and doubling the channels); ``width`` the channels of the
    first stage; ``head_bins`` the 2-theta bins kept by the pooling before the linear
    head (1 = global average pooling); ``stem_stride`` the stride of the first convolution
    (its kernel spans ``2 * stem_stride + 1`` points, so every point is seen; a max-pool of
    stride 2 follows).  The grid fields describe the patterns the model expects.
    Configurations saved before ``stem_stride`` existed load with its old value, 4.
    """

    space_groups: list[int] = field(default_factory=lambda: list(range(1, 231)))
    width: int = 16
    blocks: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    groups: int = 8
    head_bins: int = 8
    stem_stride: int = 4
    two_theta_min: float = 5.0
    two_theta_max: float = 90.0
    n_points: int = 8501
    wavelength: float = 1.5406

    def __post_init__(self) -> None:
        sgs = [int(s) for s in self.space_groups]
        if not sgs or len(set(sgs)) != len(sgs) or min(sgs) < 1 or max(sgs) > 230:
            raise ParameterError("space_groups must be distinct numbers in 1..230")
        self.space_groups = sgs
        if self.width < self.groups or self.width % self.groups:
            raise ParameterError("width must be a positive multiple of groups")
        if self.head_bins < 1:
            raise ParameterError("head_bins must be at least 1")
        if self.stem_stride < 1:
            raise ParameterError("stem_stride must be at least 1")
        self.stem_stride = int(self.stem_stride)
        if not self.blocks or min(self.blocks) < 1:
            raise ParameterError("blocks must list at least one stage of at least one block")
        self.blocks = [int(b) for b in self.blocks]

    @classmethod
    def from_dict(cls, d: dict) -> ModelConfig:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        return cls(**known)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv1d(c_in, c_out, 3, stride, 1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv1d(c_out, c_out, 3, 1, 1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.skip = (
            nn.Sequential(
                nn.Conv1d(c_in, c_out, 1, stride, bias=False), nn.GroupNorm(groups, c_out)
            )
            if stride != 1 or c_in != c_out
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        return torch.relu(self.norm2(self.conv2(y)) + self.skip(x))

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`forward` with the ReLUs and the residual sum in place (fewer allocations).

        Safe under autograd: GroupNorm's backward needs its input, not its output.
        """
        y = torch.relu_(self.norm1(self.conv1(x)))
        return torch.relu_(self.norm2(self.conv2(y)).add_(self.skip(x)))


class ResNet1D(nn.Module):
    """ResNet with GroupNorm (as in the paper) for patterns of shape (batch, n_points).

    Returns space-group logits of shape (batch, n_classes).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        w, g, s = config.width, config.groups, config.stem_stride
        # The stem downsamples by 2 * stem_stride: the 0.01-degree grid oversamples even the
        # sharpest peaks (Scherrer FWHM >= 0.08 degrees for crystallites up to 100 nm), and a
        # learned kernel that overlaps its neighbours keeps sub-stride peak positions in its
        # channels.  The second input channel is the 2-theta coordinate: convolutions alone are
        # translation invariant, but a space group is told by absolute peak positions.
        self.stem = nn.Sequential(
            nn.Conv1d(2, w, 2 * s + 1, s, s, bias=False),
            nn.GroupNorm(g, w),
            nn.ReLU(),
            nn.MaxPool1d(3, 2, 1),
        )
        layers, c = [], w
        for i, n in enumerate(config.blocks):
            c_out = w * 2**i
            for j in range(n):
                layers.append(_Block(c, c_out, 2 if (j == 0 and i > 0) else 1, g))
                c = c_out
        self.body = nn.Sequential(*layers)
        # Pooling to a few bins (not to one) also keeps coarse position information.
        self.pool = nn.AdaptiveAvgPool1d(config.head_bins)
        self.head = nn.Linear(c * config.head_bins, len(config.space_groups))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        conv = self.stem[0]
        h = _stem_conv(x, conv.weight, conv.stride[0], conv.padding[0])
        h = torch.relu_(self.stem[1](h))
        h = self.stem[3](h)
        for block in self.body:
            h = block.forward_inplace(h)
        return self.head(self.pool(h).flatten(1))

    def forward_reference(self, x: torch.Tensor) -> torch.Tensor:
        """The original module-by-module forward (kept for the training-step benchmark).

        :meth:`forward` computes the same function with the same weights, to float tolerance.
        """
        coord = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype).expand_as(x)
        h = self.body(self.stem(torch.stack([x, coord], dim=1)))
        return self.head(self.pool(h).flatten(1))


def _stem_conv(x: torch.Tensor, weight: torch.Tensor, stride: int, padding: int) -> torch.Tensor:
    """The stem convolution of ``[x, coordinate]`` (batch, 2, n_points), as two matrix products.

    x: (batch, n_points); weight: (width, 2, k).
    The coordinate channel is the same for every pattern, so its part is computed once per
    batch and broadcast; the pattern part is one matrix product over k-point windows.
    Returns (batch, width, n_out).
    """
    k, pad = weight.shape[-1], (padding, padding)
    coord = torch.linspace(-1.0, 1.0, x.shape[-1], dtype=x.dtype)
    windows = torch.nn.functional.pad(x, pad).unfold(-1, k, stride)  # (B, n_out, k)
    coord_windows = torch.nn.functional.pad(coord, pad).unfold(-1, k, stride)
    h = (windows @ weight[:, 0].t()).add_(coord_windows @ weight[:, 1].t())  # (B, n_out, width)
    return h.transpose(1, 2).contiguous()


def system_matrix(space_groups: list[int]) -> torch.Tensor:
    """One-hot (n_classes, 7) mapping space-group classes to crystal systems."""
    m = torch.zeros(len(space_groups), len(CRYSTAL_SYSTEMS))
    m[
        torch.arange(len(space_groups)),
        torch.as_tensor(crystal_system_index(np.array(space_groups))),
    ] = 1
    return m


def save_model(model: ResNet1D, directory: str | Path, extra: dict | None = None) -> Path:
    """Write ``directory/model.safetensors`` (the package's one model-file format,
    :func:`xtec.nn.save_model_file`, configuration inside) and ``config.json``.

    ``config.json`` repeats the configuration for people and for the predictor,
    which tells a network directory from an extinction-rule one by it.
    """
    d = Path(directory)
    cfg = {"model": asdict(model.config), **(extra or {})}
    save_model_file(d / WEIGHTS_FILE, MODEL_KIND, cfg, model.state_dict(), {}, {})
    (d / CONFIG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    return d


def load_model(directory: str | Path) -> tuple[ResNet1D, dict]:
    """Rebuild a model saved by :func:`save_model`; returns it in eval mode and the config dict.

    Directories written before the one model-file format (weights alone in
    ``model.safetensors``, the configuration only in ``config.json``, as the
    shipped network under ``pretrained/``) load too.
    """
    d = Path(directory)
    if not (d / WEIGHTS_FILE).is_file() or not (d / CONFIG_FILE).is_file():
        raise InputError(
            f"{d} is not a classifier model directory (needs {WEIGHTS_FILE} and {CONFIG_FILE})"
        )
    try:
        metadata, tensors = read_safetensors(d / WEIGHTS_FILE)
        if metadata.get("xtec_model") == MODEL_KIND:
            cfg, state, _, _ = load_model_file(d / WEIGHTS_FILE, MODEL_KIND)
        else:  # the earlier directory form
            cfg, state = json.loads((d / CONFIG_FILE).read_text()), tensors
        model = ResNet1D(ModelConfig.from_dict(cfg["model"]))
        model.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001 - safetensors/torch raise many types on bad files
        msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise InputError(
            f"cannot load the model in {d} ({msg}); model.safetensors must be a safetensors "
            "file written by 'xtec classify train' (pickles are never loaded)"
        ) from None
    model.eval()
    return model, cfg
