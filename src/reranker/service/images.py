"""Images in rank calls: what a caller sent, the checks each passes before any model sees
it (size, format, pixel count read from the header, a full decode), and the references the
HTTP shapes carry them as (base64 or a ``data:`` URL; the server fetches no URLs)."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import dataclass

from reranker.backend.images import MEDIA_TYPES, ImageError, ImageLimits, media_type, open_checked
from reranker.service.errors import InvalidArgument

# What a declared media type may also be written as.
_ALIASES = {"image/jpg": "image/jpeg"}


@dataclass(frozen=True)
class CallImage:
    """An image as a caller sent it: the encoded file, and the media type it declared
    ("": none declared)."""

    data: bytes
    media_type: str = ""


def check_image(image: CallImage, where: str, limits: ImageLimits) -> None:
    """Raises :class:`InvalidArgument` naming ``where`` if the image cannot be served."""
    declared = _ALIASES.get(image.media_type.lower(), image.media_type.lower())
    if declared and declared not in MEDIA_TYPES.values():
        raise InvalidArgument(
            f"{where}: media type {image.media_type!r} is not served; send one of "
            f"{', '.join(sorted(MEDIA_TYPES.values()))}"
        )
    try:
        opened = open_checked(image.data, limits)
    except ImageError as error:
        raise InvalidArgument(f"{where}: the image {error}") from None
    if declared and media_type(opened) != declared:
        raise InvalidArgument(
            f"{where}: the image is {media_type(opened)}, not the declared {image.media_type}"
        )


def check_images(
    query_image: CallImage | None,
    document_images: Sequence[CallImage | None],
    limits: ImageLimits,
) -> None:
    if query_image is not None:
        check_image(query_image, "query image", limits)
    for index, image in enumerate(document_images):
        if image is not None:
            check_image(image, f"documents[{index}] image", limits)


def image_reference(reference: str, where: str) -> CallImage:
    """The image an HTTP shape's string refers to: base64, or a ``data:image/...;base64,``
    URL. ``http(s)://`` URLs are refused: the server makes no outbound requests."""
    declared = ""
    payload = reference.strip()
    if payload.startswith(("http://", "https://")):
        raise InvalidArgument(
            f"{where}: image URLs are not fetched (this server makes no outbound requests); "
            "send the image itself, base64 or as a data: URL"
        )
    if payload.startswith("data:"):
        header, _, payload = payload.partition(",")
        if not header.endswith(";base64"):
            raise InvalidArgument(
                f"{where}: a data: URL must be base64 (data:image/png;base64,...)"
            )
        declared = header[len("data:") : -len(";base64")]
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument(f"{where}: the image is not valid base64") from None
    return CallImage(data, declared)
