"""Images as callers send them: the checks every image passes before a model sees it, and
the decoding a vision-language processor is given.

The rank service runs :func:`open_checked` on every image of a call, so a bad one is refused
by name before any Triton model reads it; the tokenizer model decodes the same bytes with
:func:`decode`, as transformers' ``load_image`` does for a path or a data URL (the EXIF
orientation applied, then RGB), so a served score matches ``CrossEncoder.predict`` given the
image either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

from PIL import Image, ImageOps, UnidentifiedImageError

# The formats served, by Pillow's name, with their media type.
_FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}
# What Pillow may name what it opened: a JPEG with more than one picture opens as MPO (a JPEG
# file, whose first picture is read).
MEDIA_TYPES = {**_FORMATS, "MPO": "image/jpeg"}
# Longest side over shortest: vision-language processors refuse flatter images (Qwen-VL's
# resize, 200).
MAX_ASPECT_RATIO = 200


class ImageError(ValueError):
    """An image that cannot be served; the message completes "the image ..."."""


@dataclass(frozen=True)
class ImageLimits:
    # Encoded size, in bytes.
    max_bytes: int
    # Width x height, read from the header before anything is decoded (decompression bombs).
    max_pixels: int


def open_checked(data: bytes, limits: ImageLimits) -> Image.Image:
    """The image ``data`` encodes, fully decoded, or :class:`ImageError` saying why not."""
    if not data:
        raise ImageError("is empty (0 bytes)")
    if len(data) > limits.max_bytes:
        raise ImageError(f"is {len(data)} bytes; the limit is {limits.max_bytes}")
    try:
        image = Image.open(BytesIO(data), formats=tuple(_FORMATS))
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError):
        raise ImageError("is not a PNG, JPEG or WebP image (or its header is corrupt)") from None
    width, height = image.size
    if width * height > limits.max_pixels:
        raise ImageError(
            f"is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
        )
    if max(width, height) > MAX_ASPECT_RATIO * max(1, min(width, height)):
        raise ImageError(
            f"is {width}x{height}: sides more than {MAX_ASPECT_RATIO} times apart cannot be "
            "resized to the model's patches"
        )
    try:
        image.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"is corrupt or truncated ({error})") from None
    return image


def media_type(image: Image.Image) -> str:
    return MEDIA_TYPES[str(image.format)]


def decode(data: bytes) -> Image.Image:
    """An image the service checked, as the processor is given it: upright and RGB."""
    image = Image.open(BytesIO(data), formats=tuple(_FORMATS))
    return ImageOps.exif_transpose(image).convert("RGB")
