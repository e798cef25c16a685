"""Image intake: untrusted bytes in, an upright H x W x 3 BGR uint8 array out, or a typed refusal.

Order matters for safety: size and format are checked on the raw bytes, the pixel count on the parsed
header, and only then is anything decoded, so a decompression bomb never gets to allocate its pixels.
"""

import contextlib
import io
import re
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
# Every scan of a JPEG is a pass over all of its blocks: a progressive JPEG has about ten, and a crafted one
# with a million empty scans keeps a decoder busy for most of an hour.
MAX_JPEG_SCANS = 100
# Markers (segments and restart markers between them) a JPEG may have: tables, EXIF, an ICC profile in up to
# 256 chunks and its scans make a few hundred at most; millions of empty ones cost seconds to parse.
MAX_JPEG_SEGMENTS = 1000
# The end of a JPEG scan's entropy-coded data: 0xFF before a byte that is neither stuffing (0x00), a restart
# marker (0xD0-0xD7) nor a fill byte (0xFF). One literal byte first lets the regex engine skip ahead fast:
# 250 MB/s here, so a 10 MB file of nothing but stuffing costs 40 ms.
_NEXT_JPEG_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Rows composited on white at a time, so that an alpha image costs no full-size temporaries.
_COMPOSITE_ROWS = 256


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
    if image_format == "JPEG" and (refusal := jpeg_structure_refusal(data)):
        raise CorruptImage(refusal)

    image = _open_header(data, image_format, limits)
    try:
        image.load()
    except Image.DecompressionBombError as error:
        raise TooManyPixels("The image decodes to too many pixels.") from error
    except _DECODE_ERRORS as error:
        raise CorruptImage(f"The {image_format} image is truncated or corrupt.") from error
    return _to_bgr(_upright(image))


def jpeg_structure_refusal(data: bytes) -> str | None:
    """Why the JPEG's structure is refused, found by walking its segments without decoding (more scans than
    MAX_JPEG_SCANS, more segments than MAX_JPEG_SEGMENTS), or None. Bytes inside a segment (an EXIF
    thumbnail is a JPEG of its own) are skipped, and so are stray bytes between segments, as decoders skip
    them; the walk stops at the first limit passed."""
    scans = segments = 0
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF or data[position + 1] == 0x00:
            following = _NEXT_JPEG_MARKER.search(data, position)
            if following is None:
                break
            position = following.start()
            continue
        marker = data[position + 1]
        if marker == 0xFF:  # a fill byte before the marker
            position += 1
            continue
        if marker == 0xD9:  # end of image
            break
        segments += 1
        if segments > MAX_JPEG_SEGMENTS:
            return f"The JPEG image has more than {MAX_JPEG_SEGMENTS:,} segments."
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            position += 2
            continue
        position += 2 + int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:  # its entropy-coded data follows, skipped like stray bytes up to the next marker
            scans += 1
            if scans > MAX_JPEG_SCANS:
                return f"The JPEG image has more than {MAX_JPEG_SCANS} scans."
    return None


def _open_header(data: bytes, image_format: str, limits: IntakeLimits) -> Image.Image:
    """Parse only the header and refuse images announcing more pixels than allowed."""
    try:
        with warnings.catch_warnings():
            # Our own pixel limit below replaces Pillow's bomb warning; its hard DecompressionBombError (at
            # twice Image.MAX_IMAGE_PIXELS) stays as a second line of defence and is mapped to our error.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=[image_format])
    except Image.DecompressionBombError as error:
        raise TooManyPixels(
            f"The image announces too many pixels; the limit is {limits.max_pixels:,}."
        ) from error
    except (UnidentifiedImageError, *_DECODE_ERRORS) as error:
        # Pillow's own words name its internals (an object's address, its own limits), not the client's file.
        raise CorruptImage(f"The {image_format} header is corrupt or not supported.") from error
    width, height = image.size
    if width <= 0 or height <= 0:
        raise CorruptImage(f"The image header announces an empty {width}x{height} image.")
    if width * height > limits.max_pixels:
        raise TooManyPixels(
            f"The image is {width}x{height} = {width * height:,} pixels; the limit is {limits.max_pixels:,}."
        )
    return image


def _upright(image: Image.Image) -> Image.Image:
    # A malformed EXIF block must not cost the client a perfectly decodable image: it is kept as stored.
    with contextlib.suppress(_DECODE_ERRORS):
        ImageOps.exif_transpose(image, in_place=True)  # no second full-size copy
    return image


def _to_bgr(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own convert("L") clips 16-bit samples at 255 instead of scaling them.
        samples = np.asarray(image, dtype=np.float32)
        gray = np.clip(np.rint(samples / 257.0), 0, 255).astype(np.uint8)
        return cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR)
    if mode in {"RGBA", "LA", "La", "RGBa", "PA"} or "transparency" in image.info:
        return _composited_on_white(np.asarray(image.convert("RGBA")))
    if mode == "L":
        return cv2.cvtColor(np.asarray(image), cv2.COLOR_GRAY2BGR)
    if mode != "RGB":
        image = image.convert("RGB")
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def _composited_on_white(rgba: np.ndarray) -> np.ndarray:
    """BGR of an RGBA image laid on white, rounded to nearest, a band of rows at a time in 16-bit integers
    (in floats a 40-megapixel image needed 2.4 GB)."""
    bgr = np.empty((*rgba.shape[:2], 3), np.uint8)
    for top in range(0, rgba.shape[0], _COMPOSITE_ROWS):
        band = rgba[top : top + _COMPOSITE_ROWS].astype(np.uint16)
        alpha = band[..., 3:4]
        # (x + 127) // 255 rounds x / 255 to nearest: x is an integer, so x / 255 never ends in exactly .5.
        bgr[top : top + _COMPOSITE_ROWS] = (
            (band[..., 2::-1] * alpha + 255 * (255 - alpha) + 127) // 255
        ).astype(np.uint8)
    return bgr
