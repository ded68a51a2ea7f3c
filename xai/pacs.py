"""The hospital's PACS over DICOMweb (QIDO-RS search, WADO-RS retrieve, STOW-RS store), via ``dicomweb-client``.

Configuration (:func:`pacs_config`): ``XAI_PACS_URL`` (the DICOMweb base URL, e.g.
``https://pacs.example.org/dicom-web``) and credentials — HTTP basic (``XAI_PACS_USER`` +
``XAI_PACS_PASSWORD``) or a bearer token (``XAI_PACS_TOKEN``) — from the environment, else the ``[pacs]``
table of ``.streamlit/secrets.toml`` (``url``, ``username``, ``password``, ``token``, ``timeout_s``).
Credentials are never logged, printed or put in a message: :class:`PacsConfig` hides them in ``repr`` and
every message names the server by scheme, host and port only.

Every request has a timeout (``XAI_PACS_TIMEOUT``, default :data:`DEFAULT_TIMEOUT_S` seconds) and no
automatic retry, so an unreachable or slow PACS gives a clear :class:`PacsError` within the timeout instead
of a hang. Listings are paged (``limit``/``offset``): a study with hundreds of instances is read a page at a
time. A retrieved instance comes back as the file's bytes (original transfer syntax), to go through the same
loader as an upload (``xai.radiograph.load_radiograph`` / ``xai.sandboxed_decoder.load_radiograph_isolated``).

Patient attributes from a search (:class:`StudySummary`) are kept out of ``repr``; a caller shows them only
when the user asks (the app's "show patient details" switch). Pure library: no UI imports.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_MODALITIES",
    "DEFAULT_TIMEOUT_S",
    "PAGE_SIZE",
    "InstanceSummary",
    "NotAnImageError",
    "PacsAuthError",
    "PacsClient",
    "PacsConfig",
    "PacsError",
    "PacsTimeoutError",
    "PacsUnavailableError",
    "Page",
    "SeriesSummary",
    "StoreRefusedError",
    "StoreResult",
    "StudySummary",
    "download_studies",
    "iter_study_films",
    "pacs_config",
    "studies_for_accessions",
]

DEFAULT_TIMEOUT_S = 15.0
DEFAULT_MODALITIES: tuple[str, ...] = ("CR", "DX")
#: Results per QIDO-RS request: a study with hundreds of instances is listed a page at a time.
PAGE_SIZE = 100
ENV_URL, ENV_USER, ENV_PASSWORD, ENV_TOKEN, ENV_TIMEOUT = (
    "XAI_PACS_URL", "XAI_PACS_USER", "XAI_PACS_PASSWORD", "XAI_PACS_TOKEN", "XAI_PACS_TIMEOUT")
SECRETS_FILE = Path(".streamlit") / "secrets.toml"
#: SOP classes that hold pixel data a radiograph loader can open (everything else is skipped with a message).
IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.1": "Computed Radiography",
    "1.2.840.10008.5.1.4.1.1.1.1": "Digital X-Ray (for presentation)",
    "1.2.840.10008.5.1.4.1.1.1.1.1": "Digital X-Ray (for processing)",
    "1.2.840.10008.5.1.4.1.1.7": "Secondary Capture",
}


# ----------------------------------------------------------------------------------------------- errors
class PacsError(RuntimeError):
    """A PACS request that did not succeed; the message says why in a user's words (never credentials)."""


class PacsUnavailableError(PacsError):
    """Nothing answers at the configured address (down, wrong address, network)."""


class PacsTimeoutError(PacsError):
    """The PACS did not answer within the timeout."""


class PacsAuthError(PacsError):
    """The PACS refused the credentials (HTTP 401) or the access (HTTP 403)."""


class StoreRefusedError(PacsError):
    """STOW-RS refused some or all objects; ``result`` says which were stored (the files stay local)."""

    def __init__(self, message: str, result: StoreResult) -> None:
        super().__init__(message)
        self.result = result


class NotAnImageError(PacsError):
    """The instance is not an image a radiograph loader opens (a structured report, a key object...)."""


