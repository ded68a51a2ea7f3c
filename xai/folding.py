"""Batch-norm folding for explanation passes: the same function with one pass fewer per layer.

In eval mode a ``BatchNorm2d`` right after a ``Conv2d`` is a per-channel affine map, so it can be folded
into the convolution (Ioffe & Szegedy 2015; the standard inference fusion, ``torch.nn.utils.fusion``):

    s = gamma / sqrt(running_var + eps)
    W' = W * s[:, None, None, None]        b' = (b - running_mean) * s + beta

``conv'(x) == bn(conv(x))`` up to float rounding, and the forward and backward passes each skip one sweep
over the activation. ``W'`` and ``b'`` are computed in float64 and rounded once to the model's dtype
(:func:`fuse_conv_bn`): folded in float32, ``s`` and the product each add a rounding, enough to move the
guided-backprop map of a seeded torchvision resnet18 off a float64 run on 3% of its values (|Δ| > 1e-4 of its
maximum) where the unfolded float32 run moves 0.5%; folded in float64 it moves fewer than the unfolded run. The engine runs its forward and backward pass on a folded *copy* of a model in eval
mode (:class:`FoldedModelCache`); the caller's model is never touched, module names are kept (a folded
batch-norm becomes ``nn.Identity``, so a hook on any named module still fires with the same value).

Only pairs whose wiring is known are folded — the convolution's output must feed the batch-norm and
nothing else, which module structure alone cannot prove for arbitrary ``forward`` code:

* consecutive children of an ``nn.Sequential`` (or a subclass that keeps Sequential's ``forward``, such
  as torchvision's ``Conv2dNormActivation``): torchvision efficientnet, mobilenet, densenet's stem;
* classes listed in :data:`KNOWN_PAIRS` (torchvision's ResNet, BasicBlock, Bottleneck), exact type only;
* classes that declare their own pairs in a ``foldable_conv_bn`` class attribute (ChestCOVNet's
  EfficientNet-Lite blocks), exact type only, so a subclass with another ``forward`` is never trusted;
* and only where every enclosing module, up to the model itself, is one of these or in
  :data:`KNOWN_MODULES`: a wrapper of unknown code may call a block's children directly.

A pair touching the target layer (the convolution whose output the CAMs need) is left as it is; a model
in training mode or carrying hooks is run as it is.

The copies are cached per model, not per explainer (:func:`shared_fold_cache`, a weak-key dictionary):
``Explainer(model).explain(x)`` with a new explainer per call costs what a reused explainer costs, the
copies are freed with the model, and any change to it (:func:`state_key`) makes the next call rebuild.
"""

from __future__ import annotations

import copy
import itertools
import threading
import weakref
from collections.abc import Collection

import torch
from torch import nn

