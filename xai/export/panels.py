"""Captioned overlay panels: the caption band burned into the pixels and the overlay PNG with its provenance in
text chunks (no patient data unless asked)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from xai.export.provenance import APP_NAME, DISCLAIMER, ExportError, Provenance, method_title, patient_line
from xai.render import downsample_for_display, gray_to_rgb, to_png_bytes

if TYPE_CHECKING:
    from PIL import ImageFont

def _font(size: int) -> ImageFont.FreeTypeFont:
    """DejaVu Sans shipped with matplotlib (covers the em dash and middle dot), so no system font needed.

    Opened per call (about a millisecond), not cached: a FreeType face is not safe to share between the
    threads of concurrent app sessions.
    """
    import matplotlib
    from PIL import ImageFont

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    return ImageFont.truetype(str(path), size)


def _wrap(lines: Sequence[str], font: ImageFont.FreeTypeFont, max_width: int) -> list[str]:
    out: list[str] = []
    for line in lines:
        words, current = line.split(" "), ""
        for word in words:
            trial = f"{current} {word}".strip()
            if current and font.getlength(trial) > max_width:
                out.append(current)
                current = word
            else:
                current = trial
        out.append(current)
    return out


def captioned_panel(
    panel_rgb: NDArray[np.uint8],
    provenance: Provenance,
    *,
    patient: Mapping[str, Any] | None = None,
    include_patient: bool = False,
) -> NDArray[np.uint8]:
    """The panel with a dark caption band below it (provenance lines; patient line only if asked)."""
    from PIL import Image, ImageDraw

    panel = export_rgb(panel_rgb)
    h, w = panel.shape[:2]
    size = int(np.clip(w / 64, 10, 28))
    font = _font(size)
    lines = list(provenance.lines())
    if include_patient and (line := patient_line(patient)):
        lines.insert(0, line)
    margin = max(4, size // 2)
    wrapped = _wrap(lines, font, max(1, w - 2 * margin))
    line_h = int(size * 1.3)
    band_h = 2 * margin + line_h * len(wrapped)
    canvas = Image.new("RGB", (w, h + band_h), (20, 20, 24))
    canvas.paste(Image.fromarray(panel), (0, 0))
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(wrapped):
        draw.text((margin, h + margin + i * line_h), text, fill=(235, 235, 235), font=font)
    return np.asarray(canvas)


#: Exports never upscale; panels larger than this are shrunk (a 4k panel is 48 MB RGB).
MAX_SIDE = 4096


def export_rgb(image: NDArray) -> NDArray[np.uint8]:
    """A panel as the exports draw it: uint8 RGB (gray or float [0, 1] converted), at most :data:`MAX_SIDE`."""
    a = np.asarray(image)
    if a.ndim == 2:
        a = gray_to_rgb(a) if a.dtype != np.uint8 else np.repeat(a[:, :, None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ExportError(f"panel must be an RGB image (H, W, 3), got shape {a.shape}")
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise ExportError(f"panel must be uint8 or float in [0, 1], got dtype {a.dtype}")
        a = np.round(np.clip(np.nan_to_num(a), 0, 1) * 255).astype(np.uint8)
    return np.ascontiguousarray(downsample_for_display(a, MAX_SIDE))


def provenance_text(provenance: Provenance) -> dict[str, str]:
    import json

    return {
        "Title": f"{APP_NAME}: {method_title(provenance.method)} overlay",
        "Software": f"{APP_NAME} {provenance.app_version}",
        "Description": json.dumps(provenance.to_dict(), ensure_ascii=False),
        "Disclaimer": DISCLAIMER,
    }


def overlay_png(
    panel_rgb: NDArray[np.uint8],
    provenance: Provenance,
    *,
    patient: Mapping[str, Any] | None = None,
    include_patient: bool = False,
) -> bytes:
    """PNG of an overlay with its caption band burned in (see :func:`captioned_panel`).

    Text chunks (``iTXt``) hold the provenance as JSON; patient fields are never written to chunks,
    and appear in the burned-in caption only with ``include_patient=True``.
    """
    rgb = captioned_panel(panel_rgb, provenance, patient=patient, include_patient=include_patient)
    return to_png_bytes(rgb, provenance_text(provenance))
