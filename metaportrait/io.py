"""Image loading and validation for user inputs (the source portrait: any photo a user uploads).

Everything a user can upload goes through :func:`load_image`, which turns any supported still
image into the package's numpy convention (``uint8`` RGB ``H×W×3``) or raises one of the
package's own errors with a message that names the input and the limit it broke:

* :class:`~metaportrait.errors.InvalidImageError` — not an image, truncated/corrupt, an
  unsupported pixel layout, or smaller than ``InputLimits.min_image_side``;
* :class:`~metaportrait.errors.InputTooLargeError` — file bytes or pixel count over the limits.
  The pixel count is checked from the header, *before* any pixel is decoded, so a
  decompression bomb (a tiny file declaring a huge canvas) fails fast without allocating.

:class:`InputLimits` is shared with :mod:`metaportrait.video`.
"""

from __future__ import annotations

import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageFile, ImageOps

from metaportrait.errors import InputTooLargeError, InvalidImageError

__all__ = [
    "DEFAULT_LIMITS",
    "IMAGE_FORMATS",
    "ImageSource",
    "InputLimits",
    "load_image",
]

MiB = 1024 * 1024

#: Formats :func:`load_image` will decode. Formats whose PIL plugins run external programs
#: (EPS -> Ghostscript) or that are rarely real photos are deliberately absent.
IMAGE_FORMATS: tuple[str, ...] = (
    "PNG",
    "JPEG",
    "MPO",
    "WEBP",
    "BMP",
    "DIB",
    "GIF",
    "TIFF",
    "PPM",
    "TGA",
    "ICO",
    "JPEG2000",
    "AVIF",
)

ImageSource = Union[str, os.PathLike, bytes, bytearray, memoryview, Image.Image, np.ndarray]


@dataclass(frozen=True)
class InputLimits:
    """Limits applied to user inputs (images here, videos in :mod:`metaportrait.video`).

    Attributes:
        max_file_bytes: largest accepted image file (bytes); default 50 MiB.
        max_video_bytes: largest accepted video file (bytes); default 200 MiB.
        max_image_pixels: largest accepted image canvas, width × height; default 40 MP. Checked
            from the header before decoding. PIL's own decompression-bomb guard
            (``PIL.Image.MAX_IMAGE_PIXELS``, a process-wide setting this module does not change)
            also applies; when it is stricter it wins, and its error is reported the same way.
        min_image_side: smallest accepted image side in pixels; default 64.
        max_video_seconds: longest accepted video; default 60 s.
        max_video_side: largest accepted video width or height; default 1920.
        max_video_frames: most frames accepted in one video; default 3600.
    """

    max_file_bytes: int = 50 * MiB
    max_video_bytes: int = 200 * MiB
    max_image_pixels: int = 40_000_000
    min_image_side: int = 64
    max_video_seconds: float = 60.0
    max_video_side: int = 1920
    max_video_frames: int = 3600

    def __post_init__(self) -> None:
        for name in (
            "max_file_bytes",
            "max_video_bytes",
            "max_image_pixels",
            "max_video_side",
            "max_video_frames",
        ):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"InputLimits.{name} must be a positive int, got {value!r}")
        if isinstance(self.min_image_side, bool) or not isinstance(self.min_image_side, int):
            raise ValueError(f"InputLimits.min_image_side must be an int, got {self.min_image_side!r}")
        if self.min_image_side < 1:
            raise ValueError(f"InputLimits.min_image_side must be >= 1, got {self.min_image_side!r}")
        if not (isinstance(self.max_video_seconds, (int, float)) and self.max_video_seconds > 0):
            raise ValueError(
                f"InputLimits.max_video_seconds must be a positive number, got {self.max_video_seconds!r}"
            )


DEFAULT_LIMITS = InputLimits()

