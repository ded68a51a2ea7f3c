"""xai.radiograph: raster formats detected by content, display conventions, sources, errors, windowing."""

from __future__ import annotations

import csv
import io
import struct
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from xai.radiograph import (
    BlankImageError,
    CorruptImageError,
    ImageTooLargeError,
    NotAnImageError,
    NotARadiographError,
    Radiograph,
    RadiographError,
    UnreadableSourceError,
    apply_window,
    load_radiograph,
    sniff_format,
)


def _gradient(h: int = 48, w: int = 64, hi: int = 255, dtype=np.uint8) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + yy) * hi // (h + w - 2)).astype(dtype)


def _pil_bytes(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def _cv2_bytes(arr: np.ndarray, ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, arr)
    assert ok
    return buf.tobytes()


# ---------------------------------------------------------------------------------------- PNG variants
def test_png_8bit_gray_is_value_over_255():
    arr = _gradient()
    r = load_radiograph(_cv2_bytes(arr, ".png"))
    assert (r.format, r.bits_stored, r.photometric, r.window, r.frames) == ("png", 8, "MONOCHROME2", None, 1)
    assert r.pixels.dtype == np.float32 and r.pixels.shape == (48, 64)
    np.testing.assert_array_equal(r.modality_values, arr.astype(np.float32))
    np.testing.assert_allclose(r.pixels, arr / 255.0, atol=1e-7)
    assert r.notices == () and r.metadata == {} and r.patient == {} and r.pixel_spacing is None


def test_png_16bit_gray_uses_the_stored_range():
    arr = (_gradient(hi=3000, dtype=np.uint16) + 1000).astype(np.uint16)  # a 12-bit image in a 16-bit PNG
    r = load_radiograph(_cv2_bytes(arr, ".png"))
    assert r.bits_stored == 16
    np.testing.assert_array_equal(r.modality_values, arr.astype(np.float32))
    lo, hi = float(arr.min()), float(arr.max())
    np.testing.assert_allclose(r.pixels, (arr - lo) / (hi - lo), atol=1e-5)
    assert r.pixels.min() == 0.0 and r.pixels.max() == 1.0
    np.testing.assert_allclose(r.rewindow(*r.window), r.pixels, atol=1e-6)


def test_png_16bit_colour_keeps_16_bits():
    g = _gradient(hi=60000, dtype=np.uint16)
    bgr = np.stack([g // 3, g // 2, g], axis=-1).astype(np.uint16)
    r = load_radiograph(_cv2_bytes(bgr, ".png"))
    lum = 0.299 * g + 0.587 * (g // 2) + 0.114 * (g // 3)
    np.testing.assert_allclose(r.modality_values, lum, rtol=1e-5, atol=0.05)
    assert r.bits_stored == 16 and any("grayscale" in n for n in r.notices)


def test_png_palette_rgba_and_gray_rgb():
    arr = _gradient()
    palette = Image.fromarray(arr).convert("P")
    r = load_radiograph(_pil_bytes(palette, "PNG"))
    expected = np.asarray(palette.convert("L"), dtype=np.float32)
    np.testing.assert_allclose(r.modality_values, expected, atol=0.51)
    assert r.photometric == "PALETTE COLOR"

    rgb_gray = np.stack([arr] * 3, axis=-1)  # gray stored as RGB: no conversion, no notice
    r = load_radiograph(_pil_bytes(Image.fromarray(rgb_gray), "PNG"))
    np.testing.assert_array_equal(r.modality_values, arr.astype(np.float32))
    assert r.notices == ()

    rgba = np.dstack([rgb_gray, np.full_like(arr, 255)])
    rgba[:10, :10, 3] = 0  # transparent corner -> black
    r = load_radiograph(_pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert np.all(r.pixels[:10, :10] == 0) and np.allclose(r.pixels[20:, 20:], arr[20:, 20:] / 255.0, atol=1e-6)
    assert any("transparent" in n for n in r.notices)


# ----------------------------------------------------------------------------------------- JPEG variants
def test_jpeg_gray_rgb_and_cmyk():
    arr = _gradient(96, 128)
    r = load_radiograph(_pil_bytes(Image.fromarray(arr), "JPEG", quality=95))
    assert (r.format, r.bits_stored) == ("jpeg", 8)
    assert np.abs(r.modality_values - arr).max() <= 4

    colour = np.stack([arr, arr // 2, 255 - arr], axis=-1).astype(np.uint8)
    r = load_radiograph(_pil_bytes(Image.fromarray(colour), "JPEG", quality=95))
    lum = 0.299 * colour[..., 0] + 0.587 * colour[..., 1] + 0.114 * colour[..., 2]
    assert np.abs(r.modality_values - lum).mean() < 3
    assert any("grayscale" in n for n in r.notices)

    cmyk = Image.fromarray(np.stack([arr] * 3, axis=-1)).convert("CMYK")
    data = _pil_bytes(cmyk, "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    r = load_radiograph(data)
    assert r.photometric == "CMYK"
    assert np.abs(r.modality_values - arr).mean() < 3  # same picture, not inverted


def test_content_not_name_decides_the_format(tmp_path):
    arr = _gradient()
    fake_jpg = tmp_path / "radiograph.jpg"
    fake_jpg.write_bytes(_cv2_bytes(arr, ".png"))
    r = load_radiograph(fake_jpg)
    assert r.format == "png"
    np.testing.assert_array_equal(r.modality_values, arr.astype(np.float32))
    no_extension = tmp_path / "upload"
    no_extension.write_bytes(_cv2_bytes(arr, ".bmp"))
    assert load_radiograph(no_extension).format == "bmp"


@pytest.mark.parametrize(
    ("fmt", "kwargs", "expected_format"),
    [("TIFF", {}, "tiff"), ("BMP", {}, "bmp"), ("WEBP", {"lossless": True}, "webp")],
)
def test_tiff_bmp_webp(fmt, kwargs, expected_format):
    arr = _gradient()
    r = load_radiograph(_pil_bytes(Image.fromarray(arr), fmt, **kwargs))
    assert r.format == expected_format
    np.testing.assert_array_equal(r.modality_values, arr.astype(np.float32))


def test_tiff_16bit_and_multipage():
    arr = _gradient(hi=4095, dtype=np.uint16)
    r = load_radiograph(_pil_bytes(Image.fromarray(arr), "TIFF"))
    assert r.bits_stored == 16 and r.pixels.max() == 1.0
    np.testing.assert_array_equal(r.modality_values, arr.astype(np.float32))
    first, second = Image.fromarray(_gradient()), Image.fromarray(255 - _gradient())
    r = load_radiograph(_pil_bytes(first, "TIFF", save_all=True, append_images=[second]))
    assert r.frames == 2 and any("first of 2" in n for n in r.notices)
    np.testing.assert_array_equal(r.modality_values, _gradient().astype(np.float32))


def test_exif_orientation_is_applied():
    arr = _gradient(48, 64)
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    r = load_radiograph(_pil_bytes(image, "JPEG", quality=95, exif=exif.tobytes()))
    assert r.shape == (64, 48)
    assert any("EXIF" in n for n in r.notices)
    assert np.abs(r.modality_values - np.rot90(arr, k=-1)).max() <= 4


# ------------------------------------------------------------------------------------------- sources
def test_sources_path_str_bytes_file_and_getvalue(tmp_path):
    data = _cv2_bytes(_gradient(), ".png")
    path = tmp_path / "a.png"
    path.write_bytes(data)

    class Upload:  # like Streamlit's UploadedFile: getvalue() regardless of the read position
        def getvalue(self) -> bytes:
            return data

    results = [load_radiograph(path), load_radiograph(str(path)), load_radiograph(data),
               load_radiograph(bytearray(data)), load_radiograph(memoryview(data)),
               load_radiograph(io.BytesIO(data)), load_radiograph(Upload())]
    with path.open("rb") as fh:
        results.append(load_radiograph(fh))
    for r in results:
        np.testing.assert_array_equal(r.pixels, results[0].pixels)


def test_unreadable_sources(tmp_path):
    with pytest.raises(UnreadableSourceError, match="not found"):
        load_radiograph(tmp_path / "missing.png")
    with pytest.raises(UnreadableSourceError, match="folder"):
        load_radiograph(tmp_path)
    (tmp_path / "t.txt").write_text("hello")
    with (tmp_path / "t.txt").open("r") as fh, pytest.raises(UnreadableSourceError, match="text mode"):
        load_radiograph(fh)
    with pytest.raises(UnreadableSourceError):
        load_radiograph(12345)  # type: ignore[arg-type]
    with pytest.raises(RadiographError, match="max_pixels"):
        load_radiograph(b"x", max_pixels=0)


# -------------------------------------------------------------------------------------------- errors
def _png_with_header(width: int, height: int, idat: bytes = b"") -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_huge_header_is_refused_before_decoding():
    # a decompression bomb: 40000 x 40000 declared, a few KB of zlib-compressed zero rows
    bomb = _png_with_header(40000, 40000, zlib.compress(b"\x00" * (40001 * 50), 9))
    assert len(bomb) < 10_000
    with pytest.raises(ImageTooLargeError, match="megapixel"):
        load_radiograph(bomb)
    with pytest.raises(ImageTooLargeError):
        load_radiograph(_cv2_bytes(_gradient(), ".png"), max_pixels=1000)
    with pytest.raises(ImageTooLargeError):
        load_radiograph(_pil_bytes(Image.fromarray(_gradient()), "JPEG"), max_pixels=1000)


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        (b"", NotAnImageError, "empty"),
        (b"hello, this is text and not an image at all" * 4, NotAnImageError, "PNG, JPEG"),
        (b"%PDF-1.4\n" + b"0" * 200, NotAnImageError, "not a recognised image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, CorruptImageError, "PNG"),
        (b"\xff\xd8\xff\xe0" + b"\x00" * 40, CorruptImageError, "JPEG"),
    ],
    ids=["empty", "text", "pdf", "png-header-only", "jpeg-header-only"],
)
def test_not_an_image_and_corrupt(data, error, message):
    with pytest.raises(error, match=message):
        load_radiograph(data)


def test_blank_and_tiny_images_are_refused():
    with pytest.raises(BlankImageError, match="blank"):
        load_radiograph(_cv2_bytes(np.full((64, 64), 7, np.uint8), ".png"))
    with pytest.raises(BlankImageError):
        load_radiograph(_cv2_bytes(np.full((64, 64), 7, np.uint16), ".png"))
    with pytest.raises(NotARadiographError, match="too small"):
        load_radiograph(_cv2_bytes(_gradient(8, 8), ".png"))


def test_truncated_jpeg_is_refused_not_half_shown():
    data = _pil_bytes(Image.fromarray(_gradient(256, 256)), "JPEG", quality=90)
    with pytest.raises(CorruptImageError, match="truncated"):
        load_radiograph(data[: len(data) // 2])


def test_sniff_format():
    assert sniff_format(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10) == "png"
    assert sniff_format(b"\xff\xd8\xff\xdb") == "jpeg"
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"
    assert sniff_format(b"\x00" * 128 + b"DICM") == "dicom"
    assert sniff_format(b"GIF89a") is None


# ------------------------------------------------------------------------------------ record, windowing
def test_radiograph_is_read_only_and_repr_hides_patient():
    r = Radiograph(pixels=np.zeros((2, 2)), modality_values=np.zeros((2, 2)), window=None, format="png",
                   bits_stored=8, photometric="MONOCHROME2", patient={"PatientName": "Doe^Jane"})
    assert "Doe" not in repr(r)
    with pytest.raises(ValueError):
        r.pixels[0, 0] = 1.0
    with pytest.raises(AttributeError):
        r.format = "jpeg"  # type: ignore[misc]


def test_apply_window_linear_hand_values():
    x = np.array([0, 99, 99.5, 100, 149.5, 150, 200, 250], np.float32)
    # c = 150, w = 101: x <= 99.5 -> 0; x > 199.5 -> 1; else (x - 149.5) / 100 + 0.5
    y = apply_window(x, 150, 101)
    np.testing.assert_allclose(y, [0, 0, 0, 0.005, 0.5, 0.505, 1, 1], atol=1e-6)
    np.testing.assert_allclose(apply_window(x, 150, 101, invert=True), 1 - y, atol=1e-6)
    np.testing.assert_allclose(apply_window(x, 150, 101, photometric="MONOCHROME1"), 1 - y, atol=1e-6)
    np.testing.assert_array_equal(apply_window(np.array([0.0, 1.0, 2.0]), 1.5, 1), [0, 0, 1])


def test_apply_window_exact_and_sigmoid():
    x = np.array([50, 100, 150], np.float32)
    np.testing.assert_allclose(apply_window(x, 100, 100, function="LINEAR_EXACT"), [0, 0.5, 1], atol=1e-6)
    s = apply_window(x, 100, 100, function="SIGMOID")
    np.testing.assert_allclose(s, 1 / (1 + np.exp(-4 * (x - 100) / 100)), atol=1e-6)
    with pytest.raises(ValueError):
        apply_window(x, 100, 0)
    with pytest.raises(ValueError, match="unknown"):
        apply_window(x, 100, 10, function="GAMMA")


# ------------------------------------------------------------------------------------- real JPEG files
def test_real_chestcovnet_jpegs_load_at_their_manifest_size(chestcovnet_dir: Path):
    with (chestcovnet_dir / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[::200]
    assert len(rows) >= 8
    for row in rows:
        r = load_radiograph(chestcovnet_dir / "images" / row["file"])
        assert r.format == "jpeg" and r.bits_stored == 8
        assert r.shape == (int(row["height"]), int(row["width"]))
        assert 0.0 <= float(r.pixels.min()) < float(r.pixels.max()) <= 1.0
