"""Turn what a caller calls an image into (filename, bytes, content type) for a multipart upload."""

from __future__ import annotations

import io
import mimetypes
import os
from typing import IO, Any, Union

ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], Any]
"""A path, raw encoded bytes, a binary file object, a PIL image or a numpy array (H x W x 3, RGB, uint8)."""


def _sniff(data: bytes) -> str:
    if data.startswith(b"\xff\xd8"):
        return "image/jpeg"
    if data.startswith(b"\x89PNG"):
        return "image/png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "application/octet-stream"


def _pil_to_jpeg(image: Any) -> bytes:
    buffer = io.BytesIO()
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGB")
    image.save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _module_of(obj: Any) -> str:
    return type(obj).__module__.split(".", 1)[0]


def image_part(image: ImageInput) -> tuple[str, bytes, str]:
    """(filename, content, content type) of `image`; PIL and numpy are imported only when given one."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return "image", data, _sniff(data)
    if isinstance(image, (str, os.PathLike)):
        path = os.fspath(image)
        with open(path, "rb") as handle:
            data = handle.read()
        guessed = mimetypes.guess_type(path)[0]
        return os.path.basename(path) or "image", data, guessed or _sniff(data)
    if hasattr(image, "read"):
        data = image.read()
        if isinstance(data, str):
            raise TypeError("open the image file in binary mode ('rb')")
        name = os.path.basename(str(getattr(image, "name", "") or "")) or "image"
        return name, bytes(data), _sniff(bytes(data))
    module = _module_of(image)
    if module == "PIL":
        return "image.jpg", _pil_to_jpeg(image), "image/jpeg"
    if module == "numpy":
        try:
            from PIL import Image
        except ImportError as error:  # pragma: no cover - depends on the environment
            raise TypeError(
                "sending a numpy array needs Pillow: pip install 'visor-client[images]'"
            ) from error
        import numpy as np

        array = np.asarray(image)
        if array.dtype != np.uint8:
            array = np.clip(array, 0, 255).astype(np.uint8)
        return "image.jpg", _pil_to_jpeg(Image.fromarray(array)), "image/jpeg"
    raise TypeError(
        f"unsupported image {type(image).__name__}: "
        "give a path, bytes, a binary file, a PIL image or a numpy array"
    )