# ----------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is and how to sign in. ``repr`` never shows the credentials."""

    url: str
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    timeout_s: float = DEFAULT_TIMEOUT_S

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise PacsError(f"the PACS URL must be an http(s) DICOMweb address, got {_safe_url(self.url)!r}")
        if parts.username or parts.password:
            raise PacsError("put the PACS credentials in XAI_PACS_USER/XAI_PACS_PASSWORD or secrets.toml "
                            "[pacs], not in the URL")
        if not self.timeout_s > 0:
            raise PacsError(f"the PACS timeout must be positive, got {self.timeout_s}")

    @property
    def server(self) -> str:
        """Scheme, host and port: how messages name the PACS."""
        return _safe_url(self.url)

    @property
    def auth_kind(self) -> str:
        return "bearer token" if self.token else ("basic" if self.username else "none")


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    if not parts.hostname:
        return "(no host)"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _secrets(path: Path) -> Mapping[str, Any]:
    try:
        with path.open("rb") as f:
            table = tomllib.load(f).get("pacs", {})
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise PacsError(f"{path} cannot be read ({type(exc).__name__})") from None
    return table if isinstance(table, Mapping) else {}


def pacs_config(url: str | None = None, *, env: Mapping[str, str] | None = None,
                secrets_path: Path | None = None) -> PacsConfig | None:
    """The PACS configuration: ``url`` (e.g. a command-line flag), else ``XAI_PACS_URL``, else secrets.toml
    ``[pacs] url``; credentials from the environment, else secrets.toml. None when no URL is configured."""
    env = os.environ if env is None else env
    secrets = _secrets(secrets_path or SECRETS_FILE)

    def pick(env_key: str, secret_key: str) -> str | None:
        value = env.get(env_key) or secrets.get(secret_key)
        return str(value) if value not in (None, "") else None

    url = url or pick(ENV_URL, "url")
    if not url:
        return None
    timeout = pick(ENV_TIMEOUT, "timeout_s")
    try:
        timeout_s = float(timeout) if timeout else DEFAULT_TIMEOUT_S
    except ValueError:
        raise PacsError(f"{ENV_TIMEOUT} must be a number of seconds, got {timeout!r}") from None
    return PacsConfig(url=url.rstrip("/"), username=pick(ENV_USER, "username"),
                      password=pick(ENV_PASSWORD, "password"), token=pick(ENV_TOKEN, "token"), timeout_s=timeout_s)


# ------------------------------------------------------------------------------------------- summaries
def _value(item: Mapping[str, Any], tag: str, default: Any = "") -> Any:
    values = (item.get(tag) or {}).get("Value") or []
    if not values:
        return default
    value = values[0]
    if isinstance(value, Mapping) and "Alphabetic" in value:  # PN in DICOM JSON
        return str(value["Alphabetic"])
    return value


def _int(item: Mapping[str, Any], tag: str) -> int | None:
    try:
        return int(_value(item, tag, None))
    except (TypeError, ValueError):
        return None


@dataclass(frozen=True)
class StudySummary:
    """One study from a QIDO-RS search. Patient attributes are out of ``repr`` (shown only when asked)."""

    study_uid: str
    study_date: str
    description: str
    modalities: tuple[str, ...]
    n_series: int | None
    n_instances: int | None
    accession_number: str = field(default="", repr=False)
    patient_id: str = field(default="", repr=False)
    patient_name: str = field(default="", repr=False)

    @classmethod
    def from_json(cls, item: Mapping[str, Any]) -> StudySummary:
        modalities = tuple(str(m) for m in (item.get("00080061") or {}).get("Value") or [])
        return cls(study_uid=str(_value(item, "0020000D")), study_date=str(_value(item, "00080020")),
                   description=str(_value(item, "00081030")), modalities=modalities,
                   n_series=_int(item, "00201206"), n_instances=_int(item, "00201208"),
                   accession_number=str(_value(item, "00080050")), patient_id=str(_value(item, "00100020")),
                   patient_name=str(_value(item, "00100010")))


@dataclass(frozen=True)
class SeriesSummary:
    study_uid: str
    series_uid: str
    modality: str
    description: str
    number: int | None
    n_instances: int | None

    @classmethod
    def from_json(cls, item: Mapping[str, Any], study_uid: str) -> SeriesSummary:
        return cls(study_uid=study_uid, series_uid=str(_value(item, "0020000E")), modality=str(_value(item, "00080060")),
                   description=str(_value(item, "0008103E")), number=_int(item, "00200011"),
                   n_instances=_int(item, "00201209"))


