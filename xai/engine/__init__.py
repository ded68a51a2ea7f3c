"""The explanation engine: Grad-CAM, Grad-CAM++, Guided Backprop and Guided Grad-CAM from one forward pass.

One job per module: :mod:`~xai.engine.record` (the :class:`Explanation`), :mod:`~xai.engine.formulas` (the CAM
and display formulas), :mod:`~xai.engine.methods` (the shared passes and the method table),
:mod:`~xai.engine.locks` (safety on a shared model), :mod:`~xai.engine.inputs` (input checks, targets) and
:mod:`~xai.engine.explainer` (the :class:`Explainer`). Import public names from ``xai.engine``.

    >>> from xai import Explainer, METHODS
    >>> explanation = Explainer(model).explain(x)          # x: (N, 3, H, W) preprocessed float tensor
    >>> explanation.maps["gradcam"]                          # float32 (N, H, W) in [0, 1], read-only

Methods (S = the target class *logit*, A = the target layer's feature map (N, K, h, w), g = dS/dA):

* Grad-CAM (Selvaraju et al. 2017): ``w_k = mean_ab g_kab``; ``raw = ReLU(sum_k w_k A_k)``.
* Grad-CAM++ (Chattopadhyay et al. 2018, eq. 19, exponential score ``exp(S)``):
  ``alpha = g^2 / (2 g^2 + sum_ab A_kab * g^3)`` (alpha = 0 exactly where the denominator is 0, no
  epsilon), ``w_k = sum_ab alpha * ReLU(g)``, ``raw = ReLU(sum_k w_k A_k)``; not multiplied by ``exp(S)``
  (a positive factor that only rescales the map).
* Guided Backprop (Springenberg et al. 2015): the input gradient with the guided rule on every ReLU
  (see :mod:`xai.guided`); ``raw`` is signed ``(N, C, H, W)``.
* Guided Grad-CAM: guided backprop times the Grad-CAM raw map bilinearly upsampled
  (``align_corners=False``) to the input size.

One forward pass serves all four. The CAMs need ``g`` at the target layer, guided backprop the guided
input gradient. The guided rule changes only ReLU backward passes; when no ReLU lies between the score
and the target layer's output (found in this call's autograd graph: true for resnet, densenet,
efficientnet, mobilenet_v3, convnext, ChestCOVNet), ``g`` is the same under both rules and ONE guided
backward pass
``torch.autograd.grad(S, [x, A])`` yields both. Otherwise (e.g. VGG's ReLU head) a short plain pass to
``A`` precedes the guided pass to ``x`` over the same graph. ``autograd.grad`` never touches ``.grad``
and never computes parameter gradients.

Methods are entries of one table (:data:`METHOD_TABLE`, :class:`Method`): a function from the shared
passes (:class:`Passes`: ``A``, ``g``, the guided input gradient, and the quantities several methods share,
each computed once) to a raw map, plus its display rule. ``explain`` only runs the passes the requested
entries need and loops over them; :func:`register_method` adds a method without touching ``explain``.

Intermediate quantities (``explain(..., details=True)``, :data:`DETAILS`): ``A``, ``g``, the Grad-CAM
weights, the Grad-CAM++ alphas and weights, as read-only arrays from the same passes (no second forward);
``Explanation.details`` is ``None`` otherwise.

Display maps (``maps``): CAMs upsampled bilinearly to the input size and divided by their per-image
maximum (zero stays zero); guided maps: ``|raw|``, max over channels, clipped at the 99.5th percentile,
scaled to [0, 1]. A map that is constant or all zero is flagged in ``flat`` and shown as zeros, never
stretched noise.

Speed: in eval mode the passes run on a cached copy of the model with its conv + batch-norm pairs of
known wiring folded (:mod:`xai.folding`): the same maps to float rounding, one sweep fewer over the
activations per folded layer. The copy is cached per model, weakly (shared by every explainer of it, so
``Explainer(model).explain(x)`` in a loop costs what a reused explainer costs, and freed with the model),
and rebuilt when a weight, module, mode or plain attribute of the model changes; models with hooks, in
training mode or wrapped in unknown code run as they are. Probabilities follow the one rule of
:func:`xai.scores.probabilities` (softmax; sigmoid for a single logit).

Safety: the target-layer hook exists only during the forward pass (removed in ``finally``) and records
only the calling thread; hook registration and forward run under a per-model lock, so concurrent
``explain`` calls on one shared model cannot see each other's hooks; the guided rule lives on the call's
own autograd graph (:func:`xai.guided.guide_graph`). The model is never modified: no hooks or ``.grad`` left, ``requires_grad`` flags
and train/eval mode untouched. A model in training mode is explained as it is (dropout active,
batch-norm on batch statistics; a note says so) and its buffers (batch-norm running statistics) are
restored after the backward pass, the model lock being held for the whole call.
"""

from __future__ import annotations

from xai.engine.explainer import Explainer
from xai.engine.formulas import (
    GUIDED_CLIP_QUANTILE,
    cam_display,
    channel_abs_max,
    gradcam_plus_plus_alphas,
    gradcam_plus_plus_weights,
    gradcam_weights,
    guided_display,
    upper_quantile,
    upsample_cam,
    weighted_cam,
)
from xai.engine.inputs import Target, TargetRule, check_input, model_device_dtype, resolve_targets
from xai.engine.locks import model_lock
from xai.engine.methods import DETAILS, METHOD_TABLE, Method, Passes, cam_view, guided_view, register_method
from xai.engine.record import Explanation
from xai.method_names import METHODS

__all__ = [
    "DETAILS",
    "GUIDED_CLIP_QUANTILE",
    "METHODS",
    "METHOD_TABLE",
    "Explainer",
    "Explanation",
    "Method",
    "Passes",
    "Target",
    "TargetRule",
    "cam_display",
    "cam_view",
    "channel_abs_max",
    "check_input",
    "gradcam_plus_plus_alphas",
    "gradcam_plus_plus_weights",
    "gradcam_weights",
    "guided_display",
    "guided_view",
    "model_device_dtype",
    "model_lock",
    "register_method",
    "resolve_targets",
    "upper_quantile",
    "upsample_cam",
    "weighted_cam",
]
