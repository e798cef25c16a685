import io
import struct
import time
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from tests.workers.pipeline.conftest import encode
from workers.pipeline.errors import (
    CorruptImage,
    EmptyImage,
    ImageRejected,
    ImageTooLarge,
    TooManyPixels,
    UnsupportedFormat,
)
from workers.pipeline.intake import IntakeLimits, decode_image, sniff_format

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_claiming(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG whose IHDR announces width x height RGB pixels (its data is one row)."""
    header = png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
    return (
        PNG_MAGIC + header + png_chunk(b"IDAT", zlib.compress(b"\x00\x00\x00\x00")) + png_chunk(b"IEND", b"")
    )


def pil_bytes(image: Image.Image, image_format: str, **save_options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **save_options)
    return buffer.getvalue()


@pytest.fixture
def decoding_forbidden(monkeypatch):
    """Fail the test if Pillow starts decoding pixel data."""

    def refuse(self):
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize("image_format", ["JPEG", "PNG", "WEBP"])
def test_supported_formats_decode_to_bgr(image_format):
    rgb_red = Image.new("RGB", (32, 24), (255, 0, 0))

    decoded = decode_image(pil_bytes(rgb_red, image_format, quality=95))

    assert decoded.shape == (24, 32, 3)
    assert decoded.dtype == np.uint8
    blue, green, red = decoded[12, 16].astype(int)
    assert red > 240
    assert blue < 15
    assert green < 15


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\xff\xd8\xff\xe0rest", "JPEG"),
        (PNG_MAGIC + b"rest", "PNG"),
        (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "WEBP"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", None),
        (b"GIF89a", None),
        (b"BM\x00\x00", None),
        (b"\xff\xd8", None),
    ],
)
def test_format_is_sniffed_from_magic_bytes(data, expected):
    assert sniff_format(data) == expected


def test_empty_input_is_refused():
    with pytest.raises(EmptyImage) as refusal:
        decode_image(b"")
    assert refusal.value.code == "EMPTY_IMAGE"
    assert refusal.value.http_status == 400


def test_text_file_named_jpg_is_unsupported(tmp_path):
    photo = tmp_path / "holiday.jpg"
    photo.write_text("this is not an image, whatever its name says")

    with pytest.raises(UnsupportedFormat) as refusal:
        decode_image(photo.read_bytes())
    assert refusal.value.code == "UNSUPPORTED_FORMAT"
    assert refusal.value.http_status == 415


@pytest.mark.parametrize("image_format", ["GIF", "BMP", "TIFF"])
def test_other_image_formats_are_unsupported(image_format):
    with pytest.raises(UnsupportedFormat):
        decode_image(pil_bytes(Image.new("RGB", (8, 8)), image_format))


def test_byte_limit_is_checked_before_anything_else(decoding_forbidden):
    data = png_claiming(10, 10) + b"\x00" * 2000

    with pytest.raises(ImageTooLarge) as refusal:
        decode_image(data, limits=IntakeLimits(max_bytes=1000))
    assert refusal.value.code == "IMAGE_TOO_LARGE"
    assert refusal.value.http_status == 413


def test_default_byte_limit_is_ten_megabytes():
    assert IntakeLimits().max_bytes == 10 * 1024 * 1024
    with pytest.raises(ImageTooLarge):
        decode_image(b"\xff\xd8\xff" + b"\x00" * (10 * 1024 * 1024))


@pytest.mark.parametrize(
    ("width", "height"),
    [
        (50_000, 50_000),  # beyond Pillow's own bomb limit: its DecompressionBombError becomes ours
        (8_000, 6_000),  # 48 MP: under Pillow's limit, over ours (40 MP)
    ],
)
def test_decompression_bomb_is_refused_from_the_header(width, height, decoding_forbidden):
    data = png_claiming(width, height)
    assert len(data) < 100

    started = time.perf_counter()
    with pytest.raises(TooManyPixels) as refusal:
        decode_image(data)
    assert time.perf_counter() - started < 0.5
    assert refusal.value.code == "TOO_MANY_PIXELS"
    assert refusal.value.http_status == 413


def test_pixel_limit_is_configurable():
    data = encode(np.zeros((100, 100, 3), np.uint8), "PNG")

    assert decode_image(data, limits=IntakeLimits(max_pixels=10_000)).shape == (100, 100, 3)
    with pytest.raises(TooManyPixels):
        decode_image(data, limits=IntakeLimits(max_pixels=9_999))


def test_truncated_jpeg_is_corrupt():
    noise = np.random.default_rng(0).integers(0, 256, (240, 320, 3), dtype=np.uint8)
    data = encode(noise, "JPEG", quality=90)

    with pytest.raises(CorruptImage) as refusal:
        decode_image(data[: len(data) // 2])
    assert refusal.value.code == "CORRUPT_IMAGE"
    assert refusal.value.http_status == 422


@pytest.mark.parametrize("data", [b"\xff\xd8\xff" + b"\x00" * 64, PNG_MAGIC + b"\x00" * 64, PNG_MAGIC])
def test_right_magic_with_garbage_is_corrupt(data):
    with pytest.raises(CorruptImage):
        decode_image(data)


def test_png_with_bad_checksum_is_corrupt():
    data = bytearray(encode(np.zeros((16, 16, 3), np.uint8), "PNG"))
    data[29] ^= 0xFF  # inside the IHDR CRC

    with pytest.raises(CorruptImage):
        decode_image(bytes(data))


def test_every_refusal_has_a_code_a_status_and_a_detail():
    for refusal_class, status in [
        (EmptyImage, 400),
        (ImageTooLarge, 413),
        (TooManyPixels, 413),
        (UnsupportedFormat, 415),
        (CorruptImage, 422),
    ]:
        refusal = refusal_class("why")
        assert isinstance(refusal, ImageRejected)
        assert refusal.http_status == status
        assert refusal.code.isupper()
        assert refusal.detail == "why"


@pytest.mark.parametrize(
    ("orientation", "upright_shape", "mark_centre"),
    [
        (1, (40, 60), (5, 5)),  # stored upright: the mark stays top-left
        (3, (40, 60), (34, 54)),  # rotated 180 degrees: bottom-right
        (6, (60, 40), (5, 34)),  # displayed rotated 90 degrees clockwise: top-right
        (8, (60, 40), (54, 5)),  # displayed rotated 90 degrees counter-clockwise: bottom-left
    ],
)
def test_exif_orientation_is_applied(orientation, upright_shape, mark_centre):
    stored = np.full((40, 60, 3), 255, np.uint8)
    stored[:10, :10] = (0, 0, 255)  # a red mark in the stored top-left corner (BGR)
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = pil_bytes(Image.fromarray(cv2.cvtColor(stored, cv2.COLOR_BGR2RGB)), "JPEG", exif=exif, quality=95)

    decoded = decode_image(data)

    assert decoded.shape == (*upright_shape, 3)
    redness = decoded[..., 2].astype(int) - decoded[..., 0].astype(int)
    assert redness[mark_centre] > 200
    marked_rows, marked_columns = np.nonzero(redness > 128)
    assert abs(marked_rows.mean() - mark_centre[0]) < 2
    assert abs(marked_columns.mean() - mark_centre[1]) < 2


def test_grayscale_becomes_three_equal_channels():
    gray = np.tile(np.arange(0, 256, 8, dtype=np.uint8), (16, 1))

    decoded = decode_image(pil_bytes(Image.fromarray(gray, "L"), "PNG"))

    assert decoded.shape == (16, 32, 3)
    assert np.array_equal(decoded[..., 0], gray)
    assert np.array_equal(decoded[..., 1], gray)
    assert np.array_equal(decoded[..., 2], gray)


def test_cmyk_jpeg_is_converted_to_bgr():
    cyan = Image.new("CMYK", (16, 16), (255, 0, 0, 0))

    decoded = decode_image(pil_bytes(cyan, "JPEG", quality=95))

    blue, green, red = decoded[8, 8].astype(int)
    assert red < 30
    assert green > 225
    assert blue > 225


def test_sixteen_bit_grayscale_is_scaled_not_clipped():
    samples = np.array([[0, 32896, 65535, 1000]], dtype=np.uint16)
    data = pil_bytes(Image.fromarray(samples), "PNG")

    decoded = decode_image(data)

    assert decoded[0, :, 0].tolist() == [0, 128, 255, 4]


def test_alpha_is_composited_on_white():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[:, :4] = (255, 0, 0, 0)  # fully transparent red: white
    rgba[:, 4:] = (255, 0, 0, 128)  # half-transparent red over white: pink

    decoded = decode_image(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))

    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[0, 7].tolist() == [127, 127, 255]


def test_palette_with_transparency_is_composited_on_white():
    palette_image = Image.new("P", (8, 8), 0)
    palette_image.putpalette([0, 0, 0] + [0, 255, 0] * 255)
    palette_image.paste(1, (4, 0, 8, 8))
    data = pil_bytes(palette_image, "PNG", transparency=0)

    decoded = decode_image(data)

    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[0, 7].tolist() == [0, 255, 0]


def test_webp_with_alpha_is_composited_on_white():
    rgba = np.zeros((16, 16, 4), np.uint8)
    rgba[:, 8:] = (0, 0, 255, 255)

    decoded = decode_image(pil_bytes(Image.fromarray(rgba, "RGBA"), "WEBP", lossless=True))

    assert decoded[8, 2].tolist() == [255, 255, 255]
    assert decoded[8, 13].tolist() == [255, 0, 0]


def test_grayscale_with_alpha_is_composited_on_white():
    gray_alpha = Image.new("LA", (4, 4), (0, 0))

    decoded = decode_image(pil_bytes(gray_alpha, "PNG"))

    assert decoded[0, 0].tolist() == [255, 255, 255]


def test_an_rgb_png_with_a_transparent_colour_key_is_composited_on_white():
    rgb = Image.new("RGB", (8, 8), (80, 80, 80))
    rgb.paste((0, 0, 255), (4, 0, 8, 8))

    decoded = decode_image(pil_bytes(rgb, "PNG", transparency=(80, 80, 80)))

    assert decoded[0, 0].tolist() == [255, 255, 255], "the key colour is transparent"
    assert decoded[0, 7].tolist() == [255, 0, 0]


def test_alpha_compositing_rounds_every_level_to_the_nearest_value():
    levels = np.arange(256, dtype=np.uint8)
    rgba = np.zeros((256, 256, 4), np.uint8)
    rgba[..., 0] = levels[:, None]  # red: every value against every alpha
    rgba[..., 3] = levels[None, :]

    decoded = decode_image(pil_bytes(Image.fromarray(rgba, "RGBA"), "PNG"))

    red = levels[:, None].astype(np.float64)
    alpha = levels[None, :] / 255.0
    expected = np.rint(red * alpha + 255.0 * (1.0 - alpha))
    assert np.array_equal(decoded[..., 2], expected)
    assert np.array_equal(decoded[..., 0], np.rint(255.0 * (1.0 - alpha)).repeat(256, axis=0))


def _with_empty_scans(jpeg: bytes, count: int) -> bytes:
    """A progressive JPEG with `count` more scans, each an AC scan of the first component with no data."""
    empty_scan = b"\xff\xda\x00\x08\x01\x01\x00\x01\x3f\x00"
    assert jpeg.endswith(b"\xff\xd9")
    return jpeg[:-2] + empty_scan * count + b"\xff\xd9"


def _progressive_jpeg(**save_options) -> bytes:
    rng = np.random.default_rng(5)
    gray = Image.fromarray(rng.integers(0, 256, (64, 64), dtype=np.uint8), "L")
    return pil_bytes(gray, "JPEG", progressive=True, **save_options)


def test_a_jpeg_with_more_scans_than_any_encoder_writes_is_refused_before_decoding(decoding_forbidden):
    with pytest.raises(CorruptImage, match="scans"):
        decode_image(_with_empty_scans(_progressive_jpeg(), 1_000))


def _with_comment(jpeg: bytes, comment: bytes) -> bytes:
    segment = b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment
    return jpeg[:2] + segment + jpeg[2:]


def test_progressive_jpegs_and_jpegs_whose_other_segments_hold_scan_markers_decode():
    plain = decode_image(_progressive_jpeg())
    # Bytes inside a segment (a comment, an EXIF thumbnail) are not scans.
    with_markers_in_a_comment = decode_image(_with_comment(_progressive_jpeg(), b"\xff\xda" * 500))
    a_few_more_scans = decode_image(_with_empty_scans(_progressive_jpeg(), 20))

    assert plain.shape == with_markers_in_a_comment.shape == a_few_more_scans.shape == (64, 64, 3)


def test_a_refusal_says_nothing_of_the_decoders_internals():
    with pytest.raises(CorruptImage) as refusal:
        decode_image(PNG_MAGIC + b"\x00" * 64)

    assert "0x" not in refusal.value.detail
    assert "BytesIO" not in refusal.value.detail


def test_a_stray_byte_before_the_scans_does_not_hide_them(decoding_forbidden):
    jpeg = _with_empty_scans(_progressive_jpeg(), 1_000)
    app0_end = 4 + struct.unpack(">H", jpeg[4:6])[0]  # SOI, then APP0 (JFIF)

    with pytest.raises(CorruptImage, match="scans"):
        decode_image(jpeg[:app0_end] + b"\x00" + jpeg[app0_end:])  # decoders skip the stray byte


def test_a_jpeg_of_thousands_of_empty_segments_is_refused_before_decoding(decoding_forbidden):
    jpeg = _progressive_jpeg()

    with pytest.raises(CorruptImage, match="segments"):
        decode_image(jpeg[:2] + b"\xff\xfe\x00\x02" * 5_000 + jpeg[2:])


def test_a_grey_png_with_a_transparent_colour_key_is_composited_on_white():
    grey = Image.new("L", (8, 8), 80)
    grey.paste(20, (4, 0, 8, 8))

    decoded = decode_image(pil_bytes(grey, "PNG", transparency=80))

    assert decoded[0, 0].tolist() == [255, 255, 255]
    assert decoded[0, 7].tolist() == [20, 20, 20]
