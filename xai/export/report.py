"""The one-page report of an explanation (PNG or PDF), drawn with matplotlib ``Figure`` objects and no pyplot
state, so concurrent sessions never share a figure."""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from xai.export.panels import export_rgb
from xai.export.provenance import (
    APP_NAME,
    DISCLAIMER,
    READOUT_LABEL,
    ExportError,
    Provenance,
    method_title,
    patient_line,
)
from xai.render import DEFAULT_CMAP, downsample_for_display

if TYPE_CHECKING:
    from matplotlib.figure import Figure

@dataclass(frozen=True)
class ReportSpec:
    """Everything a one-page report shows (see :func:`report_figure`).

    ``radiograph`` and ``panels`` (``{title: uint8 RGB}``, at most five) should be drawn at the export's
    resolution (``xai.render.view`` with ``side=None``), never taken from screen pixels. ``ood``: the
    out-of-distribution verdict in one sentence, ``ood_warning`` whether it warns. ``readout``: per panel title,
    where that map's evidence lies in one sentence (:meth:`xai.anatomy.AnatomyReadout.sentence`); optional.
    """

    radiograph: NDArray
    panels: Mapping[str, NDArray[np.uint8]]
    provenance: Provenance
    class_names: Sequence[str]
    probabilities: Sequence[float]
    threshold: float | None = None
    threshold_class: str | None = None
    predicted: str | None = None
    colormap: str = DEFAULT_CMAP
    notes: Sequence[str] = ()
    ood: str | None = None
    ood_warning: bool = False
    readout: Mapping[str, str] = field(default_factory=dict)
    patient: Mapping[str, Any] | None = field(default=None, repr=False)
    include_patient: bool = False

    def __post_init__(self) -> None:
        if len(self.panels) > 5:
            raise ExportError(f"a report holds at most 5 panels, got {len(self.panels)}")
        if len(self.probabilities) != len(self.class_names):
            raise ExportError(f"{len(self.probabilities)} probabilities for {len(self.class_names)} classes")


#: Longest side of each image drawn in the report (the A4 page at 150-300 dpi holds about this much).
REPORT_IMAGE_SIDE = 1024
_WARN_COLOUR = "#b00020"


