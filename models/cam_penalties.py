"""The training penalties on where Grad-CAM's evidence lies: outside the lungs, or in the film's border band.

With global average pooling and a linear classifier, Grad-CAM is available in the forward pass (Selvaraju et
al. 2017), so its share outside a region is differentiable and can be penalised ("right for the right
reasons", Ross et al. 2017): evidence moves into the lungs and off film edges, labels and markers.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from models.efficientnet_lite import EfficientNetLite0

#: Side of the model input the Grad-CAM penalties are measured on, and the border band they fall back to.
CAM_SIZE = 224
BORDER_FRACTION = 0.10


def _cell_mass(h: int, w: int, size: int) -> torch.Tensor:
    """(h*w, size, size): where the unit mass of each cell of an (h, w) map lands after bilinear upsampling
    to ``size`` (as the engine upsamples Grad-CAM)."""
    basis = torch.eye(h * w).view(h * w, 1, h, w)
    return F.interpolate(basis, size=(size, size), mode="bilinear", align_corners=False)[:, 0]


def _band_weights(h: int, w: int, size: int, fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """For each cell of an (h, w) map: its mass after bilinear upsampling to ``size`` (as the engine does),
    and the part of that mass inside the outer ``fraction`` band of the upsampled map."""
    up = _cell_mass(h, w, size)
    band = max(1, round(fraction * size))
    inner = up[:, band:size - band, band:size - band].sum((1, 2))
    total = up.sum((1, 2))
    return total.view(h, w), (total - inner).view(h, w)


def dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of (N, S, S) masks by a disc of ``radius`` pixels."""
    import cv2

    if radius <= 0:
        return masks.astype(np.uint8)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return np.stack([cv2.dilate(m.astype(np.uint8), kernel) for m in masks]) if len(masks) else masks


def outside_weights(masks: np.ndarray, has_mask: np.ndarray, h: int, w: int, size: int = CAM_SIZE,
                    fraction: float = BORDER_FRACTION) -> tuple[torch.Tensor, torch.Tensor]:
    """(total (h, w), outside (N, h, w)): for each cell of an (h, w) CAM, its upsampled mass, and the part
    of it outside image n's region — the (dilated) lung mask where ``has_mask``, else the central region
    inside the outer ``fraction`` band (the border penalty)."""
    up = _cell_mass(h, w, size).reshape(h * w, -1)
    total, band = _band_weights(h, w, size, fraction)
    out = band.expand(len(masks), h, w).clone()
    idx = np.flatnonzero(has_mask)
    for start in range(0, len(idx), 256):
        rows = idx[start:start + 256]
        inside = torch.from_numpy(masks[rows].reshape(len(rows), -1).astype(np.float32)) @ up.T
        out[torch.from_numpy(rows)] = (up.sum(1) - inside).view(-1, h, w)
    return total, out


def cam_outside_share(model: EfficientNetLite0, features: torch.Tensor, target: torch.Tensor,
                      outside: torch.Tensor, total: torch.Tensor) -> torch.Tensor:
    """Differentiable share of Grad-CAM mass outside a region, per image.

    With global average pooling and a linear classifier, Grad-CAM's channel weights for class c are
    W[c, k] / (h w) (Selvaraju et al. 2017), so CAM_c = ReLU(sum_k W[c, k] A_k) is available in the forward
    pass. ``outside`` (N, h, w) / ``total`` (h, w) give each cell's upsampled mass outside the region and in
    all. Penalising the share ("right for the right reasons", Ross et al. 2017) moves evidence into the
    region (the lungs) and off film edges, burned-in labels and markers.
    """
    cam = F.relu(torch.einsum("nk,nkhw->nhw", model.classifier.weight[target], features))
    return (cam * outside).sum((1, 2)) / (cam * total).sum((1, 2)).clamp_min(1e-30)  # no eps that could dominate


def cam_border_share(model: EfficientNetLite0, features: torch.Tensor, target: torch.Tensor,
                     fraction: float = BORDER_FRACTION) -> torch.Tensor:
    """Share of Grad-CAM mass in the outer ``fraction`` band of the model input (:func:`cam_outside_share`
    with the band as the outside)."""
    total, band = _band_weights(features.shape[2], features.shape[3], CAM_SIZE, fraction)
    return cam_outside_share(model, features, target, band.expand(len(features), -1, -1), total)
