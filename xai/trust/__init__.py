"""Can this map be trusted? Tools that judge saliency maps and inputs (pure library, no UI).

- ``xai.trust.metrics``: Spearman, SSIM, top-k% IoU, Otsu, pointing game, energy share, AUC.
- ``xai.trust.sanity``: cascading weight randomisation (Adebayo et al. 2018).
- ``xai.trust.stability``: maps under small label-preserving changes and a second checkpoint.
- ``xai.trust.faithfulness``: deletion / insertion curves and AUC (Petsiuk et al. 2018).
- ``xai.trust.agreement``: agreement with a radiologist's box or mask (CheXlocalize conventions).
- ``xai.trust.integrated_gradients``: Integrated Gradients reference method (Sundararajan et al. 2017).
- ``xai.trust.ood``: out-of-distribution score (Mahalanobis on penultimate features) and header hints.

Submodules are imported on demand so ``import xai.trust`` stays cheap.
"""

from __future__ import annotations

from typing import Any

# Every progress callback in this package has this shape: progress(fraction in [0, 1], message).
_LAZY = {
    "sanity_check": "xai.trust.sanity",
    "SanityResult": "xai.trust.sanity",
    "stability": "xai.trust.stability",
    "StabilityResult": "xai.trust.stability",
    "faithfulness": "xai.trust.faithfulness",
    "FaithfulnessResult": "xai.trust.faithfulness",
    "agreement": "xai.trust.agreement",
    "AgreementResult": "xai.trust.agreement",
    "integrated_gradients": "xai.trust.integrated_gradients",
    "IGResult": "xai.trust.integrated_gradients",
    "ood_score": "xai.trust.ood",
    "OODResult": "xai.trust.ood",
    "stability_summary": "xai.trust.stability",
    "spearman": "xai.trust.metrics",
    "ssim": "xai.trust.metrics",
    "top_k_iou": "xai.trust.metrics",
    "otsu_threshold": "xai.trust.metrics",
    "otsu_mask": "xai.trust.metrics",
    "otsu_iou": "xai.trust.metrics",
    "pointing_game": "xai.trust.metrics",
    "energy_inside": "xai.trust.metrics",
    "auc_trapezoid": "xai.trust.metrics",
}
_ALIASES = {"ood_score": "score"}


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'xai.trust' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module_name), _ALIASES.get(name, name))


__all__ = sorted(_LAZY)
