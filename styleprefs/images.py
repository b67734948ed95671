"""Encoded image bytes <-> PIL images, with one encoding (JPEG, as Pick-a-Pic) on both sides of a pair."""

from __future__ import annotations

import io

from PIL import Image, UnidentifiedImageError

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


def encode_jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.convert("RGB").save(buf, format="JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def as_jpeg(data: bytes, decoded: Image.Image) -> bytes:
    """The original bytes when already JPEG, else ``decoded`` re-encoded as JPEG."""
    return data if data[:3] == b"\xff\xd8\xff" else encode_jpeg(decoded)
