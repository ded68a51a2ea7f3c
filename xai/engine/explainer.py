"""The :class:`Explainer`: one forward pass, the passes the requested methods need, the method table."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from xai.arrays import read_only
from xai.engine import methods as method_table
from xai.engine.inputs import (
    Target,
    _as_float,
    _check_methods,
    _Clock,
    _versions,
    check_input,
    model_device_dtype,
    resolve_targets,
)
from xai.engine.locks import _buffers_restored, _last_linear_of, model_lock
from xai.engine.methods import Passes
from xai.engine.record import Explanation
from xai.folding import shared_fold_cache
from xai.guided import GraphReport, GuidedState, guide_graph
from xai.layers import TargetLayer, default_target_name, find_last_spatial_layer, resolve_module
from xai.method_names import METHODS
from xai.scores import probabilities


class Explainer:
    """Explain a classifier's logits with Grad-CAM, Grad-CAM++, Guided Backprop and Guided Grad-CAM.

    Args:
        model: any ``torch.nn.Module`` returning logits ``(N, C)``. It is shared, never modified.
        target_layer: the layer whose output feature map ``(N, K, h, w)`` the CAMs explain: a submodule,
            a dotted name (``"layer4"``), or ``None`` for the automatic choice (see :mod:`xai.layers`).
        fold_batchnorm: in eval mode, run the passes on a copy with conv + batch-norm pairs folded
            (:mod:`xai.folding`: same maps to float rounding, 3-8 % faster on resnet18; one extra copy of
            the weights per model, shared by all its explainers, rebuilt when they change). ``False`` runs
            the model itself.

    Raises:
        ValueError: unknown layer name (the message lists the valid names), or a module not in ``model``.
    """

    def __init__(self, model: nn.Module, target_layer: TargetLayer = None, *, fold_batchnorm: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self._fold = bool(fold_batchnorm)
        self._resolved: tuple[nn.Module, str] | None = None
        self._resolve_lock = threading.Lock()
        spec = target_layer if target_layer is not None else default_target_name(model)
        if spec is not None:
            self._resolved = resolve_module(model, spec)

    @property
    def target_layer_name(self) -> str:
        """Dotted name of the target layer (found by a dry run on a 224 px input for unknown models)."""
        return self._target(None)[1]

    @property
    def target_layer(self) -> nn.Module:
        """The target layer module."""
        return self._target(None)[0]

    def _target(self, example: torch.Tensor | None) -> tuple[nn.Module, str]:
        if self._resolved is None:
            with self._resolve_lock:
                if self._resolved is None:
                    self._resolved = resolve_module(self.model, self._find_fallback(example))
        return self._resolved

    def _find_fallback(self, example: torch.Tensor | None) -> str:
        device, dtype = model_device_dtype(self.model, example if example is not None else torch.zeros(()))
        if example is None:
            dry = torch.zeros(1, 3, 224, 224, device=device, dtype=dtype)
        else:
            dry = example[:1].detach().to(device=device, dtype=dtype)

        def run() -> None:
            self.model(dry)

        with (
            model_lock(self.model),
            _buffers_restored(self.model) if self.model.training else contextlib.nullcontext(),
            torch.no_grad(),
        ):
            try:
                return find_last_spatial_layer(self.model, run)
            except ValueError:
                raise
            except Exception as error:
                raise ValueError(
                    f"could not find a target layer for {type(self.model).__name__} automatically "
                    f"({type(error).__name__}: {error}); pass target_layer explicitly"
                ) from error

    def explain(
        self,
        x: torch.Tensor,
        target: Target = None,
        methods: str | Iterable[str] = METHODS,
        *,
        details: bool = False,
    ) -> Explanation:
        """Compute the requested maps for the ``target`` logit of every image in ``x``.

        Args:
            x: preprocessed float tensor ``(N, C, H, W)``; moved to the model's device (a copy; the
                caller's tensor is never modified).
            target: class index for all images, one index per image, ``None`` for each image's
                predicted class (argmax of the logits), or a :data:`TargetRule` that picks one class per
                image from the forward pass's probabilities (before the backward pass).
            methods: any subset of :data:`METHOD_TABLE` (the four of :data:`METHODS` unless more were
                registered).
            details: also return the CAMs' intermediate quantities (:data:`DETAILS`) in
                ``Explanation.details``, from the same passes (no second forward pass).

        Returns:
            An :class:`Explanation`.

        Raises:
            ValueError / TypeError: bad input, target, method names, or a model/layer that does not fit
                (non-4-D target map, output not ``(N, C)``); the model is left untouched.
        """
        methods = _check_methods(methods)
        x = check_input(x)
        module, layer_name = self._target(x)
        device, dtype = model_device_dtype(self.model, x)
        clock = _Clock(device)
        need_cam = bool(details) or any(method_table._TABLE[m].needs_target_gradient for m in methods)
        need_guided = any(method_table._TABLE[m].needs_input_gradient for m in methods)
        notes: list[str] = []
        if self.model.training:
            notes.append(
                "the model is in training mode: dropout is active and batch-norm uses batch statistics "
                "(call model.eval() for deterministic, per-image explanations); its buffers were restored"
            )
        logits, targets, features, passes = self._passes(
            x, target, module, layer_name, device, dtype, need_cam, need_guided, notes, clock
        )

        raw: dict[str, torch.Tensor] = {}
        maps: dict[str, torch.Tensor] = {}
        flat: dict[str, torch.Tensor] = {}
        for method in methods:
            raw[method] = passes.raw(method)
            maps[method], flat[method] = method_table._TABLE[method].display(passes, method)
            clock.lap(method_table._TABLE[method].stage)
        detail_arrays = passes.details() if details else None
        if passes.activations is not None and passes.activations.shape[2] * passes.activations.shape[3] == 1:
            notes.append("the target layer map is 1x1 at this input size: CAMs carry no spatial information")

        logits_d = logits.detach()
        if logits_d.shape[1] == 1:
            notes.append("single-logit model: probabilities are sigmoid(logit)")
        return Explanation(
            logits=read_only(logits_d),
            probabilities=read_only(probabilities(logits_d)),
            target=read_only(targets, np.dtype(np.int64)),
            target_layer=layer_name,
            maps={m: read_only(maps[m], np.dtype(np.float32)) for m in methods},
            raw={m: read_only(raw[m]) for m in methods},
            flat={m: read_only(flat[m], np.dtype(bool)) for m in methods},
            timings=clock.total(),
            versions=_versions(),
            notes=tuple(notes),
            features=None if features is None else read_only(features.flatten(1), np.dtype(np.float32)),
            details=detail_arrays,
        )

    # ------------------------------------------------------------------------------------------ stages

    def _passes(
        self,
        x: torch.Tensor,
        target: Target,
        module: nn.Module,
        layer_name: str,
        device: torch.device,
        dtype: torch.dtype,
        need_cam: bool,
        need_guided: bool,
        notes: list[str],
        clock: _Clock,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None, Passes]:
        """The shared forward pass and backward pass(es): ``(logits, targets, features, Passes)``."""
        with (
            # Training mode: batch-norm's backward needs its buffers as they were in the forward pass, so
            # they are restored only after the backward pass, holding the model lock throughout.
            model_lock(self.model) if self.model.training else contextlib.nullcontext(),
            _buffers_restored(self.model) if self.model.training else contextlib.nullcontext(),
            torch.inference_mode(False),
            torch.enable_grad(),
        ):
            # The gradient is taken w.r.t. a new tensor object (an alias of the caller's data, whose own
            # flags are untouched; a copy for inference tensors, which cannot require grad); the model gets
            # a copy (so that a model applying an in-place op to its input still runs, and the caller
            # cannot change the values under it).
            leaf = x.detach().to(device=device, dtype=dtype)
            if leaf.is_inference():
                leaf = leaf.clone()
            leaf.requires_grad_(True)
            runner, runner_layer = self._runner(module, layer_name)
            logits, captured, calls, features = self._forward(runner, leaf.clone(), runner_layer,
                                                              _last_linear_of(runner))
            clock.lap("forward")

            logits = self._check_logits(logits, x.shape[0])
            targets = resolve_targets(target, logits)
            activations = self._check_activations(captured, calls, layer_name, notes) if need_cam else None
            score = logits.gather(1, targets[:, None]).sum()
            state, report = None, None
            if need_guided:
                # The guided rule goes onto this call's graph (see xai.guided); the model is untouched.
                state = GuidedState(guided=True)
                target_node = activations.grad_fn if activations is not None else None
                report = guide_graph(score.grad_fn, state, target_node)
            grad_x, grad_a = self._backward(score, leaf, activations, state, report, notes)
            clock.lap("backward")
        if report is not None:
            self._guided_notes(report, notes)
        a = None if activations is None else _as_float(activations.detach())
        g = None if grad_a is None else _as_float(grad_a)
        gx = None if grad_x is None else _as_float(grad_x)
        return logits, targets, features, Passes(a, g, gx, (x.shape[2], x.shape[3]))

    def _runner(self, module: nn.Module, layer_name: str) -> tuple[nn.Module, nn.Module]:
        """The model to run and its target layer: the folded copy when there is one, else the model."""
        folded = shared_fold_cache(self.model).get((layer_name,)) if self._fold else None
        if folded is None:
            return self.model, module
        return folded, folded.get_submodule(layer_name)

    @staticmethod
    def _forward(
        model: nn.Module, model_input: torch.Tensor, module: nn.Module, linear: nn.Module | None
    ) -> tuple[Any, Any, int, torch.Tensor | None]:
        """One forward pass of ``model`` with the target layer's output and the input of ``linear`` (the
        last ``nn.Linear``: the penultimate features) captured, for the calling thread only."""
        thread_id = threading.get_ident()
        captured: list[Any] = []
        features: list[torch.Tensor] = []

        def capture(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if threading.get_ident() != thread_id:
                return  # another thread (e.g. plain inference) running the shared model
            captured.append(output)

        def capture_features(_module: nn.Module, inputs: tuple[Any, ...]) -> None:
            if threading.get_ident() == thread_id and inputs and isinstance(inputs[0], torch.Tensor):
                features.append(inputs[0].detach())

        with model_lock(model):
            handles = [module.register_forward_hook(capture)]
            try:
                if linear is not None:
                    handles.append(linear.register_forward_pre_hook(capture_features))
                logits = model(model_input)
            finally:
                for handle in handles:
                    handle.remove()
        return logits, (captured[-1] if captured else None), len(captured), (features[-1] if features else None)

    @staticmethod
    def _check_logits(logits: Any, n: int) -> torch.Tensor:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or logits.shape[0] != n:
            shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
            raise ValueError(f"the model must return logits of shape (N, C) = ({n}, C); got {shape}")
        if not logits.requires_grad:
            raise ValueError("the model's output does not depend on its input through autograd")
        return logits

    @staticmethod
    def _check_activations(captured: Any, calls: int, layer_name: str, notes: list[str]) -> torch.Tensor:
        if calls == 0:
            raise ValueError(f"target layer {layer_name!r} did not run during the forward pass")
        if not isinstance(captured, torch.Tensor) or captured.dim() != 4:
            shape = tuple(captured.shape) if isinstance(captured, torch.Tensor) else type(captured).__name__
            raise ValueError(
                f"target layer {layer_name!r} must return a 4-D feature map (N, K, h, w); got {shape}"
            )
        if not captured.requires_grad:
            raise ValueError(f"target layer {layer_name!r} output does not depend on the input (no gradient)")
        if calls > 1:
            notes.append(
                f"target layer {layer_name!r} ran {calls} times in one forward pass; its last output was used"
            )
        return captured

    @staticmethod
    def _backward(
        score: torch.Tensor,
        leaf: torch.Tensor,
        activations: torch.Tensor | None,
        state: GuidedState | None,
        report: GraphReport | None,
        notes: list[str],
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """``(guided input gradient or None, plain target-layer gradient or None)``.

        One guided pass serves both when no ReLU lies between the score and the target layer's output (the
        guided rule then changes nothing above the target layer); otherwise a plain pass to the target layer
        first (retaining the graph), then the guided pass to the input. ``state``/``report`` are ``None``
        when no guided map is requested.
        """
        grad_x: torch.Tensor | None = None
        grad_a: torch.Tensor | None = None
        need_guided = state is not None
        if activations is not None and state is not None and report is not None:
            if report.relus_above_target == 0:
                state.guided = True
                grad_x, grad_a = torch.autograd.grad(score, [leaf, activations], allow_unused=True)
            else:
                notes.append(
                    f"{report.relus_above_target} ReLU(s) above the target layer: two backward "
                    "passes (plain for the CAM gradient, guided for the input gradient)"
                )
                state.guided = False
                (grad_a,) = torch.autograd.grad(score, [activations], retain_graph=True, allow_unused=True)
                state.guided = True
                (grad_x,) = torch.autograd.grad(score, [leaf], allow_unused=True)
        elif activations is not None:
            (grad_a,) = torch.autograd.grad(score, [activations], allow_unused=True)
        else:
            (grad_x,) = torch.autograd.grad(score, [leaf], allow_unused=True)
        if activations is not None and grad_a is None:
            notes.append("the target layer does not influence the explained logit: CAMs are zero")
            grad_a = torch.zeros_like(activations)
        if need_guided and grad_x is None:
            notes.append("the input does not influence the explained logit: guided maps are zero")
            grad_x = torch.zeros_like(leaf)
        return grad_x, grad_a

    @staticmethod
    def _guided_notes(report: GraphReport, notes: list[str]) -> None:
        if report.relus == 0:
            notes.append(
                "no ReLU in the model's graph: guided backpropagation equals the plain input gradient"
            )
        if report.opaque:
            found = ", ".join(f"{name} x{count}" for name, count in sorted(report.opaque.items()))
            notes.append(
                f"opaque autograd nodes ({found}): ReLUs inside custom or compiled functions are not guided"
            )
        if report.other_activations:
            found = ", ".join(f"{name} x{count}" for name, count in sorted(report.other_activations.items()))
            notes.append(
                f"guided backpropagation passes the plain gradient through non-ReLU activations ({found}); "
                "the guided rule applies to ReLU and ReLU6 only"
            )
