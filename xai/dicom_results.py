"""AI results as DICOM objects a PACS and a DICOM viewer understand (IHE AI Results profile).

* :func:`structured_report` — a TID 1500 Measurement Report (``highdicom.sr.Comprehensive3DSR``) per film:
  the model (name, version and sha256 in its AlgorithmIdentificationSequence), the class probabilities,
  the decision at the card's threshold (present/absent, SNOMED CT 840539006 "Disease caused by
  SARS-CoV-2" when the positive class is COVID-19), the out-of-distribution verdict, and per method the
  share of the saliency map's mass in each anatomical region; every measurement group references the film.
* :func:`parametric_maps` — one Parametric Map (``highdicom.pm.ParametricMap``) per method: the map's float
  values on the film's own pixel grid with a real-world value mapping, so a viewer overlays it with its own
  colour map.

Both take a :class:`xai.export.ResultStudy` (``xai.export.result_study``): filed with the source's study
("pacs") or in a new de-identified study whose report and maps reference the film by pseudonymous UIDs
(no UID of the source appears). The Secondary Captures (``xai.export.secondary_captures``) take the same
study, so one export files all its objects together.

Codes not in SNOMED CT or DICOM (the class probabilities, the regions, the evidence share, the OOD verdict)
use the private coding scheme :data:`CODING_SCHEME` ("99" prefix: PS3.16 section 8 local codes).
Pure library: no UI imports; highdicom is imported when an object is made.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from xai.export import (
    APP_NAME,
    BODY_PART,
    DISCLAIMER,
    ExportError,
    Provenance,
    ResultStudy,
    method_title,
    quiet_highdicom,
)

if TYPE_CHECKING:
    from pydicom.sr.coding import Code

__all__ = [
    "CODING_SCHEME",
    "DICOM_KINDS",
    "PM_SERIES_DESCRIPTION",
    "SR_SERIES_DESCRIPTION",
    "Findings",
    "film_results",
    "parametric_maps",
    "parse_kinds",
    "structured_report",
]

#: Private coding scheme designator of the codes this module defines (PS3.16: local schemes start "99").
CODING_SCHEME = "99CCNXAI"
SR_SERIES_DESCRIPTION = f"{APP_NAME} AI report (not for diagnosis)"[:64]
PM_SERIES_DESCRIPTION = f"{APP_NAME} saliency maps (not for diagnosis)"[:64]
_COVID_NAMES = {"covid19", "covid-19", "covid", "sars-cov-2"}


@dataclass(frozen=True)
class Findings:
    """What the structured report says about one film.

    ``probabilities``: {class name: probability}; the decision is ``probabilities[positive_class] >=
    threshold`` (the model card's rule). ``ood_warning``: whether the out-of-distribution check warned
    (None: not checked), ``ood_text`` its sentence. ``evidence_by_region``: {method: {region: share of the
    map's mass}} (``xai.anatomy.evidence_by_region``); nan shares are left out.
    """

    probabilities: Mapping[str, float]
    positive_class: str
    threshold: float
    model_version: str
    ood_warning: bool | None = None
    ood_text: str | None = None
    evidence_by_region: Mapping[str, Mapping[str, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.positive_class not in self.probabilities:
            raise ExportError(f"positive class {self.positive_class!r} is not one of {list(self.probabilities)}")
        if not 0.0 <= float(self.threshold) <= 1.0:
            raise ExportError(f"threshold must be in [0, 1], got {self.threshold}")

    @property
    def positive(self) -> bool:
        return float(self.probabilities[self.positive_class]) >= float(self.threshold)


def _local(key: str, meaning: str) -> Code:
    """A code of :data:`CODING_SCHEME`; its value (SH, 16 chars) is a stable checksum of ``key``."""
    from pydicom.sr.coding import Code

    return Code(f"X{zlib.crc32(key.encode()):08X}", CODING_SCHEME, meaning[:64])


def _private_scheme() -> Any:
    """The CodingSchemeIdentificationSequence item that declares :data:`CODING_SCHEME`."""
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodingSchemeDesignator = CODING_SCHEME
    item.CodingSchemeName = f"{APP_NAME} local codes"[:64]
    item.CodingSchemeResponsibleOrganization = APP_NAME
    return item


def _codes() -> dict[str, Code]:
    from pydicom.sr.coding import Code

    return {
        "present": Code("52101004", "SCT", "Present"),
        "absent": Code("2667000", "SCT", "Absent"),
        "covid": Code("840539006", "SCT", "Disease caused by SARS-CoV-2"),
        "chest_xray": Code("399208008", "SCT", "Plain chest X-ray"),
        "unitless": Code("1", "UCUM", "no units"),
        "ood": _local("ood", "Input outside the model's training distribution"),
        "share": _local("evidence-share", "Share of saliency map mass"),
        "device": Code("121007", "DCM", "Device"),
    }


def _algorithm(provenance: Provenance, findings_version: str, *extra: str) -> Any:
    from highdicom.sr import AlgorithmIdentification

    return AlgorithmIdentification(
        name=provenance.model_name[:64], version=findings_version[:64] or "unknown", manufacturer=APP_NAME,
        parameters=[f"sha256 {provenance.model_sha256 or 'unknown'}", f"{APP_NAME} {provenance.app_version}",
                    *extra])


def _device_context(provenance: Provenance) -> Any:
    from highdicom.sr import (
        CodedConcept,
        DeviceObserverIdentifyingAttributes,
        ObservationContext,
        ObserverContext,
    )
    from pydicom.uid import generate_uid

    device = DeviceObserverIdentifyingAttributes(
        uid=generate_uid(entropy_srcs=[APP_NAME, provenance.model_name, provenance.model_sha256]),
        name=APP_NAME, manufacturer_name=APP_NAME, model_name=provenance.model_name[:64])
    observer_type = CodedConcept.from_code(_codes()["device"])  # what highdicom makes of a Code itself
    return ObservationContext(observer_device_context=ObserverContext(observer_type=observer_type,
                                                                      observer_identifying_attributes=device))


def _classification_group(findings: Findings, provenance: Provenance, source: Any) -> Any:
    from highdicom.sr import (
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        QualitativeEvaluation,
        TrackingIdentifier,
    )
    from highdicom.uid import UID

    codes = _codes()
    algorithm = _algorithm(provenance, findings.model_version,
                           f"threshold {findings.threshold:.4g} on P({findings.positive_class})")
    measurements = [
        Measurement(name=_local(f"p:{name}", f"Probability of {name}"), value=float(p), unit=codes["unitless"],
                    algorithm_id=algorithm)
        for name, p in findings.probabilities.items() if math.isfinite(float(p))
    ]
    finding = (codes["covid"] if findings.positive_class.strip().lower() in _COVID_NAMES
               else _local(f"class:{findings.positive_class}", findings.positive_class))
    evaluations = [QualitativeEvaluation(finding, codes["present"] if findings.positive else codes["absent"])]
    if findings.ood_warning is not None:
        evaluations.append(QualitativeEvaluation(codes["ood"], codes["present"] if findings.ood_warning
                                                 else codes["absent"]))
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=UID(), identifier="Classification at the card's threshold"),
        algorithm_id=algorithm, measurements=measurements, qualitative_evaluations=evaluations,
        source_images=[source])


def _evidence_group(method: str, shares: Mapping[str, float], findings: Findings, provenance: Provenance,
                    source: Any) -> Any | None:
    from highdicom.sr import (
        FindingSite,
        Measurement,
        MeasurementsAndQualitativeEvaluations,
        TrackingIdentifier,
    )
    from highdicom.uid import UID

    codes = _codes()
    algorithm = _algorithm(provenance, findings.model_version, f"method {method_title(method)}",
                           f"target layer {provenance.target_layer}", f"target class {provenance.target_class}")
    measurements = [
        Measurement(name=codes["share"], value=float(share), unit=codes["unitless"], algorithm_id=algorithm,
                    finding_sites=[FindingSite(anatomic_location=_local(f"region:{region}", region))])
        for region, share in shares.items() if math.isfinite(float(share))
    ]
    if not measurements:
        return None
    return MeasurementsAndQualitativeEvaluations(
        tracking_identifier=TrackingIdentifier(uid=UID(), identifier=f"{method_title(method)} evidence by region"[:64]),
        algorithm_id=algorithm, measurements=measurements, source_images=[source])


def _mark_deidentified(ds: Any, study: ResultStudy) -> None:
    if study.mode == "deidentified":
        ds.PatientIdentityRemoved = "YES"
        ds.DeidentificationMethod = f"{APP_NAME}: new UIDs, no patient or study attributes"[:64]


def _write(ds: Any) -> bytes:
    import pydicom

    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def structured_report(findings: Findings, study: ResultStudy, provenance: Provenance, *, film_shape: Sequence[int],
                      series_number: int = 991) -> bytes:
    """A TID 1500 Measurement Report of one film, as DICOM file bytes (Comprehensive 3D SR IOD).

    One measurement group states the classification (probabilities, decision at the threshold, OOD verdict);
    one group per method states the evidence by anatomical region. ``film_shape``: (rows, columns) of the
    film, for the reference to it (CurrentRequestedProcedureEvidenceSequence and each group's source image).
    """
    from highdicom.sr import Comprehensive3DSR, MeasurementReport, SourceImageForMeasurementGroup
    from highdicom.uid import UID

    codes = _codes()
    source = SourceImageForMeasurementGroup(study.source_sop_class_uid, study.source_sop_instance_uid)
    groups = [_classification_group(findings, provenance, source)]
    for method, shares in findings.evidence_by_region.items():
        if (group := _evidence_group(method, shares, findings, provenance, source)) is not None:
            groups.append(group)
    report = MeasurementReport(observation_context=_device_context(provenance),
                               procedure_reported=codes["chest_xray"], imaging_measurements=groups)
    rows, columns = (int(v) for v in film_shape[:2])
    with quiet_highdicom():
        sr = Comprehensive3DSR(
            evidence=[study.source_dataset(rows, columns)], content=report, series_instance_uid=UID(),
            series_number=series_number, sop_instance_uid=UID(), instance_number=1, manufacturer=APP_NAME,
            is_complete=True, series_description=SR_SERIES_DESCRIPTION,
            content_date=provenance.created.date(), content_time=provenance.created.time().replace(microsecond=0),
        )
    sr.SpecificCharacterSet = "ISO_IR 192"
    sr.CodingSchemeIdentificationSequence = [_private_scheme()]
    sr.ManufacturerModelName = provenance.model_name[:64]
    sr.SoftwareVersions = f"{APP_NAME} {provenance.app_version}"[:64]
    _mark_deidentified(sr, study)
    return _write(sr)


#: The film's plane as a Parametric Map declares it: coronal (the plane of a PA/AP projection; rows along
#: the patient's left, columns towards the feet), at the origin of a frame of reference of its own.
_CORONAL = (1.0, 0.0, 0.0, 0.0, 0.0, -1.0)
#: Pixel spacing declared when the film states none (mm); only the pixel grid is meaningful then.
UNKNOWN_SPACING_MM = 1.0


def _map_geometry(study: ResultStudy, rows: int, columns: int) -> tuple[Any, dict[str, Any]]:
    """The source header and highdicom geometry arguments of a map on the film's grid.

    The Parametric Map IOD requires a frame of reference and plane geometry (Type 1); a projection
    radiograph has neither. The map declares a frame of reference of its own (a new UID, shared with no other
    object, so no viewer registers it to anything), the film's plane as coronal at the origin, and the film's
    pixel spacing (``UNKNOWN_SPACING_MM`` when the film states none). Only the pixel grid is meaningful: the
    map lies pixel for pixel on the film it references.
    """
    from highdicom import PixelMeasuresSequence, PlaneOrientationSequence, PlanePositionSequence
    from highdicom.uid import UID

    spacing = study.pixel_spacing or (UNKNOWN_SPACING_MM, UNKNOWN_SPACING_MM)
    source = study.source_dataset(rows, columns)
    source.FrameOfReferenceUID = UID()
    source.PositionReferenceIndicator = ""
    source.ImageOrientationPatient = list(_CORONAL)
    source.ImagePositionPatient = [0.0, 0.0, 0.0]
    source.PixelSpacing = list(spacing)
    source.SliceThickness = 1.0
    return source, {
        "pixel_measures": PixelMeasuresSequence(pixel_spacing=list(spacing), slice_thickness=1.0),
        "plane_orientation": PlaneOrientationSequence("PATIENT", list(_CORONAL)),
        "plane_positions": [PlanePositionSequence("PATIENT", [0.0, 0.0, 0.0])],
    }


def parametric_maps(maps: Mapping[str, NDArray[np.floating]], study: ResultStudy, provenance: Provenance, *,
                    series_number: int = 992) -> list[bytes]:
    """One Parametric Map per method (``{method: float (H, W) in [0, 1] on the film's grid}``), all in one
    new series, as DICOM file bytes (32-bit float pixels, Explicit VR Little Endian).

    The real-world value mapping (identity, unit "no units", range 0-1) states what a value is: the map's
    value scaled so that the map's own maximum is 1 — a relative weight of evidence, not a probability.
    """
    from highdicom import VOILUTTransformation
    from highdicom.pm import ParametricMap, RealWorldValueMapping
    from highdicom.uid import UID

    if not maps:
        raise ExportError("a parametric map needs at least one map")
    shapes = {np.shape(m) for m in maps.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2:
        raise ExportError(f"every map must be one (H, W) array on the film's grid, got shapes {sorted(shapes)}")
    rows, columns = next(iter(shapes))
    source, geometry = _map_geometry(study, rows, columns)
    series_uid = UID()
    out: list[bytes] = []
    for number, (method, heat) in enumerate(maps.items(), start=1):
        values = np.nan_to_num(np.asarray(heat, dtype=np.float32), nan=0.0, posinf=1.0, neginf=0.0)
        values = np.clip(values, 0.0, 1.0)
        mapping = RealWorldValueMapping(
            lut_label=method[:16], lut_explanation=f"{method_title(method)} saliency, map maximum = 1"[:64],
            unit=_codes()["unitless"], value_range=(0.0, 1.0), slope=1.0, intercept=0.0)
        with quiet_highdicom():
            pm = ParametricMap(
                source_images=[source], pixel_array=values, series_instance_uid=series_uid,
                series_number=series_number, sop_instance_uid=UID(), instance_number=number,
                manufacturer=APP_NAME, manufacturer_model_name=provenance.model_name[:64],
                software_versions=f"{APP_NAME} {provenance.app_version}"[:64],
                device_serial_number=provenance.short_sha, contains_recognizable_visual_features=False,
                real_world_value_mappings=[mapping],
                voi_lut_transformations=[VOILUTTransformation(window_center=0.5, window_width=1.0)],
                content_label="SALIENCY", content_description=f"{method_title(method)}: {DISCLAIMER}"[:64],
                series_description=PM_SERIES_DESCRIPTION, **geometry,
            )
        pm.SpecificCharacterSet = "ISO_IR 192"  # UTF-8: the comments use a middle dot and an em dash
        pm.BodyPartExamined = BODY_PART
        pm.ImageComments = " | ".join(replace(provenance, method=method).lines())[:10240]
        _mark_deidentified(pm, study)
        out.append(_write(pm))
    return out


# ------------------------------------------------------------------------- one explained film -> objects
#: The kinds of DICOM result, in the order they are made and sent.
DICOM_KINDS: tuple[str, ...] = ("sc", "sr", "pm")


def parse_kinds(text: str) -> tuple[str, ...]:
    """``"sc,sr,pm"`` -> ``("sc", "sr", "pm")``; raises :class:`ExportError` naming an unknown kind."""
    kinds = tuple(dict.fromkeys(k.strip().lower() for k in text.split(",") if k.strip()))
    unknown = [k for k in kinds if k not in DICOM_KINDS]
    if unknown or not kinds:
        raise ExportError(f"unknown DICOM result kind(s) {', '.join(unknown) or '(none)'}; choose from "
                          f"{', '.join(DICOM_KINDS)}")
    return kinds


def film_results(result: Any, model: Any, source: bytes, *, mode: str, kinds: Sequence[str] = DICOM_KINDS,
                 ood: Mapping[str, Any] | None = None,
                 evidence_by_region: Mapping[str, Mapping[str, float]] | None = None,
                 colormap: str | None = None) -> dict[str, list[bytes]]:
    """The DICOM results of one explained film (``xai.pipeline.PipelineResult`` + ``models.LoadedModel``),
    ``{kind: [file bytes]}`` for ``kinds`` of :data:`DICOM_KINDS`, all filed in one study
    (:func:`xai.export.result_study` of ``source``, the film's DICOM bytes, in ``mode``).

    ``ood``: the film's out-of-distribution record (``xai.batch.films.ood_record``: ``is_ood``, ``warnings``);
    ``evidence_by_region``: {method: {region: share}} (``xai.anatomy.evidence_by_region``); each Secondary
    Capture's caption then says where its map's evidence lies (:func:`xai.anatomy.readout_sentence`).
    """
    from xai.batch.outputs import provenance as provenance_of
    from xai.export import result_study, secondary_captures
    from xai.render import DEFAULT_CMAP, overlay

    study = result_study(source, mode)  # type: ignore[arg-type]
    methods = tuple(result.maps)
    cmap = colormap or DEFAULT_CMAP
    provenance = provenance_of(result, model, ",".join(methods), {"colormap": cmap})
    card = model.card
    out: dict[str, list[bytes]] = {}
    for kind in kinds:
        if kind == "sc":
            panels = {m: overlay(result.radiograph.pixels, result.maps[m], cmap=cmap) for m in methods}
            from xai.anatomy import readout_sentence

            sentences = {m: readout_sentence(shares) for m, shares in (evidence_by_region or {}).items()}
            out[kind] = secondary_captures(panels, source, provenance, mode=mode, study=study,  # type: ignore[arg-type]
                                           readouts=sentences)
        elif kind == "sr":
            positive = card.positive_class or card.class_names[-1]
            findings = Findings(
                probabilities={k: float(v) for k, v in result.probabilities.items()}, positive_class=positive,
                threshold=float(card.threshold), model_version=str(card.version),
                ood_warning=bool(ood["is_ood"]) if ood and ood.get("is_ood") is not None else None,
                ood_text="; ".join(ood.get("warnings") or []) if ood else None,
                evidence_by_region=evidence_by_region or {})
            out[kind] = [structured_report(findings, study, provenance, film_shape=result.radiograph.pixels.shape)]
        elif kind == "pm":
            out[kind] = parametric_maps(dict(result.maps), study, provenance)
        else:
            raise ExportError(f"unknown DICOM result kind {kind!r}")
    return out