@dataclass(frozen=True)
class InstanceSummary:
    study_uid: str
    series_uid: str
    sop_uid: str
    sop_class_uid: str
    number: int | None
    rows: int | None
    columns: int | None

    @classmethod
    def from_json(cls, item: Mapping[str, Any], study_uid: str) -> InstanceSummary:
        return cls(study_uid=str(_value(item, "0020000D", study_uid)), series_uid=str(_value(item, "0020000E")),
                   sop_uid=str(_value(item, "00080018")), sop_class_uid=str(_value(item, "00080016")),
                   number=_int(item, "00200013"), rows=_int(item, "00280010"), columns=_int(item, "00280011"))

    @property
    def is_image(self) -> bool:
        """Whether a radiograph loader can open it: a known image SOP class, or any instance with a grid."""
        return self.sop_class_uid in IMAGE_SOP_CLASSES or bool(self.rows and self.columns)

    @property
    def kind(self) -> str:
        from pydicom.uid import UID

        name = IMAGE_SOP_CLASSES.get(self.sop_class_uid)
        return name or (UID(self.sop_class_uid).name if self.sop_class_uid else "unknown object")


@dataclass(frozen=True)
class Page:
    """One page of a listing: ``items``, where it started, and whether the PACS has more after it."""

    items: tuple[Any, ...]
    offset: int
    more: bool


@dataclass(frozen=True)
class StoreResult:
    """What STOW-RS stored: SOP Instance UIDs stored and refused (with the PACS's failure reason codes)."""

    stored: tuple[str, ...]
    refused: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return not self.refused