def _prediction_axes(ax: Any, spec: ReportSpec) -> None:
    """Probability bars; names and values above each bar, the threshold a dashed line across its own bar
    only and written in the title, so no line crosses a label."""
    names = list(spec.class_names)
    probs = np.asarray(spec.probabilities, dtype=np.float64).reshape(-1)
    y = np.arange(len(names))
    ax.barh(y, probs, color=["#d95f02" if n == spec.predicted else "#7570b3" for n in names], height=0.5)
    ax.set_yticks([])
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.4, len(names) - 0.1)
    ax.set_xlabel("probability", fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    for yi, name, p in zip(y, names, probs, strict=True):
        ax.text(0.01, yi + 0.3, f"{name}  {p:.3f}", va="bottom", fontsize=8)
    title = "Prediction" + (f": {spec.predicted}" if spec.predicted else "")
    if spec.threshold is not None:
        positive = spec.threshold_class if spec.threshold_class in names else names[-1]
        k = names.index(positive)
        ax.plot([spec.threshold, spec.threshold], [k - 0.25, k + 0.25], color="black", ls="--", lw=1.2)
        title += f"\n(dashed: threshold {spec.threshold:.2f} on P({positive}))"
    ax.set_title(title, fontsize=9)


def report_figure(spec: ReportSpec) -> Figure:
    """A one-page A4 report as a matplotlib ``Figure`` (no pyplot: safe with concurrent sessions).

    Layout: title and disclaimer; the out-of-distribution verdict; the radiograph and up to five overlay
    panels with the prediction chart in a 3-column grid; colour bar; model / target layer / class /
    settings / timings; notes; the disclaimer again.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    from matplotlib.figure import Figure

    def shrink(img: NDArray) -> NDArray[np.uint8]:
        return export_rgb(downsample_for_display(np.asarray(img), REPORT_IMAGE_SIDE))

    images = [("Radiograph", shrink(spec.radiograph))] + [(t, shrink(i)) for t, i in spec.panels.items()]
    rows = -(-(len(images) + 1) // 3)  # + the prediction chart

    fig = Figure(figsize=(8.27, 11.69))  # A4 portrait, inches
    readout = [f"{title}: {sentence}" for title, sentence in spec.readout.items() if sentence]
    grid = fig.add_gridspec(rows + 2, 3, height_ratios=[0.7] + [3.0] * rows
                            + [2.6 + 0.25 * (len(spec.notes) + len(readout) + bool(readout))],
                            left=0.05, right=0.95, top=0.97, bottom=0.03, hspace=0.35, wspace=0.12)
    head = fig.add_subplot(grid[0, :])
    head.axis("off")
    head.text(0, 0.85, f"{APP_NAME} — explanation report", fontsize=15, weight="bold", va="center")
    head.text(0, 0.45, DISCLAIMER, fontsize=10, color=_WARN_COLOUR, va="center")
    if spec.ood:
        head.text(0, 0.0, ("⚠ " if spec.ood_warning else "") + spec.ood, fontsize=8.5, va="center",
                  color=_WARN_COLOUR if spec.ood_warning else "#1b5e20", wrap=True)

    for i, (title, img) in enumerate(images):
        ax = fig.add_subplot(grid[1 + i // 3, i % 3])
        ax.imshow(img, interpolation="lanczos")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    i = len(images)
    _prediction_axes(fig.add_subplot(grid[1 + i // 3, i % 3]), spec)

    info = fig.add_subplot(grid[rows + 1, :])
    info.axis("off")
    cax = info.inset_axes((0.0, 0.9, 0.35, 0.06))
    fig.colorbar(ScalarMappable(Normalize(0, 1), spec.colormap), cax=cax, orientation="horizontal")
    cax.set_title(f"map value ({spec.colormap})", fontsize=7)
    cax.tick_params(labelsize=6)
    provenance = spec.provenance
    text = [
        f"Model: {provenance.model_name}   sha256 {provenance.model_sha256 or 'unknown'}",
        f"Method: {method_title(provenance.method)}   target class: {provenance.target_class}"
        f"   target layer: {provenance.target_layer}",
    ]
    if provenance.settings:
        text.append("Settings: " + provenance.settings_text())
    if provenance.timings_ms:
        text.append("Timings: " + ", ".join(f"{k} {float(v):.0f} ms" for k, v in provenance.timings_ms.items()))
    text.append(f"Created {provenance.date_text} with {APP_NAME} {provenance.app_version}")
    if spec.include_patient and (line := patient_line(spec.patient)):
        text.append(line)
    if readout:
        text += [f"{READOUT_LABEL}:", *(f"    {line}" for line in readout)]
    text += [f"Note: {n}" for n in spec.notes]
    wrapped = [w for t in text for w in textwrap.wrap(t, 120)]
    info.text(0, 0.72, "\n".join(wrapped), fontsize=7.5, va="top", family="DejaVu Sans", linespacing=1.5)
    info.text(0, 0.0, f"{DISCLAIMER}. Saliency maps show what the model used, not where disease is.",
              fontsize=8.5, color=_WARN_COLOUR, va="bottom")
    return fig


def _metadata_text(provenance: Provenance) -> str:
    return (f"{method_title(provenance.method)}, class {provenance.target_class}, model {provenance.model_name} "
            f"sha256 {provenance.model_sha256}, {APP_NAME} {provenance.app_version}. {DISCLAIMER}")


def report_png(spec: ReportSpec, *, dpi: int = 150) -> bytes:
    """The :func:`report_figure` page as PNG bytes (provenance in text chunks, never patient data)."""
    buffer = io.BytesIO()
    report_figure(spec).savefig(buffer, format="png", dpi=dpi, metadata={
        "Title": f"{APP_NAME} report", "Software": f"{APP_NAME} {spec.provenance.app_version}",
        "Description": _metadata_text(spec.provenance)})
    return buffer.getvalue()


def report_pdf(spec: ReportSpec) -> bytes:
    """The :func:`report_figure` page as a one-page PDF (document info holds provenance only)."""
    provenance = spec.provenance
    buffer = io.BytesIO()
    report_figure(spec).savefig(buffer, format="pdf", metadata={
        "Title": f"{APP_NAME} report", "Author": None, "Subject": _metadata_text(provenance),
        "Creator": f"{APP_NAME} {provenance.app_version}", "Keywords": DISCLAIMER,
        "CreationDate": provenance.created})
    return buffer.getvalue()
