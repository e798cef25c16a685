"""Image intake: untrusted bytes in, an upright H x W x 3 BGR uint8 array out, or a typed refusal.

Order matters for safety: size and format are checked on the raw bytes, the pixel count on the parsed
header, and only then is anything decoded, so a decompression bomb never gets to allocate its pixels.
"""

import io
import struct
import warnings

import cv2
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from workers.pipeline.config import IntakeLimits
from workers.pipeline.errors import CorruptImage, EmptyImage, ImageTooLarge, TooManyPixels, UnsupportedFormat

__all__ = ["DEFAULT_LIMITS", "IntakeLimits", "decode_image", "sniff_format"]

DEFAULT_LIMITS = IntakeLimits()
_JPEG_MAGIC = b"\xff\xd8\xff"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Pillow's parsers raise all of these on malformed input, depending on where the damage is.
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, IndexError, TypeError)


def sniff_format(data: bytes) -> str | None:
    """The Pillow format name of `data` from its magic bytes, or None when it is not JPEG, PNG or WebP."""
    if data.startswith(_JPEG_MAGIC):
        return "JPEG"
    if data.startswith(_PNG_MAGIC):
        return "PNG"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return None


def decode_image(data: bytes, *, limits: IntakeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Decode `data` into an upright BGR uint8 image, applying its EXIF orientation.

    Raises an `ImageRejected` subclass for empty, oversized, unsupported, bomb-sized or corrupt input.
    Alpha is composited on white (a transparent background is most often meant as white paper), 16-bit
    samples are scaled to 8 bits, and grayscale, palette and CMYK images come back as 3-channel BGR.
    """
    if not data:
        raise EmptyImage("The image is empty (0 bytes).")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"The image is {len(data):,} bytes; the limit is {limits.max_bytes:,} bytes.")
    image_format = sniff_format(data)
    if image_format is None:
        raise UnsupportedFormat("Only JPEG, PNG and WebP images are accepted.")

    image = _open_header(data, image_format, limits)
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise TooManyPixels(f"The image decodes to too many pixels: {error}") from error
    except _DECODE_ERRORS as error:
        raise CorruptImage(f"The {image_format} image is truncated or corrupt: {error}") from error
    return _to_bgr(_upright(image))


def _open_header(data: bytes, image_format: str, limits: IntakeLimits) -> Image.Image:
    """Parse only the header and refuse images announcing more pixels than allowed."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's bomb warning; its hard DecompressionBombError (at
            # twice Image.MAX_IMAGE_PIXELS) stays as a second line of defence and is mapped to our error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError as error:
        raise TooManyPixels(f"The image announces too many pixels: {error}") from error
    except (UnidentifiedImageError, *_DECODE_ERRORS) as error:
        raise CorruptImage(f"The {image_format} header is corrupt: {error}") from error
    width, height = image.size
    if width <= 0 or height <= 0:
        raise CorruptImage(f"The image header announces an empty {width}x{height} image.")
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,}."
        )
    return image


def _upright(image: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(image)
    except _DECODE_ERRORS:
        # A malformed EXIF block must not cost the client a perfectly decodable image: keep it as stored.
        return image


def _to_bgr(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own convert("L") clips 16-bit samples at 255 instead of scaling them.
        samples = np.asarray(image, dtype=np.float32)
        gray = np.clip(np.rint(samples / 257.0), 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if mode == "L":
        return cv2.cvtColor(np.asarray(image), cv2.COLOR_GRAY2BGR)
    if mode in {"RGBA", "LA", "La", "RGBa", "PA"} or (mode == "P" and "transparency" in image.info):
        rgba = np.asarray(image.convert("RGBA"), dtype=np.float32)
        alpha = rgba[..., 3:4] / 255.0
        rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor(np.rint(rgb).astype(np.uint8), cv2.COLOR_RGB2BGR)
    if mode != "RGB":
        image = image.convert("RGB")
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