# --------------------------------------------------------------------------------------------- client
class PacsClient:
    """A DICOMweb client for one :class:`PacsConfig` (one per session or command; not shared)."""

    def __init__(self, config: PacsConfig) -> None:
        import requests
        from dicomweb_client import DICOMwebClient

        # dicomweb-client logs each request (its URL at debug level: a search URL can hold a patient ID) and
        # each step at info level; only its warnings and errors get through.
        logger = logging.getLogger("dicomweb_client")
        logger.setLevel(max(logging.WARNING, logger.level))
        self.config = config
        self._session = requests.Session()
        self._session.trust_env = False  # no proxy or .netrc credentials from the environment
        # No gzip: a DICOM file is mostly pixel data (often already compressed); a server compressing a 5 MB
        # film costs about a second (Orthanc on this machine) and saves little.
        self._session.headers["Accept-Encoding"] = "identity"
        if config.token:
            self._session.headers["Authorization"] = f"Bearer {config.token}"
        elif config.username:
            self._session.auth = (config.username, config.password or "")
        self._client = DICOMwebClient(config.url, session=self._session, timeout=config.timeout_s)
        self._client.set_http_retry_params(retry=False)  # a refusal or an outage is reported, not retried

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> PacsClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PacsClient({self.config.server}, auth={self.config.auth_kind})"

    # ---------------------------------------------------------------------------------------- errors
    @contextlib.contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn transport and HTTP failures into :class:`PacsError` messages naming ``what`` failed."""
        import requests

        server = self.config.server
        try:
            yield
        except requests.exceptions.Timeout:
            raise PacsTimeoutError(f"{what}: the PACS at {server} did not answer within "
                                   f"{self.config.timeout_s:g} s") from None
        except requests.exceptions.ConnectionError:
            raise PacsUnavailableError(f"{what}: no PACS answers at {server} (is it running, is the address "
                                       "right?)") from None
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else None
            if code == 401:
                raise PacsAuthError(f"{what}: the PACS at {server} refused the credentials (HTTP 401); check "
                                    f"{ENV_USER}/{ENV_PASSWORD} or {ENV_TOKEN}") from None
            if code == 403:
                raise PacsAuthError(f"{what}: the PACS at {server} does not allow this account to do that "
                                    "(HTTP 403)") from None
            if code == 404:
                raise PacsError(f"{what}: the PACS at {server} has no such object (HTTP 404)") from None
            raise PacsError(f"{what}: the PACS at {server} answered HTTP {code}") from None
        except requests.exceptions.RequestException as exc:
            raise PacsError(f"{what}: the request to {server} failed ({type(exc).__name__})") from None

    # ---------------------------------------------------------------------------------------- search
    def search_studies(self, *, accession_number: str | None = None, patient_id: str | None = None,
                       date_from: date | str | None = None, date_to: date | str | None = None,
                       modalities: Sequence[str] = DEFAULT_MODALITIES, limit: int = PAGE_SIZE,
                       offset: int = 0) -> Page:
        """Studies matching every given filter (QIDO-RS), newest first as the PACS returns them, one page.

        ``modalities``: studies holding any of them (``ModalitiesInStudy``); empty for every modality.
        """
        filters: dict[str, Any] = {}
        if accession_number:
            filters["AccessionNumber"] = accession_number
        if patient_id:
            filters["PatientID"] = patient_id
        if date_from or date_to:
            filters["StudyDate"] = f"{_da(date_from)}-{_da(date_to)}"
        if modalities:
            filters["ModalitiesInStudy"] = ",".join(m.strip().upper() for m in modalities)
        fields = ["StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
                  "NumberOfStudyRelatedInstances", "AccessionNumber", "PatientID", "PatientName", "StudyDate"]
        with self._errors("searching studies"):
            found = self._client.search_for_studies(search_filters=filters, fields=fields, limit=limit + 1,
                                                    offset=offset)
        return Page(tuple(StudySummary.from_json(item) for item in found[:limit]), offset, len(found) > limit)

    def series(self, study_uid: str) -> list[SeriesSummary]:
        """The series of one study (a study has a handful; one request)."""
        with self._errors("listing the study's series"):
            found = self._client.search_for_series(study_uid, fields=["SeriesDescription", "SeriesNumber",
                                                                      "NumberOfSeriesRelatedInstances"])
        return sorted((SeriesSummary.from_json(item, study_uid) for item in found),
                      key=lambda s: (s.number is None, s.number or 0))

    def instances(self, study_uid: str, series_uid: str | None = None, *, limit: int = PAGE_SIZE,
                  offset: int = 0) -> Page:
        """One page of a study's (or series') instances, in the PACS's order."""
        with self._errors("listing the study's images"):
            found = self._client.search_for_instances(
                study_uid, series_uid, limit=limit + 1, offset=offset,
                fields=["SOPClassUID", "InstanceNumber", "Rows", "Columns", "SeriesInstanceUID"])
        return Page(tuple(InstanceSummary.from_json(item, study_uid) for item in found[:limit]), offset,
                    len(found) > limit)

    def iter_instances(self, study_uid: str, *, page_size: int = PAGE_SIZE,
                       max_instances: int | None = None) -> Iterator[InstanceSummary]:
        """Every instance of a study, a page at a time (at most ``max_instances``)."""
        offset, seen = 0, 0
        while True:
            page = self.instances(study_uid, limit=page_size, offset=offset)
            for item in page.items:
                if max_instances is not None and seen >= max_instances:
                    return
                seen += 1
                yield item
            if not page.more or not page.items:
                return
            offset += len(page.items)

    # -------------------------------------------------------------------------------------- retrieve
    def retrieve(self, instance: InstanceSummary) -> bytes:
        """The instance's DICOM file bytes (WADO-RS, original transfer syntax), for the upload loader.

        Raises :class:`NotAnImageError` for an instance that is not an image (nothing is downloaded).
        """
        import pydicom

        if not instance.is_image:
            raise NotAnImageError(f"instance {instance.number or '?'} is a {instance.kind}, not an image: "
                                  "skipped")
        with self._errors("retrieving the image"):
            ds = self._client.retrieve_instance(instance.study_uid, instance.series_uid, instance.sop_uid,
                                                media_types=(("application/dicom", "*"),))
        buffer = io.BytesIO()
        pydicom.dcmwrite(buffer, ds, enforce_file_format=False)
        return buffer.getvalue()

    def thumbnail(self, instance: InstanceSummary, *, side: int = 192) -> bytes:
        """A JPEG of at most ``side`` px per side, rendered by the PACS (WADO-RS ``/rendered``)."""
        from PIL import Image

        if not instance.is_image:
            raise NotAnImageError(f"instance {instance.number or '?'} is a {instance.kind}: no thumbnail")
        with self._errors("rendering a thumbnail"):
            rendered = self._client.retrieve_instance_rendered(instance.study_uid, instance.series_uid,
                                                               instance.sop_uid, media_types=("image/jpeg",))
        try:
            image = Image.open(io.BytesIO(rendered))
            image.thumbnail((side, side))
            out = io.BytesIO()
            image.convert("L" if image.mode in ("L", "I", "I;16", "F") else "RGB").save(out, format="JPEG",
                                                                                       quality=85)
        except (OSError, ValueError) as exc:
            raise PacsError(f"the PACS's rendered image cannot be read ({type(exc).__name__})") from None
        return out.getvalue()

    # ----------------------------------------------------------------------------------------- store
    def store(self, files: Sequence[bytes]) -> StoreResult:
        """Send DICOM files with STOW-RS. Raises :class:`StoreRefusedError` (with what was stored) when the
        PACS refuses any of them; the caller keeps the files, nothing is lost."""
        import pydicom
        import requests

        datasets = [pydicom.dcmread(io.BytesIO(data)) for data in files]
        uids = [str(ds.SOPInstanceUID) for ds in datasets]
        if not datasets:
            return StoreResult((), {})
        try:
            with self._errors("sending the results"):
                answer = self._client.store_instances(datasets)
        except PacsError as exc:
            if isinstance(exc, PacsUnavailableError | PacsTimeoutError | PacsAuthError):
                raise
            raise StoreRefusedError(f"{exc}; the results were not sent and stay available here",
                                    StoreResult((), dict.fromkeys(uids, "refused"))) from None
        except requests.RequestException:  # pragma: no cover - _errors converts every request error
            raise
        stored = tuple(str(i.ReferencedSOPInstanceUID) for i in answer.get("ReferencedSOPSequence", []))
        refused = {str(i.ReferencedSOPInstanceUID): str(i.get("FailureReason", "refused"))
                   for i in answer.get("FailedSOPSequence", [])}
        refused |= {uid: "not acknowledged" for uid in uids if uid not in stored and uid not in refused}
        result = StoreResult(stored, refused)
        if refused:
            raise StoreRefusedError(f"the PACS at {self.config.server} refused {len(refused)} of {len(uids)} "
                                    "object(s); they stay available here", result)
        return result