# Modes whose pixels carry an alpha channel (composited onto white).
_ALPHA_MODES = {"RGBA", "RGBa", "LA", "La", "PA"}
# Modes PIL converts to RGB exactly enough by itself.
_DIRECT_MODES = {"1", "L", "P", "RGB", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"}
_INT16_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def _mb(n: int) -> str:
    return f"{n / MiB:.1f} MiB"


def _check_pixels(name: str, width: int, height: int, limits: InputLimits) -> None:
    if width * height > limits.max_image_pixels:
        raise InputTooLargeError(
            f"{name} is {width}×{height} = {width * height / 1e6:.1f} megapixels; the limit is "
            f"{limits.max_image_pixels / 1e6:.1f} megapixels. Downscale the image and try again."
        )


def _check_min_side(name: str, width: int, height: int, limits: InputLimits) -> None:
    if min(width, height) < limits.min_image_side:
        raise InvalidImageError(
            f"{name} is {width}×{height} pixels; both sides must be at least "
            f"{limits.min_image_side} pixels for a face to be usable."
        )


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """``H×W×4`` uint8 RGBA → ``H×W×3`` uint8 RGB over a white background (straight alpha)."""
    rgb = rgba[..., :3].astype(np.float32)
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    out = rgb * alpha + 255.0 * (1.0 - alpha)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def _float_to_uint8(arr: np.ndarray, name: str, error: type[Exception]) -> np.ndarray:
    """Float pixels in [0, 1] → uint8; tiny numerical overshoot (±1e-3) is clipped."""
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise error(f"{name} has NaN or infinite pixel values.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3 or hi > 1.0 + 1e-3:
        raise error(
            f"{name} has float pixel values in [{lo:.4g}, {hi:.4g}]; float images must be in "
            "[0, 1] (divide 0..255 data by 255)."
        )
    return np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)


def _uint16_to_uint8(arr: np.ndarray) -> np.ndarray:
    """Full-range 16-bit → 8-bit: v * 255 / 65535 rounded (i.e. v / 257), never clipping."""
    return ((arr.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)


def _gray_or_color_to_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8 ``H×W`` / ``H×W×1`` / ``H×W×3`` / ``H×W×4`` → ``H×W×3`` (alpha over white)."""
    if arr.ndim == 2:
        arr = arr[..., None]
    channels = arr.shape[2]
    if channels == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 3:
        return arr
    if channels == 4:
        return _composite_on_white(arr)
    raise ValueError(f"unsupported channel count {channels}")


def _from_array(arr: np.ndarray, name: str, limits: InputLimits) -> np.ndarray:
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
        raise ValueError(
            f"{name}: expected an H×W, H×W×1, H×W×3 or H×W×4 array, got shape {arr.shape}"
        )
    height, width = int(arr.shape[0]), int(arr.shape[1])
    _check_pixels(name, width, height, limits)
    _check_min_side(name, width, height, limits)
    if arr.dtype == np.uint8:
        out = arr
    elif arr.dtype == np.uint16:
        out = _uint16_to_uint8(arr)
    elif np.issubdtype(arr.dtype, np.floating):
        out = _float_to_uint8(arr, name, ValueError)
    elif arr.dtype == np.bool_:
        out = arr.astype(np.uint8) * 255
    else:
        raise ValueError(
            f"{name}: unsupported dtype {arr.dtype}; use uint8 (0..255), uint16 (0..65535) or "
            "float in [0, 1]"
        )
    return np.ascontiguousarray(_gray_or_color_to_rgb(out))


def _pil_to_rgb(im: Image.Image, name: str) -> np.ndarray:
    """Decoded PIL image of any supported mode → uint8 ``H×W×3`` RGB."""
    mode = im.mode
    if mode in _ALPHA_MODES or "transparency" in im.info:
        # P/L/RGB with a tRNS chunk or palette transparency become RGBA first.
        return _composite_on_white(np.asarray(im.convert("RGBA")))
    if mode in _INT16_MODES:
        return _gray_or_color_to_rgb(_uint16_to_uint8(np.asarray(im)))
    if mode == "I":
        arr = np.asarray(im)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise InvalidImageError(
                f"{name} has 32-bit integer pixels in [{lo}, {hi}]; only 8- and 16-bit images "
                "are supported."
            )
        if im.format is None and hi <= 255:
            # An in-memory "I" image made by PIL from 8-bit data (im.convert("I")) keeps 0..255.
            return _gray_or_color_to_rgb(arr.astype(np.uint8))
        # Decoded files store 16-bit greyscale (PGM, some TIFF/PNG) as "I": scale by 16 bits.
        return _gray_or_color_to_rgb(_uint16_to_uint8(arr.astype(np.uint16)))
    if mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        finite = np.isfinite(arr)
        hi = float(arr[finite].max()) if finite.any() else 0.0
        if finite.all() and 1.0 + 1e-3 < hi <= 255.0 + 1e-3:
            # PIL's own convention for "F" made from 8-bit data is 0..255.
            arr = arr / 255.0
        return _gray_or_color_to_rgb(_float_to_uint8(arr, name, InvalidImageError))
    if mode in _DIRECT_MODES:
        return np.asarray(im.convert("RGB"))
    try:
        return np.asarray(im.convert("RGB"))
    except ValueError as e:
        raise InvalidImageError(f"{name} has the unsupported pixel mode {mode!r} ({e}).") from e


def _apply_exif_orientation(im: Image.Image) -> Image.Image:
    try:
        rotated = ImageOps.exif_transpose(im)
    except (SyntaxError, ValueError, TypeError, KeyError, OSError) as e:
        # Malformed EXIF must not make an otherwise good photo unusable.
        warnings.warn(f"ignoring unreadable EXIF orientation: {e}", stacklevel=3)
        return im
    return im if rotated is None else rotated


def _available_formats() -> list[str]:
    """:data:`IMAGE_FORMATS` whose PIL plugins are present in this installation."""
    Image.init()
    return [f for f in IMAGE_FORMATS if f in Image.OPEN]


def _open_and_decode(fp: io.BufferedIOBase | io.BytesIO, name: str, limits: InputLimits) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp, formats=_available_formats())
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise InputTooLargeError(
            f"{name} declares too many pixels ({e}); the limit is "
            f"{min(limits.max_image_pixels, Image.MAX_IMAGE_PIXELS or limits.max_image_pixels) / 1e6:.1f} "
            "megapixels."
        ) from e
    except Image.UnidentifiedImageError as e:
        raise InvalidImageError(
            f"{name} is not an image in a supported format ({', '.join(_available_formats())})."
        ) from e
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise InvalidImageError(f"{name} is not a readable image: {e}") from e
    with im:
        width, height = im.size
        # Header-only checks: nothing has been decoded yet.
        _check_pixels(name, width, height, limits)
        _check_min_side(name, width, height, limits)
        if getattr(im, "n_frames", 1) > 1:
            im.seek(0)  # animated GIF/WebP/APNG, multi-page TIFF: the first frame
        try:
            im.load()
        except Image.DecompressionBombError as e:
            raise InputTooLargeError(f"{name}: {e}") from e
        except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:
            raise InvalidImageError(f"{name} is truncated or corrupt: {e}") from e
        im = _apply_exif_orientation(im)
        rgb = _pil_to_rgb(im, name)
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def load_image(source: ImageSource, limits: InputLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Load a still image as ``uint8`` RGB ``H×W×3``.

    Args:
        source: a file path, the file's bytes, a ``PIL.Image.Image`` or a numpy array
            (``uint8``, ``uint16`` or float in [0, 1]; ``H×W``, ``H×W×1``, ``H×W×3`` RGB or
            ``H×W×4`` RGBA).
        limits: size limits (:data:`DEFAULT_LIMITS` by default).

    EXIF orientation is applied. Alpha (RGBA, LA, P/L/RGB with transparency) is composited onto
    white; 16-bit images are scaled by their bit depth (v / 257), not clipped; CMYK (including
    Adobe's inverted CMYK JPEGs) and YCbCr are converted by PIL.

    Raises:
        InvalidImageError: not an image, truncated/corrupt, unsupported mode, or a side shorter
            than ``limits.min_image_side``.
        InputTooLargeError: file larger than ``limits.max_file_bytes`` or more than
            ``limits.max_image_pixels`` pixels (checked before decoding).
        ValueError: a numpy array of an unsupported shape/dtype/range, or an unsupported type.
    """
    if ImageFile.LOAD_TRUNCATED_IMAGES:
        # A process-wide PIL setting that turns truncated files into grey-padded images.
        warnings.warn(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True in this process: truncated images "
            "will not be detected",
            stacklevel=2,
        )
    if isinstance(source, np.ndarray):
        return _from_array(source, f"<numpy array {source.shape} {source.dtype}>", limits)
    if isinstance(source, Image.Image):
        name = f"<PIL image {source.mode} {source.size[0]}×{source.size[1]}>"
        width, height = source.size
        _check_pixels(name, width, height, limits)
        _check_min_side(name, width, height, limits)
        try:
            source.load()  # an image from Image.open() may not be decoded yet
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            raise InvalidImageError(f"{name} is truncated or corrupt: {e}") from e
        im = _apply_exif_orientation(source)
        return np.ascontiguousarray(_pil_to_rgb(im, name), dtype=np.uint8)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = f"<{len(data)} bytes>"
        if len(data) > limits.max_file_bytes:
            raise InputTooLargeError(
                f"{name}: the image is {_mb(len(data))}; the limit is {_mb(limits.max_file_bytes)}."
            )
        return _open_and_decode(io.BytesIO(data), name, limits)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source).expanduser()
        name = f"'{path}'"
        if not path.is_file():
            raise InvalidImageError(f"{name} does not exist or is not a file.")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise InputTooLargeError(
                f"{name} is {_mb(size)}; the limit for images is {_mb(limits.max_file_bytes)}."
            )
        if size == 0:
            raise InvalidImageError(f"{name} is empty (0 bytes); it is not an image.")
        with open(path, "rb") as fp:
            return _open_and_decode(fp, name, limits)
    raise ValueError(
        f"load_image: unsupported source type {type(source).__name__}; pass a path, bytes, a PIL "
        "image or a numpy array"
    )
