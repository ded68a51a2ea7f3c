"""A compact U-Net for lung-field segmentation (the architecture behind :mod:`xai.anatomy`).

Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image Segmentation", MICCAI 2015,
made small for a CPU: ``widths`` channels per level (default 8, 16, 32, 64, 128 -> four 2x2 max-pool
downsamplings, an 8 x 8 bottleneck at 128 px), each level two 3x3 conv -> BatchNorm -> ReLU blocks, bilinear
x2 upsampling and skip concatenation on the way up, a 1x1 conv to ``out_channels`` logits.

The architecture lives in ``xai`` (the library may not import the ``models`` package); ``models.lungs`` and
``models.train_lungs`` reuse it. Weights are only ever read from safetensors.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DEFAULT_WIDTHS", "LungUNet"]

DEFAULT_WIDTHS: tuple[int, ...] = (8, 16, 32, 64, 128)


class _DoubleConv(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
        )


class LungUNet(nn.Module):
    """U-Net: ``(N, in_channels, S, S)`` -> logits ``(N, out_channels, S, S)``; S must be divisible by 2**(levels-1).

    ``out_channels`` = one logit map per mask convention (see :mod:`xai.anatomy`).
    """

    def __init__(self, in_channels: int = 1, out_channels: int = 2, widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if len(widths) < 2 or any(w < 1 for w in widths):
            raise ValueError(f"widths must list at least two positive channel counts, got {widths!r}")
        self.widths = widths
        self.down = nn.ModuleList()
        c = in_channels
        for w in widths:
            self.down.append(_DoubleConv(c, w))
            c = w
        self.up = nn.ModuleList(_DoubleConv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1)))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        factor = 2 ** (len(self.widths) - 1)
        if x.shape[-1] % factor or x.shape[-2] % factor:
            raise ValueError(f"input side must be divisible by {factor}, got {tuple(x.shape[-2:])}")
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for block in self.up:
            x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.head(x)