def _da(value: date | str | None) -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, date):
        return value.strftime("%Y%m%d")
    text = str(value).replace("-", "")
    if len(text) != 8 or not text.isdigit():
        raise PacsError(f"a study date must be YYYY-MM-DD, got {value!r}")
    return text


def iter_study_films(client: PacsClient, study_uids: Sequence[str], *, warn: Any = None,
                     max_instances: int | None = None) -> Iterator[tuple[str, bytes]]:
    """``(name, DICOM file bytes)`` of every image instance of each study, listed a page at a time; names are
    ``study<k>_<n>.dcm`` (no header value). A non-image instance or one the PACS cannot find is skipped with a
    ``warn(message)``; an unreachable PACS, a timeout or a refused sign-in stops the iteration (raised)."""
    for k, study_uid in enumerate(study_uids, start=1):
        count = 0
        for n, instance in enumerate(client.iter_instances(study_uid, max_instances=max_instances), start=1):
            try:
                data = client.retrieve(instance)
            except NotAnImageError as exc:
                if warn:
                    warn(f"study {k}: {exc}")
                continue
            except (PacsUnavailableError, PacsTimeoutError, PacsAuthError):
                raise
            except PacsError as exc:
                if warn:
                    warn(f"study {k}, instance {n}: {exc}")
                continue
            count += 1
            yield f"study{k}_{n:04d}.dcm", data
        if count == 0 and warn:
            warn(f"study {k}: no image instance found (is the Study Instance UID right?)")


def download_studies(client: PacsClient, study_uids: Sequence[str], folder: Path, *,
                     warn: Any = None, max_instances: int | None = None) -> list[Path]:
    """:func:`iter_study_films` saved as files in ``folder``; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    saved: list[Path] = []
    for name, data in iter_study_films(client, study_uids, warn=warn, max_instances=max_instances):
        path = folder / name
        path.write_bytes(data)
        saved.append(path)
    return saved


def studies_for_accessions(client: PacsClient, accession_numbers: Sequence[str],
                           modalities: Sequence[str] = DEFAULT_MODALITIES) -> tuple[list[str], list[str]]:
    """Study Instance UIDs of the studies with these accession numbers, and the accession numbers that
    matched none."""
    uids: list[str] = []
    missing: list[str] = []
    for accession in dict.fromkeys(a.strip() for a in accession_numbers if a.strip()):
        found = client.search_studies(accession_number=accession, modalities=modalities).items
        if not found:
            missing.append(accession)
        uids += [s.study_uid for s in found if s.study_uid not in uids]
    return uids, missing
