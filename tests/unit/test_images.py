"""The checks every image passes before a model sees it, and the references the HTTP shapes
carry images as."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from reranker.backend.images import ImageError, ImageLimits, decode, open_checked
from reranker.service.errors import InvalidArgument
from reranker.service.images import CallImage, check_image, image_reference

LIMITS = ImageLimits(max_bytes=50_000, max_pixels=250_000)


def encoded(image: Image.Image, fmt: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(height: int, width: int) -> Image.Image:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_served_formats_open(fmt: str) -> None:
    image = open_checked(encoded(noise(40, 60), fmt), LIMITS)
    assert image.size == (60, 40)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "is empty (0 bytes)"),
        (encoded(noise(200, 200)), "bytes; the limit is 50000"),
        # 600 x 500 single-colour pixels: a few hundred bytes, over the pixel limit.
        (encoded(Image.new("L", (600, 500))), "600x500 = 300000 pixels; the limit is 250000"),
        (encoded(noise(20, 20), "GIF"), "is not a PNG, JPEG or WebP image"),
        (encoded(noise(20, 20), "BMP"), "is not a PNG, JPEG or WebP image"),
        (b"\x89PNG\r\n\x1a\n" + bytes(64), "is not a PNG, JPEG or WebP image"),
        (encoded(noise(50, 50))[:2000], "is corrupt or truncated"),
        (encoded(noise(50, 50), "JPEG")[:700], "is corrupt or truncated"),
        (encoded(noise(1, 300)), "is 300x1: sides more than 200 times apart"),
    ],
)
def test_bad_images_are_refused_saying_why(data: bytes, message: str) -> None:
    with pytest.raises(ImageError) as error:
        open_checked(data, LIMITS)
    assert message in str(error.value)


def test_a_corrupt_body_behind_a_good_header_is_refused() -> None:
    png = encoded(noise(50, 50))
    start = png.index(b"IDAT") + 8  # the compressed pixels, past the chunk's type
    corrupt = png[:start] + bytes(200) + png[start + 200 :]
    with pytest.raises(ImageError, match="corrupt or truncated"):
        open_checked(corrupt, LIMITS)


def test_decode_applies_the_exif_orientation_and_converts_to_rgb() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise
    data = encoded(noise(30, 80).convert("L"), "JPEG", exif=exif)
    image = decode(data)
    assert (image.mode, image.size) == ("RGB", (30, 80))


def test_declared_media_type_must_be_served_and_match() -> None:
    png = encoded(noise(10, 10))
    check_image(CallImage(png, "image/png"), "documents[0] image", LIMITS)
    check_image(CallImage(encoded(noise(10, 10), "JPEG"), "image/jpg"), "x", LIMITS)
    with pytest.raises(InvalidArgument, match=r"documents\[0\] image: the image is image/png"):
        check_image(CallImage(png, "image/jpeg"), "documents[0] image", LIMITS)
    with pytest.raises(InvalidArgument, match="media type 'image/gif' is not served"):
        check_image(CallImage(png, "image/gif"), "x", LIMITS)


def test_image_references_are_base64_or_data_urls_and_never_fetched() -> None:
    png = encoded(noise(10, 10))
    text = base64.b64encode(png).decode()
    assert image_reference(text, "d") == CallImage(png, "")
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert image_reference(wrapped, "d") == CallImage(png, "")
    assert image_reference("data:image/png;base64," + text, "d") == CallImage(png, "image/png")
    for url in ("http://127.0.0.1/a.png", "https://example.invalid/a.png"):
        with pytest.raises(InvalidArgument, match=r"documents\[2\]: image URLs are not fetched"):
            image_reference(url, "documents[2]")
    with pytest.raises(InvalidArgument, match="not valid base64"):
        image_reference("not base64!", "d")
    with pytest.raises(InvalidArgument, match="must be base64"):
        image_reference("data:image/png," + text, "d")


def test_a_multi_picture_jpeg_is_a_jpeg() -> None:
    frames = [noise(20, 30), noise(20, 30).rotate(90)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="MPO", save_all=True, append_images=frames[1:])
    check_image(CallImage(buffer.getvalue(), "image/jpeg"), "d", LIMITS)


def test_rows_with_images_travel_by_image_size_within_the_byte_budget() -> None:
    from reranker.service.engine import image_requests
    from reranker.service.scoring import RowImages

    sizes = [5, 0, 40_000_000, 0, 7, 30_000_000, 6]
    images = RowImages(b"q", [bytes(size) for size in sizes])
    requests = image_requests(images, max_rows=3)
    assert sorted(row for request in requests for row in request) == list(range(len(sizes)))
    # Text rows first, then by size, three at most; 30 MB and 40 MB never share 64 MB.
    assert requests == [[1, 3, 0], [6, 4, 5], [2]]
