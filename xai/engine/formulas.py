"""The CAM and display formulas, each with its equation and paper (see the package docstring)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

GUIDED_CLIP_QUANTILE = 0.995
_FLAT_RTOL = 1e-6  # max - min <= 1e-6 * max counts as constant (a few float32 ulps)





def gradcam_weights(grad: torch.Tensor) -> torch.Tensor:
    """Grad-CAM channel weights ``w_k = mean_ab dS/dA_kab``: ``(N, K, h, w) -> (N, K)``."""
    return grad.mean(dim=(2, 3))


def gradcam_plus_plus_alphas(grad: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """Grad-CAM++ per-pixel coefficients (Chattopadhyay et al. 2018, eq. 19, exponential score ``exp(S)``):
    ``(N, K, h, w) x2 -> (N, K, h, w)``.

    ``alpha_kab = g_kab^2 / (2 g_kab^2 + sum_cd A_kcd * g_kab^3)`` with ``g = dS/dA``; ``alpha = 0`` exactly
    where the denominator is 0 (no epsilon, which would dominate ``g^2`` for small gradients).
    """
    g2 = grad * grad
    g3 = g2 * grad
    denominator = 2.0 * g2 + activations.sum(dim=(2, 3), keepdim=True) * g3
    zero = denominator == 0
    return torch.where(zero, torch.zeros_like(g2), g2 / torch.where(zero, torch.ones_like(g2), denominator))


def gradcam_plus_plus_weights(
    grad: torch.Tensor, activations: torch.Tensor, alphas: torch.Tensor | None = None
) -> torch.Tensor:
    """Grad-CAM++ channel weights (eq. 19): ``w_k = sum_ab alpha_kab * ReLU(g_kab)``, ``(N, K, h, w) -> (N, K)``.

    ``alphas``: :func:`gradcam_plus_plus_alphas` of the same arguments when the caller already has them.
    """
    if alphas is None:
        alphas = gradcam_plus_plus_alphas(grad, activations)
    return (alphas * torch.relu(grad)).sum(dim=(2, 3))


def weighted_cam(weights: torch.Tensor, activations: torch.Tensor) -> torch.Tensor:
    """``ReLU(sum_k w_k A_k)``: ``(N, K)``, ``(N, K, h, w) -> (N, h, w)``."""
    return torch.relu(torch.einsum("nk,nkhw->nhw", weights, activations))


def _flat(vmax: torch.Tensor, vmin: torch.Tensor) -> torch.Tensor:
    """Per image: a non-finite value (max/min propagate NaN and inf), no positive maximum, or
    max - min within float noise of max (a constant map)."""
    finite = torch.isfinite(vmax) & torch.isfinite(vmin)
    return ~finite | ~(vmax > 0) | ((vmax - vmin) <= _FLAT_RTOL * vmax)


def _scaled(v: torch.Tensor, scale: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``clip(v / scale, 0, 1)`` per image (``v (N, H, W)``, ``scale (N,)``), flat images all zero."""
    display = (v / scale.clamp_min(torch.finfo(v.dtype).tiny)[:, None, None]).clamp_(0.0, 1.0)
    if bool(flat.any()):
        display[flat] = 0.0
    return display


def cam_display(
    raw: torch.Tensor, size: tuple[int, int], upsampled: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(display (N, H, W) in [0, 1], flat (N,), upsampled raw (N, H, W))`` for a CAM ``raw (N, h, w)``.

    Bilinear upsampling (``align_corners=False``; ``upsampled``: :func:`upsample_cam` of ``raw`` when the
    caller already has it), then division by the per-image maximum; flat maps become zeros.
    """
    vmin, vmax = torch.aminmax(raw.flatten(1), dim=1)
    flat = _flat(vmax, vmin)
    up = upsample_cam(raw, size) if upsampled is None else upsampled
    return _scaled(up, up.flatten(1).amax(dim=1), flat), flat, up


def upsample_cam(raw: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear upsampling (``align_corners=False``) of a CAM ``(N, h, w)`` to ``size``: ``(N, H, W)``."""
    return F.interpolate(raw[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def upper_quantile(v: torch.Tensor, q: float) -> torch.Tensor:
    """Per-row ``q`` quantile of ``v (N, M)`` with linear interpolation (numpy's default), for q near 1.

    Uses ``topk`` over the upper tail only, much cheaper than a full sort for 0.995 on large maps.
    """
    n = v.shape[1]
    pos = q * (n - 1)
    lo = int(np.floor(pos))
    frac = pos - lo
    k = n - lo  # ascending index lo is the k-th largest
    top = torch.topk(v, k, dim=1, largest=True, sorted=True).values
    v_lo = top[:, k - 1]
    v_hi = top[:, k - 2] if k >= 2 else v_lo
    return v_lo + (v_hi - v_lo) * frac


def channel_abs_max(raw: torch.Tensor) -> torch.Tensor:
    """``max_c |raw[:, c]|``: ``(N, C, H, W) -> (N, H, W)``.

    (``torch.linalg.vector_norm(raw, inf, dim=1)`` is the same number but measured 70x slower on CPU.)
    """
    return raw.abs().amax(dim=1)


def guided_display(
    raw: torch.Tensor, magnitude: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(display (N, H, W) in [0, 1], flat (N,))`` for a signed guided map ``raw (N, C, H, W)``.

    ``|raw|``, max over channels, clipped at the 99.5th percentile (per image), scaled to [0, 1]; when
    the percentile is 0 (a very sparse map) the maximum is used instead. ``magnitude``: the channel
    maximum of ``|raw|`` when the caller already has it.
    """
    v = channel_abs_max(raw) if magnitude is None else magnitude
    flat_v = v.flatten(1)
    vmin, vmax = torch.aminmax(flat_v, dim=1)
    flat = _flat(vmax, vmin)
    hi = upper_quantile(flat_v, GUIDED_CLIP_QUANTILE)
    return _scaled(v, torch.where(hi > 0, hi, vmax), flat), flat
