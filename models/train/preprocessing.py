"""The card's preprocessing for ChestCOVNet: what every training run starts from (``--equalize`` and
``--crop`` override parts of it for ablations)."""

from __future__ import annotations

from models.efficientnet_lite import IMAGENET_MEAN, IMAGENET_STD
from xai.preprocessing import Preprocessing

#: The card's preprocessing for ChestCOVNet (see :mod:`models.train` for why each choice).
CHESTCOVNET_PREPROCESSING = Preprocessing(input_size=224, channels=3, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                          resize="stretch", equalize="hist", crop="body")
