"""metaportrait.io.load_image on real images in every supported layout, and on bad inputs."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
import zlib

import numpy as np
import pytest
from PIL import Image

from metaportrait.errors import InputTooLargeError, InvalidImageError
from metaportrait.io import DEFAULT_LIMITS, InputLimits, load_image


def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def _mad(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.int32) - b.astype(np.int32)).mean())


def _gray(rgb: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).convert("L"))


def _check_rgb(out: np.ndarray, shape: tuple[int, int]) -> None:
    assert out.dtype == np.uint8
    assert out.shape == (*shape, 3)
    assert out.flags["C_CONTIGUOUS"]


def test_rgb_file_path_and_bytes(astronaut, tmp_path):
    path = tmp_path / "astronaut.png"
    Image.fromarray(astronaut).save(path)
    out = load_image(path)
    _check_rgb(out, (512, 512))
    np.testing.assert_array_equal(out, astronaut)
    np.testing.assert_array_equal(load_image(str(path)), astronaut)
    np.testing.assert_array_equal(load_image(path.read_bytes()), astronaut)


@pytest.mark.parametrize("mode", ["L", "1", "YCbCr", "RGB"])
def test_simple_modes(astronaut, tmp_path, mode):
    im = Image.fromarray(astronaut).convert(mode)
    fmt = "JPEG" if mode == "YCbCr" else "PNG"
    path = tmp_path / f"img.{fmt.lower()}"
    im.save(path, fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    out = load_image(path)
    _check_rgb(out, (512, 512))
    if mode == "L":
        np.testing.assert_array_equal(out[..., 0], np.asarray(im))
        np.testing.assert_array_equal(out[..., 0], out[..., 2])
    elif mode == "1":
        assert set(np.unique(out).tolist()) <= {0, 255}
    else:
        assert _mad(out, astronaut) < 3.0


def test_rgba_composited_on_white(astronaut, tmp_path):
    rgba = np.dstack([astronaut, np.full((512, 512), 255, np.uint8)])
    rgba[:, :256, 3] = 0  # left half fully transparent
    rgba[:, 256:384, 3] = 128
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_image(path)
    _check_rgb(out, (512, 512))
    assert (out[:, :256] == 255).all()
    np.testing.assert_array_equal(out[:, 384:], astronaut[:, 384:])
    expected = np.rint(astronaut[:, 256:384] * (128 / 255) + 255 * (1 - 128 / 255))
    assert np.abs(out[:, 256:384].astype(int) - expected).max() <= 1


def test_la_composited_on_white(astronaut):
    gray = _gray(astronaut)
    alpha = np.zeros_like(gray)
    alpha[256:] = 255
    im = Image.merge("LA", [Image.fromarray(gray), Image.fromarray(alpha)])
    out = load_image(_png_bytes(im))
    assert (out[:256] == 255).all()
    np.testing.assert_array_equal(out[256:, :, 1], gray[256:])


def test_palette_with_transparency(astronaut):
    im = Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    pal_idx = np.asarray(im)
    transparent = int(pal_idx[0, 0])
    im.info["transparency"] = transparent
    raw = _png_bytes(im)
    assert Image.open(io.BytesIO(raw)).mode == "P"
    out = load_image(raw)
    _check_rgb(out, (512, 512))
    assert (out[pal_idx == transparent] == 255).all()
    opaque = pal_idx != transparent
    assert _mad(out[opaque], astronaut[opaque]) < 12.0


def test_palette_without_transparency(astronaut):
    im = Image.fromarray(astronaut).convert("P", palette=Image.Palette.ADAPTIVE, colors=256)
    out = load_image(_png_bytes(im))
    assert _mad(out, astronaut) < 8.0


def test_16bit_png_scaled_by_bit_depth(astronaut, tmp_path):
    gray8 = _gray(astronaut)
    gray16 = gray8.astype(np.uint16) * 257  # full 16-bit range
    path = tmp_path / "gray16.png"
    Image.fromarray(gray16).save(path)
    assert Image.open(path).mode in ("I;16", "I")
    out = load_image(path)
    _check_rgb(out, (512, 512))
    np.testing.assert_array_equal(out[..., 0], gray8)  # not clipped to 255 (that would be white)
    # a mid-grey 16-bit value stays mid-grey
    mid = Image.fromarray(np.full((64, 64), 32768, np.uint16))
    assert load_image(_png_bytes(mid))[0, 0, 0] in (127, 128)


@pytest.mark.parametrize("mode", ["I;16B", "I", "F"])
def test_wide_pil_modes(astronaut, mode):
    gray8 = _gray(astronaut)
    if mode == "I;16B":
        im = Image.frombytes("I;16B", (512, 512), (gray8.astype(">u2") * 257).tobytes())
    else:
        im = Image.fromarray(gray8).convert(mode)  # PIL keeps 0..255 for I and F made from L
    out = load_image(im)
    assert np.abs(out[..., 0].astype(int) - gray8).max() <= 1


def test_float_tiff_in_unit_range(astronaut, tmp_path):
    gray = _gray(astronaut).astype(np.float32) / 255.0
    path = tmp_path / "f.tiff"
    Image.fromarray(gray, mode="F").save(path)
    out = load_image(path)
    assert np.abs(out[..., 0].astype(int) - _gray(astronaut)).max() <= 1


def test_cmyk_jpeg_adobe_inverted(astronaut, tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(astronaut).convert("CMYK").save(path, "JPEG", quality=95)
    raw = path.read_bytes()
    assert b"Adobe" in raw  # libjpeg writes the APP14 Adobe marker: inverted CMYK
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    _check_rgb(out, (512, 512))
    assert _mad(out, astronaut) < 4.0  # an un-inverted decode would be a photo negative (~100)


@pytest.mark.parametrize(
    "orientation, rotate",
    [(6, lambda a: np.rot90(a, -1)), (8, lambda a: np.rot90(a, 1)), (3, lambda a: np.rot90(a, 2))],
)
def test_exif_orientation_applied(astronaut, tmp_path, orientation, rotate):
    stored = astronaut[:, :384]  # not square, so a missed rotation changes the shape
    im = Image.fromarray(np.ascontiguousarray(stored))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "exif.jpg"
    im.save(path, "JPEG", quality=95, exif=exif.tobytes())
    out = load_image(path)
    expected = rotate(stored)
    assert out.shape == expected.shape
    assert _mad(out, expected) < 3.0


def test_numpy_inputs(astronaut):
    np.testing.assert_array_equal(load_image(astronaut), astronaut)
    gray = _gray(astronaut)
    np.testing.assert_array_equal(load_image(gray)[..., 1], gray)
    np.testing.assert_array_equal(load_image(gray[..., None])[..., 2], gray)
    np.testing.assert_array_equal(load_image(astronaut.astype(np.uint16) * 257), astronaut)
    np.testing.assert_array_equal(load_image(astronaut.astype(np.float32) / 255.0), astronaut)
    rgba = np.dstack([astronaut, np.zeros((512, 512), np.uint8)])
    assert (load_image(rgba) == 255).all()


def test_numpy_bad_arguments(astronaut):
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        load_image(astronaut.astype(np.float32))  # 0..255 floats
    with pytest.raises(ValueError, match="int64"):
        load_image(astronaut.astype(np.int64))
    with pytest.raises(ValueError, match="shape"):
        load_image(np.zeros((64, 64, 2), np.uint8))
    with pytest.raises(ValueError, match="unsupported source type"):
        load_image(12345)


def test_text_renamed_png(tmp_path):
    path = tmp_path / "notes.png"
    path.write_text("this is not a picture\n" * 20)
    with pytest.raises(InvalidImageError, match=r"notes\.png.*is not an image"):
        load_image(path)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(InvalidImageError, match="does not exist"):
        load_image(tmp_path / "nope.png")
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InvalidImageError, match="empty"):
        load_image(empty)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize("fraction", [0.3, 0.9])
def test_truncated_images(astronaut, tmp_path, fmt, fraction):
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, fmt)
    data = buf.getvalue()
    path = tmp_path / f"cut.{fmt.lower()}"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(InvalidImageError, match=r"cut\..*(truncated|corrupt)"):
        load_image(path)


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("side", [30000, 8000])  # over PIL's own guard / over our 40 MP limit only
def test_decompression_bomb_fails_fast_without_allocating(tmp_path, side):
    path = tmp_path / "bomb.png"
    path.write_bytes(_png_header_only(side, side))
    assert path.stat().st_size < 200
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(InputTooLargeError, match=r"bomb\.png.*(megapixels|pixels)") as info:
            load_image(path)
        elapsed = time.perf_counter() - t0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "40.0 megapixels" in str(info.value)
    assert elapsed < 0.5
    assert peak < 5 * 2**20  # a decoded 8000² RGB image would be 192 MB


def test_pixel_limit_is_configurable(astronaut):
    small = InputLimits(max_image_pixels=100_000)
    with pytest.raises(InputTooLargeError, match=r"512×512.*0\.1 megapixels"):
        load_image(_png_bytes(Image.fromarray(astronaut)), small)
    with pytest.raises(InputTooLargeError, match="megapixels"):
        load_image(astronaut, small)


def test_file_too_large(astronaut, tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(_png_bytes(Image.fromarray(astronaut)))
    limits = InputLimits(max_file_bytes=10_000)
    with pytest.raises(InputTooLargeError, match=r"big\.png.*MiB.*limit"):
        load_image(path, limits)
    with pytest.raises(InputTooLargeError, match="limit"):
        load_image(path.read_bytes(), limits)
    assert DEFAULT_LIMITS.max_file_bytes == 50 * 2**20


def test_too_small_image(astronaut, tmp_path):
    path = tmp_path / "tiny.png"
    Image.fromarray(astronaut[:40, :300]).save(path)
    with pytest.raises(InvalidImageError, match=r"tiny\.png.*300×40.*at least 64"):
        load_image(path)
    with pytest.raises(InvalidImageError, match="at least 64"):
        load_image(astronaut[:63])
    assert load_image(astronaut[:64, :64]).shape == (64, 64, 3)


def test_pil_image_input_lazy_and_truncated(astronaut, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(astronaut).save(buf, "JPEG", quality=95)
    data = buf.getvalue()
    lazy = Image.open(io.BytesIO(data))  # not decoded yet
    assert _mad(load_image(lazy), astronaut) < 3.0
    broken = Image.open(io.BytesIO(data[: len(data) // 2]))
    with pytest.raises(InvalidImageError, match="truncated"):
        load_image(broken)


def test_limits_validation():
    with pytest.raises(ValueError, match="max_image_pixels"):
        InputLimits(max_image_pixels=0)
    with pytest.raises(ValueError, match="max_video_seconds"):
        InputLimits(max_video_seconds=-1.0)
