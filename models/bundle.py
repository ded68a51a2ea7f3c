"""Model bundles: ``model.safetensors`` + ``card.json``, loaded without ever executing code from a file.

A bundle is a folder (or a .zip of one) with the weights as safetensors and a :class:`ModelCard` that
says everything needed to use and judge the model: architecture, class names, the exact
``Preprocessing``, the Grad-CAM target layer, the decision threshold and the rule that chose it, the
training data and command, measured metrics (with date and command), cross-source checks, intended use,
limitations and the sha256 of the weights file. Users' own checkpoints (``.pt``/``.pth``/``.safetensors``
state dicts) load through :func:`load_weights`: safetensors, or ``torch.load(weights_only=True)`` which
refuses any pickle that would construct objects other than tensors and plain containers.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from models.architectures import ARCHITECTURES, get_architecture

if TYPE_CHECKING:  # torch is imported where weights are read or built: a card reads without it (read_card)
    import torch
    from torch import nn

    from xai.preprocessing import Preprocessing

BUNDLES_DIR = Path(__file__).resolve().parent / "bundles"
DEFAULT_MODEL = "chestcovnet"
CARD_FILE = "card.json"
WEIGHTS_FILE = "model.safetensors"
#: Limits for files read into memory (a zip bomb or a huge upload must fail cleanly).
MAX_CARD_BYTES = 1_000_000
MAX_WEIGHTS_BYTES = 600_000_000
MAX_ZIP_MEMBERS = 64
_BUNDLE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class ModelError(Exception):
    """Any problem loading a model: bad file, wrong shapes, class count, missing card field, checksum."""


@dataclass(frozen=True)
class ModelCard:
    """Everything needed to run, explain and judge a model (Mitchell et al., "Model Cards", FAT* 2019).

    ``threshold`` applies to the probability of ``positive_class`` (softmax over ``class_names``).
    ``metrics`` holds the test-split figures with the ``date`` and ``command`` that produced them;
    ``cross_source`` the held-out-hospital checks; ``grad_cam_border_energy`` the share of Grad-CAM energy
    in the outer band of the original image.
    """

    name: str
    version: str
    architecture: str
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    target_layer: str
    threshold: float
    threshold_rule: str
    sha256: str
    intended_use: str
    positive_class: str = ""
    limitations: str = ""
    data_attribution: tuple[str, ...] = ()
    training: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    cross_source: dict[str, Any] = field(default_factory=dict)
    grad_cam_border_energy: dict[str, Any] = field(default_factory=dict)
    license: str = ""
    #: The app's default display scale: each method's typical map peak on val films (xai.display_scale);
    #: empty on cards without it (the app then stretches each map and says so).
    saliency_scale: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.positive_class:
            object.__setattr__(self, "positive_class", self.class_names[-1] if self.class_names else "")
        _validate(self)

    @property
    def positive_index(self) -> int:
        """Index of ``positive_class`` in ``class_names`` (the probability the threshold applies to)."""
        return self.class_names.index(self.positive_class)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (``preprocessing`` via its own ``to_dict``)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["class_names"] = list(self.class_names)
        out["data_attribution"] = list(self.data_attribution)
        out["preprocessing"] = self.preprocessing.to_dict()
        return json.loads(json.dumps(out))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelCard:
        """Build and validate a card; a missing or ill-typed field raises ``ModelError`` naming it."""
        from xai.preprocessing import Preprocessing

        if not isinstance(data, Mapping):
            raise ModelError(f"model card must be a JSON object, got {type(data).__name__}")
        required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            raise ModelError(f"model card is missing field(s): {', '.join(missing)}")
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in data.items() if k in known}
        try:
            kwargs["class_names"] = tuple(str(c) for c in data["class_names"])
            kwargs["data_attribution"] = tuple(str(a) for a in data.get("data_attribution", ()))
            kwargs["threshold"] = float(data["threshold"])
            kwargs["preprocessing"] = Preprocessing.from_dict(data["preprocessing"])
        except ModelError:
            raise
        except Exception as exc:  # the preprocessing spec or a value has the wrong type
            raise ModelError(f"model card field has an invalid value: {exc}") from exc
        return cls(**kwargs)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


def _validate(card: ModelCard) -> None:
    for name in ("name", "version", "architecture", "target_layer", "threshold_rule", "sha256", "intended_use"):
        value = getattr(card, name)
        if not isinstance(value, str) or not value:
            raise ModelError(f"model card field {name!r} must be a non-empty string, got {value!r}")
    if card.architecture not in ARCHITECTURES:
        raise ModelError(f"model card field 'architecture' is {card.architecture!r}; "
                         f"known: {', '.join(ARCHITECTURES)}")
    if len(card.class_names) < 2 or len(set(card.class_names)) != len(card.class_names):
        raise ModelError(f"model card field 'class_names' needs >= 2 distinct names, got {list(card.class_names)}")
    if card.positive_class not in card.class_names:
        raise ModelError(f"model card field 'positive_class' {card.positive_class!r} is not one of "
                         f"{list(card.class_names)}")
    if not 0.0 <= float(card.threshold) <= 1.0:
        raise ModelError(f"model card field 'threshold' must be in [0, 1], got {card.threshold}")
    if not re.fullmatch(r"[0-9a-f]{64}", card.sha256):
        raise ModelError(f"model card field 'sha256' must be 64 lowercase hex digits, got {card.sha256!r}")
    for name in ("training", "metrics", "cross_source", "grad_cam_border_energy"):
        if not isinstance(getattr(card, name), dict):
            raise ModelError(f"model card field {name!r} must be a JSON object")


@dataclass(frozen=True)
class LoadedModel:
    """A network in eval mode with its card. ``source`` says where it came from (path or bundle name)."""

    module: nn.Module
    card: ModelCard
    source: str = ""


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------- state dicts
def check_state_dict(module: nn.Module, state: Mapping[str, torch.Tensor], *, what: str = "checkpoint") -> None:
    """Raise ``ModelError`` naming every missing/unexpected key and every shape mismatch."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k}: {what} {tuple(state[k].shape)} vs model {tuple(v.shape)}"
              for k, v in expected.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    problems = []
    if shapes:
        problems.append("shape mismatch: " + "; ".join(shapes[:10]) + (" ..." if len(shapes) > 10 else ""))
    if missing:
        problems.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:10])
                        + (" ..." if len(missing) > 10 else ""))
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:10])
                        + (" ..." if len(unexpected) > 10 else ""))
    if problems:
        raise ModelError(f"{what} does not fit the architecture: " + " | ".join(problems))