#: ``module.class`` -> (conv attribute, batch-norm attribute) pairs whose forward is ``bn(conv(x))`` with
#: the convolution's output used nowhere else.
KNOWN_PAIRS: dict[str, tuple[tuple[str, str], ...]] = {
    "torchvision.models.resnet.ResNet": (("conv1", "bn1"),),
    "torchvision.models.resnet.BasicBlock": (("conv1", "bn1"), ("conv2", "bn2")),
    "torchvision.models.resnet.Bottleneck": (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
}
#: Classes whose forward is known to call their children as torchvision wrote it (Sequential-like blocks
#: inside them are run as Sequentials): the walk for pairs descends into these only.
KNOWN_MODULES: frozenset[str] = frozenset({
    *KNOWN_PAIRS,
    "torchvision.models.efficientnet.EfficientNet",
    "torchvision.models.efficientnet.MBConv",
    "torchvision.models.efficientnet.FusedMBConv",
    "torchvision.models.mobilenetv2.MobileNetV2",
    "torchvision.models.mobilenetv2.InvertedResidual",
    "torchvision.models.mobilenetv3.MobileNetV3",
    "torchvision.models.mobilenetv3.InvertedResidual",
    "torchvision.models.densenet.DenseNet",
})

#: Fold only when at least this share of the model's batch-norm layers can go (below it, e.g. densenet's
#: pre-activation layers, the copy's memory buys almost no time).
MIN_FOLDED_SHARE = 0.5


def _class_name(module: nn.Module) -> str:
    return f"{type(module).__module__}.{type(module).__qualname__}"


def _declared_pairs(module: nn.Module) -> tuple[tuple[str, str], ...]:
    declared = type(module).__dict__.get("foldable_conv_bn")  # this exact class, not a parent's promise
    if declared is not None:
        return tuple(declared)
    return KNOWN_PAIRS.get(_class_name(module), ())


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _is_known(module: nn.Module) -> bool:
    return (_is_plain_sequential(module) or _class_name(module) in KNOWN_MODULES
            or "foldable_conv_bn" in type(module).__dict__)


def _foldable(conv: nn.Module | None, bn: nn.Module | None) -> bool:
    return (
        type(conv) is nn.Conv2d
        and type(bn) is nn.BatchNorm2d
        and not conv.training
        and not bn.training
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.running_var is not None
        and conv.out_channels == bn.num_features
    )


def foldable_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """Dotted names ``(conv, batch_norm)`` of every pair this module folds (see the module docstring).

    Only modules whose every ancestor has a known forward are looked at: an unknown module may call its
    children in any order and reuse any output, so nothing below it is folded.
    """
    pairs: list[tuple[str, str]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        if not _is_known(module):
            return
        dot = f"{prefix}." if prefix else ""
        if _is_plain_sequential(module):
            children = list(module.named_children())
            candidates = [(a, b) for (a, _), (b, _) in itertools.pairwise(children)]
        else:
            candidates = list(_declared_pairs(module))
        for conv_name, bn_name in candidates:
            if _foldable(getattr(module, conv_name, None), getattr(module, bn_name, None)):
                pairs.append((dot + conv_name, dot + bn_name))
        for name, child in module.named_children():
            walk(child, dot + name)

    walk(model, "")
    return pairs


def folded_copy(model: nn.Module, keep: Collection[str] = ()) -> nn.Module | None:
    """A deep copy of ``model`` (eval mode) with its foldable conv + batch-norm pairs folded, parameters
    not requiring grad; ``None`` when the model is in training mode or too little of it folds.

    ``keep``: module names whose output must stay exactly as in ``model`` (the target layer); a pair that
    contains one is not folded.
    """
    if model.training or has_hooks(model):
        return None
    pairs = [(c, b) for c, b in foldable_pairs(model) if c not in keep and b not in keep]
    batch_norms = sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if not pairs or len(pairs) < MIN_FOLDED_SHARE * batch_norms:
        return None
    clone = copy.deepcopy(model)
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv, bn = clone.get_submodule(conv_name), clone.get_submodule(bn_name)
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)  # foldable_pairs checked both
            _replace(clone, conv_name, fuse_conv_bn(conv, bn))
            _replace(clone, bn_name, nn.Identity())
    clone.requires_grad_(False)
    return clone.eval()


def fuse_conv_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A copy of ``conv`` computing ``bn(conv(x))`` (eval mode): the module docstring's ``W'`` and ``b'``, worked
    out in float64 and rounded once to ``conv``'s dtype (``torch.nn.utils.fusion.fuse_conv_bn_eval`` computes
    them in the weights' own dtype, rounding ``s`` and every product on the way)."""
    fused = copy.deepcopy(conv)
    w = conv.weight.detach().double()
    b = conv.bias.detach().double() if conv.bias is not None else w.new_zeros(conv.out_channels)
    gamma = bn.weight.detach().double() if bn.weight is not None else torch.ones_like(b)
    beta = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(b)
    mean, var = bn.running_mean, bn.running_var
    if mean is None or var is None:
        raise ValueError(f"a batch-norm without running statistics cannot be folded: {bn}")
    s = gamma / torch.sqrt(var.double() + bn.eps)
    fused.weight = nn.Parameter((w * s.view(-1, *([1] * (w.dim() - 1)))).to(conv.weight.dtype))
    fused.bias = nn.Parameter(((b - mean.double()) * s + beta).to(conv.weight.dtype))
    return fused


def has_hooks(model: nn.Module) -> bool:
    """Whether any module of ``model`` carries a hook: such a model is explained exactly as it runs (a
    copy would carry the hooks onto folded layers whose outputs differ)."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(m, n, None) for m in model.modules() for n in names)


def _replace(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


_SIMPLE = frozenset({bool, int, float, str, type(None)})


def _plain_attributes(module: nn.Module) -> tuple:
    """The module's plain attributes as comparable pairs: flags, numbers, strings and tuples/lists of them
    (a convolution's stride or padding); tensors, modules and hook dictionaries are left to the rest of
    :func:`state_key`."""
    items = []
    for name, value in vars(module).items():
        kind = type(value)
        if kind in _SIMPLE:
            items.append((name, value))
        elif (kind is tuple or kind is list) and all(type(v) in _SIMPLE for v in value):
            items.append((name, tuple(value)))
    return tuple(items)


def state_key(model: nn.Module) -> tuple:
    """Changes whenever a folded copy of ``model`` would be stale: a parameter or buffer replaced or
    modified in place (identity, storage, autograd version counter), a module replaced, a mode switched,
    or a plain attribute (flag, number, string, stride, padding…) of any module changed."""
    tensors = itertools.chain(model.parameters(), model.buffers())
    return (
        tuple((id(t), t.data_ptr(), t._version) for t in tensors),
        tuple((id(m), _plain_attributes(m)) for m in model.modules()),
    )


class FoldedModelCache:
    """The folded copies of one model, rebuilt when the model changes (:func:`state_key`).

    ``get(keep)`` returns the copy to run (or ``None``: run the model itself). Holds the model weakly (a
    cache must not keep it alive; see :func:`shared_fold_cache`). Thread safe; a copy being used by one
    thread is never modified by another (a rebuild replaces it).
    """

    #: Copies kept per model, one per set of kept names (target layers); the oldest goes first.
    MAX_COPIES = 2

    def __init__(self, model: nn.Module) -> None:
        self._model = weakref.ref(model)
        self._lock = threading.Lock()
        self._copies: dict[tuple[str, ...], tuple[tuple, nn.Module]] = {}
        # Modules + kept names of a model found not worth folding (e.g. densenet): later calls skip the
        # full state key (~3 ms on densenet121). Not folding is always correct, so this errs safely.
        self._not_worth: tuple | None = None

    def get(self, keep: Collection[str]) -> nn.Module | None:
        model = self._model()
        if model is None or model.training or has_hooks(model):  # checked on every call: hooks come and go
            return None
        kept = tuple(sorted(keep))
        structure = (tuple(id(m) for m in model.modules()), kept)
        if structure == self._not_worth:
            return None
        key = state_key(model)
        with self._lock:
            entry = self._copies.get(kept)
            if entry is not None and entry[0] == key:
                return entry[1]
            self._copies.pop(kept, None)
            folded = folded_copy(model, kept)
            if folded is None:
                self._not_worth = structure
                return None
            while len(self._copies) >= self.MAX_COPIES:
                del self._copies[next(iter(self._copies))]
            self._copies[kept] = (key, folded)
            return folded


_CACHES: weakref.WeakKeyDictionary[nn.Module, FoldedModelCache] = weakref.WeakKeyDictionary()
_CACHES_GUARD = threading.Lock()


def shared_fold_cache(model: nn.Module) -> FoldedModelCache:
    """The one :class:`FoldedModelCache` of ``model``, shared by every explainer of it.

    Keyed weakly on the module: the cache and its folded copies are freed with the model, and a fresh
    ``Explainer(model)`` per call reuses the copy made by an earlier one (no deep copy per explainer).
    """
    with _CACHES_GUARD:
        cache = _CACHES.get(model)
        if cache is None:
            cache = FoldedModelCache(model)
            _CACHES[model] = cache
        return cache
