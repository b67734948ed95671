"""Encoded image bytes <-> PIL images, with one encoding (JPEG, as Pick-a-Pic) on both sides of a pair."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from styleprefs.errors import StyleprefsError

JPEG_QUALITY = 95


def decode(data: bytes) -> Image.Image:
    """Fully decode to RGB; raises ValueError with the reason for bytes that are not a readable image."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise ValueError("not a recognised image format") from None  # PIL's message holds an address
    except Exception as exc:  # PIL raises several types for corrupt or truncated data
        raise ValueError(f"{type(exc).__name__}: {exc}") from None


def read_image(path: Path) -> tuple[Image.Image, bytes]:
    """An image file decoded to RGB, and its bytes; a one-line StyleprefsError naming the file if it is empty,
    unreadable or not an image."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise StyleprefsError(f"image {path} cannot be read: {exc.strerror or exc}") from None
    if not data:
        raise StyleprefsError(f"image {path} is empty (0 bytes); delete or replace it")
    try:
        return decode(data), data
    except ValueError as exc:
        raise StyleprefsError(f"image {path} cannot be decoded: {exc}; delete or replace it") from None


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def as_jpeg(data: bytes, decoded: Image.Image) -> bytes:
    """The original bytes when already JPEG, else ``decoded`` re-encoded as JPEG."""
    return data if data[:3] == b"\xff\xd8\xff" else encode_jpeg(decoded)