def _check_class_count(architecture: str, class_names: Sequence[str], state: Mapping[str, torch.Tensor]) -> None:
    key = get_architecture(architecture).classifier + ".weight"
    if key in state and state[key].ndim == 2 and state[key].shape[0] != len(class_names):
        raise ModelError(f"{len(class_names)} class names {list(class_names)} but the checkpoint's classifier "
                         f"'{key}' has {state[key].shape[0]} outputs")


def build_with_state(architecture: str, class_names: Sequence[str], state: Mapping[str, torch.Tensor],
                     *, what: str = "checkpoint") -> nn.Module:
    """Instantiate ``architecture`` for ``len(class_names)`` classes and load ``state`` strictly (eval mode)."""
    if architecture not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    _check_class_count(architecture, class_names, state)
    module = get_architecture(architecture).build(len(class_names))
    check_state_dict(module, state, what=what)
    module.load_state_dict(state, strict=True)
    return module.eval()


def _tensor_state(obj: Any, what: str) -> OrderedDict[str, torch.Tensor]:
    """Unwrap ``{"state_dict": ...}`` / ``{"model": ...}`` and ``module.`` prefixes; all values must be tensors."""
    import torch

    for wrapper in ("state_dict", "model", "model_state_dict"):
        if isinstance(obj, Mapping) and wrapper in obj and isinstance(obj[wrapper], Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping) or not obj:
        raise ModelError(f"{what} is not a state dict (a mapping of parameter names to tensors)")
    bad = [str(k) for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise ModelError(f"{what} has entries that are not tensors: {', '.join(bad[:5])}")
    state = OrderedDict(obj)
    if all(k.startswith("module.") for k in state):  # saved from DataParallel
        state = OrderedDict((k[len("module."):], v) for k, v in state.items())
    return state


def read_state_dict(path: str | Path) -> OrderedDict[str, torch.Tensor]:
    """Read a ``.safetensors`` file or a ``.pt``/``.pth`` state dict without executing code from it."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"weights file not found: {path}")
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ModelError(f"weights file {path.name} is larger than {MAX_WEIGHTS_BYTES // 1_000_000} MB")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        try:
            return OrderedDict(load_file(str(path), device="cpu"))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelError(f"{path.name} is not a valid safetensors file: {exc}") from exc
    if suffix in (".pt", ".pth", ".bin", ".ckpt"):
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # UnpicklingError for code-carrying pickles, RuntimeError for junk
            raise ModelError(f"refused to load {path.name}: it is not a plain tensor state dict that "
                             f"torch.load(weights_only=True) accepts ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
        return _tensor_state(obj, path.name)
    raise ModelError(f"unsupported weights file type {suffix!r} ({path.name}); use .safetensors, .pt or .pth")


# --------------------------------------------------------------------------------------------- bundles
def save_bundle(directory: str | Path, module: nn.Module, card_fields: Mapping[str, Any]) -> ModelCard:
    """Write ``model.safetensors`` (fp32, contiguous) and ``card.json`` (sha256 filled in); return the card."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}
    weights = directory / WEIGHTS_FILE
    save_file(state, str(weights), metadata={"format": "pt"})
    weights.chmod(0o644)  # safetensors writes 0600; bundles are shared read-only files
    data = dict(card_fields)
    data["sha256"] = sha256_file(weights)
    pre = data.get("preprocessing")
    if pre is not None and not isinstance(pre, Mapping):
        data["preprocessing"] = pre.to_dict()
    card = ModelCard.from_dict(data)
    (directory / CARD_FILE).write_text(card.to_json(), encoding="utf-8")
    return card


def write_card(directory: str | Path, card: ModelCard) -> None:
    """Rewrite ``card.json`` of an existing bundle (e.g. after evaluation), checking the weights' sha256."""
    directory = Path(directory)
    actual = sha256_file(directory / WEIGHTS_FILE)
    if actual != card.sha256:
        raise ModelError(f"card sha256 {card.sha256} does not match {WEIGHTS_FILE} ({actual})")
    (directory / CARD_FILE).write_text(card.to_json(), encoding="utf-8")


def _card_from_bytes(card_bytes: bytes, source: str) -> ModelCard:
    try:
        card_data = json.loads(card_bytes.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"{CARD_FILE} in {source} is not valid JSON: {exc}") from exc
    return ModelCard.from_dict(card_data)


def _load_bundle_bytes(card_bytes: bytes, weights_bytes: bytes, source: str) -> LoadedModel:
    from safetensors import SafetensorError
    from safetensors.torch import load as load_safetensors

    card = _card_from_bytes(card_bytes, source)
    from xai.batch.names import content_sha256  # one home for a content hash

    actual = content_sha256(weights_bytes)
    if actual != card.sha256:
        raise ModelError(f"sha256 mismatch for {WEIGHTS_FILE} in {source}: card says {card.sha256}, "
                         f"file is {actual} (weights changed or corrupted)")
    try:
        state = OrderedDict(load_safetensors(weights_bytes))
    except (SafetensorError, ValueError) as exc:
        raise ModelError(f"{WEIGHTS_FILE} in {source} is not a valid safetensors file: {exc}") from exc
    module = build_with_state(card.architecture, card.class_names, state, what=WEIGHTS_FILE)
    return LoadedModel(module=module, card=card, source=source)


def _read_limited(path: Path, limit: int) -> bytes:
    if not path.is_file():
        raise ModelError(f"bundle file missing: {path}")
    if path.stat().st_size > limit:
        raise ModelError(f"{path.name} is larger than the limit of {limit} bytes")
    return path.read_bytes()


#: (file name, size limit) of a bundle's two files.
_CARD = (CARD_FILE, MAX_CARD_BYTES)
_WEIGHTS = (WEIGHTS_FILE, MAX_WEIGHTS_BYTES)


def _read_bundle_dir(directory: Path, wanted: tuple[tuple[str, int], ...]) -> list[bytes]:
    return [_read_limited(directory / name, limit) for name, limit in wanted]


def _read_bundle_zip(path: Path, wanted: tuple[tuple[str, int], ...]) -> list[bytes]:
    """Read ``wanted`` files from a zip in memory with the one safe zip reader
    (:func:`xai.batch.archive.read_zip`: unsafe paths, oversized members and zip bombs are refused)."""
    from xai.batch.archive import ArchiveError, ZipLimits, read_zip

    names = {name for name, _ in wanted}
    total = sum(limit for _, limit in wanted)
    limits = ZipLimits(max_archive_bytes=MAX_WEIGHTS_BYTES + MAX_CARD_BYTES, max_members=MAX_ZIP_MEMBERS,
                       max_member_bytes=max(limit for _, limit in wanted), max_total_bytes=total)

    def is_wanted(name: str) -> bool:  # at the top or in one folder
        parts = PurePosixPath(name).parts
        return len(parts) <= 2 and parts[-1] in names

    try:
        files = read_zip(path, limits, only=is_wanted)
    except ArchiveError as exc:
        raise ModelError(f"{path.name}: {exc}") from None

    def find(name: str, limit: int) -> bytes:
        hits = [data for member, data in files if PurePosixPath(member).name == name]
        if len(hits) != 1:
            raise ModelError(f"{path.name} must contain exactly one {name} (at the top or in one folder); "
                             f"found {len(hits)}")
        if len(hits[0]) > limit:
            raise ModelError(f"{name} in {path.name} is larger than the limit of {limit} bytes")
        return hits[0]

    return [find(name, limit) for name, limit in wanted]


def _read_bundle(name_or_path: str | Path, wanted: tuple[tuple[str, int], ...]) -> tuple[list[bytes], str]:
    """``wanted`` files of a bundle named (``models/bundles/<name>``), a folder or a ``.zip``, and its source."""
    text = str(name_or_path)
    path = Path(text)
    if isinstance(name_or_path, str) and _BUNDLE_NAME.match(text) and (BUNDLES_DIR / text / CARD_FILE).is_file():
        path = BUNDLES_DIR / text
        return _read_bundle_dir(path, wanted), str(path)
    if path.is_dir():
        return _read_bundle_dir(path, wanted), str(path)
    if path.is_file() and path.suffix.lower() == ".zip":
        return _read_bundle_zip(path, wanted), str(path)
    if path.is_file() and path.suffix.lower() in (".pt", ".pth", ".safetensors"):
        raise ModelError(f"{path.name} is a bare weights file; use models.load_weights(path, architecture=..., "
                         f"class_names=..., preprocessing=...)")
    raise ModelError(f"no model bundle {text!r}: not a bundle name ({', '.join(available_bundles()) or 'none'}), "
                     f"a bundle folder or a .zip")


def available_bundles() -> tuple[str, ...]:
    """Names of the bundles shipped in ``models/bundles``."""
    if not BUNDLES_DIR.is_dir():
        return ()
    return tuple(sorted(p.name for p in BUNDLES_DIR.iterdir() if (p / CARD_FILE).is_file()))


def load(name_or_path: str | Path = DEFAULT_MODEL) -> LoadedModel:
    """Load a bundle by name (``models/bundles/<name>``), by folder path, or from a ``.zip`` of a bundle.

    The weights' sha256 must match the card; shapes and keys must fit the card's architecture exactly.
    """
    (card_bytes, weights_bytes), source = _read_bundle(name_or_path, (_CARD, _WEIGHTS))
    return _load_bundle_bytes(card_bytes, weights_bytes, source)


def read_card(name_or_path: str | Path = DEFAULT_MODEL) -> ModelCard:
    """A bundle's checked card alone (named as for :func:`load`), without reading the weights or importing
    torch: what a page shows about a model before the model itself has loaded."""
    (card_bytes,), source = _read_bundle(name_or_path, (_CARD,))
    return _card_from_bytes(card_bytes, source)


def second_checkpoint_name(card: ModelCard) -> str | None:
    """The bundle name of the second training seed of ``card``'s model (``chestcovnet`` -> ``-seed2``);
    None for a second seed itself. Map stability across checkpoints compares the two."""
    name = str(card.name or "")
    if not name or name.endswith("-seed2"):
        return None
    return f"{name}-seed2"


_SECOND: dict[str, LoadedModel | None] = {}
_SECOND_LOCK = threading.Lock()


def second_checkpoint(card: ModelCard) -> LoadedModel | None:
    """The shipped second-seed checkpoint of ``card``'s model, loaded once per process (read-only use);
    None when it is not shipped or does not load (then there is simply no checkpoint comparison)."""
    name = second_checkpoint_name(card)
    if name is None:
        return None
    with _SECOND_LOCK:
        if name not in _SECOND:
            try:
                _SECOND[name] = load(name) if (BUNDLES_DIR / name / CARD_FILE).is_file() else None
            except ModelError:
                _SECOND[name] = None
        return _SECOND[name]


def load_weights(path: str | Path, architecture: str, class_names: Sequence[str],
                 preprocessing: Preprocessing, *, target_layer: str | None = None, threshold: float = 0.5,
                 positive_class: str | None = None, name: str | None = None) -> LoadedModel:
    """Load a user's state dict (``.safetensors``, ``.pt``, ``.pth``) into ``architecture``.

    ``{"state_dict": ...}`` / ``{"model": ...}`` wrappers and ``module.`` prefixes are accepted. The card
    records the file's sha256 and says plainly that the threshold is not calibrated.
    """
    path = Path(path)
    if architecture not in ARCHITECTURES:
        raise ModelError(f"unknown architecture {architecture!r}; known: {', '.join(ARCHITECTURES)}")
    class_names = tuple(str(c) for c in class_names)
    state = read_state_dict(path)
    module = build_with_state(architecture, class_names, state, what=path.name)
    card = ModelCard(
        name=name or path.stem,
        version="user-weights",
        architecture=architecture,
        class_names=class_names,
        preprocessing=preprocessing,
        target_layer=target_layer or get_architecture(architecture).target_layer,
        threshold=float(threshold),
        threshold_rule="given by the user (not calibrated on any validation set)",
        sha256=sha256_file(path),
        intended_use="user-supplied weights: intended use, training data and metrics unknown to this tool",
        positive_class=positive_class or class_names[-1],
        training={"source_file": path.name},
    )
    return LoadedModel(module=module, card=card, source=str(path))


def bundle_bytes_from_state(module: nn.Module) -> bytes:
    """Serialise a module's state dict to safetensors bytes (used by tests and zip export)."""
    from safetensors.torch import save

    return save({k: v.detach().contiguous() for k, v in module.state_dict().items()})


def export_zip(directory: str | Path) -> bytes:
    """A bundle folder as zip bytes (``<name>/card.json``, ``<name>/model.safetensors``)."""
    directory = Path(directory)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for fname in (CARD_FILE, WEIGHTS_FILE):
            zf.write(directory / fname, f"{directory.name}/{fname}")
    return buf.getvalue()
