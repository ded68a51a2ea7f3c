"""A model's outputs in eval mode (its own mode restored after): probabilities and logits from cached
front features or cached images, and the classifier's input."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from models.data import normalize
from models.efficientnet_lite import HEAD_CHANNELS, EfficientNetLite0
from xai.preprocessing import Preprocessing
from xai.scores import probabilities


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode inside the block; the model's own mode comes back after it, also on an error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@torch.no_grad()
def predict_features(model: EfficientNetLite0, feats: torch.Tensor, n_blocks: int, batch_size: int = 128,
                     positive_index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probabilities and logits from cached front features; model left in its mode."""
    with eval_mode(model):
        z = torch.cat([model.forward_rest(feats[i:i + batch_size].float(), n_blocks)
                       for i in range(0, len(feats), batch_size)])
    return probabilities(z)[:, positive_index].numpy().astype(np.float64), z.numpy()


@torch.no_grad()
def pooled_features(model: EfficientNetLite0, feats: torch.Tensor, n_blocks: int, batch_size: int = 128) -> np.ndarray:
    """The classifier's input (pooled ``head_act``, (N, 1280)) from cached front features, in eval mode."""
    with eval_mode(model):
        out = [model.pool(model.forward_rest(feats[i:i + batch_size].float(), n_blocks, return_features=True)[1])
               .flatten(1) for i in range(0, len(feats), batch_size)]
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros((0, HEAD_CHANNELS))


@torch.no_grad()
def predict_images(model: EfficientNetLite0, images: np.ndarray, pre: Preprocessing, batch_size: int = 64,
                   positive_index: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Positive-class probabilities and logits for cached display-space images; model left in its mode."""
    with eval_mode(model):
        z = torch.cat([model(normalize(torch.from_numpy(images[i:i + batch_size]), pre))
                       for i in range(0, len(images), batch_size)]) if len(images) else torch.zeros(0, 2)
    return probabilities(z)[:, positive_index].numpy().astype(np.float64), z.numpy()
