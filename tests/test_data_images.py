"""Image loading: transparency onto white, cover-then-center-crop, flip, value range."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from tests.data_helpers import write_image
from train.data import ImageRecord, Subset, load_image_tensor
from train.data.images import fit_to_bucket, list_images


def _record(path, bucket, resized_size=None) -> ImageRecord:
    with Image.open(path) as image:
        size = image.size
    return ImageRecord(path, "caption", Subset(image_dir=path.parent), 0, size, bucket, resized_size)


def test_rgba_transparency_goes_onto_white(tmp_path):
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)  # fully transparent black...
    pixels[:, 4:] = (255, 0, 0, 255)  # ...except an opaque red right half
    path = tmp_path / "alpha.png"
    Image.fromarray(pixels).save(path)
    tensor = load_image_tensor(_record(path, (8, 8)))
    assert torch.equal(tensor[:, :, :4], torch.ones(3, 8, 4))
    assert torch.equal(tensor[:, 0, 7], torch.tensor([1.0, -1.0, -1.0]))


def test_half_transparent_pixel_blends_with_white(tmp_path):
    path = tmp_path / "half.png"
    Image.new("RGBA", (4, 4), (0, 0, 0, 128)).save(path)
    tensor = load_image_tensor(_record(path, (4, 4)))
    assert torch.allclose(tensor, torch.full((3, 4, 4), 127 / 127.5 - 1.0), atol=1 / 127.5)


def test_palette_and_grey_alpha_transparency_go_onto_white(tmp_path):
    palette_image = Image.new("P", (4, 4), 0)
    palette_image.putpalette([0, 0, 0] * 256)
    palette_image.info["transparency"] = 0
    palette_image.save(tmp_path / "palette.png", transparency=0)
    write_image(tmp_path / "grey.png", (4, 4), (0, 0), mode="LA")
    for name in ("palette.png", "grey.png"):
        tensor = load_image_tensor(_record(tmp_path / name, (4, 4)))
        assert torch.equal(tensor, torch.ones(3, 4, 4)), name


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 128 * 257, dtype=np.uint16)).save(path)  # mid grey in 16 bits
    tensor = load_image_tensor(_record(path, (4, 4)))
    assert torch.allclose(tensor, torch.full((3, 4, 4), 128 / 127.5 - 1.0), atol=1e-6)


def test_tensor_shape_range_and_determinism(tmp_path):
    path = tmp_path / "noise.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 70, 3), dtype=np.uint8)).save(path)
    record = _record(path, (64, 48))
    tensor = load_image_tensor(record)
    assert tensor.shape == (3, 48, 64) and tensor.dtype == torch.float32
    assert tensor.min() >= -1.0 and tensor.max() <= 1.0
    assert torch.equal(tensor, load_image_tensor(record))


def test_wide_image_is_resized_to_cover_then_center_cropped(tmp_path):
    pixels = np.zeros((64, 128, 3), dtype=np.uint8)
    pixels[:, :32] = (255, 0, 0)  # red left quarter
    pixels[:, 32:96] = (0, 255, 0)  # green middle half
    pixels[:, 96:] = (0, 0, 255)  # blue right quarter
    path = tmp_path / "wide.png"
    Image.fromarray(pixels).save(path)
    tensor = load_image_tensor(_record(path, (32, 32)))  # 128x64 -> 64x32 -> crop the middle 32
    assert tensor.shape == (3, 32, 32)
    green = torch.tensor([-1.0, 1.0, -1.0]).view(3, 1, 1)
    assert torch.allclose(tensor[:, :, 4:28], green.expand(3, 32, 24), atol=0.02)


def test_no_upscale_crops_without_resizing(tmp_path):
    image = Image.new("RGB", (100, 70))
    image.putpixel((18, 3), (255, 255, 255))  # lands at (0, 0) after a centered 64x64 crop
    cropped = fit_to_bucket(image, (64, 64), resized_size=(100, 70))
    assert cropped.size == (64, 64) and cropped.getpixel((0, 0)) == (255, 255, 255)


def test_flip_mirrors_left_and_right(tmp_path):
    pixels = np.zeros((16, 16, 3), dtype=np.uint8)
    pixels[:, :5] = 255
    path = tmp_path / "edge.png"
    Image.fromarray(pixels).save(path)
    record = _record(path, (16, 16))
    plain, flipped = load_image_tensor(record), load_image_tensor(record, flip=True)
    assert torch.equal(flipped, plain.flip(-1))
    assert flipped[0, 0, -1] == 1.0 and flipped[0, 0, 0] == -1.0


def test_list_images_matches_extensions_case_insensitively(tmp_path):
    for name in ("a.PNG", "b.jpg", "c.JPEG", "d.webp", "e.bmp"):
        write_image(tmp_path / name, (8, 8))
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.png").write_bytes(b"macOS resource fork")
    assert [p.name for p in list_images(tmp_path)] == ["a.PNG", "b.jpg", "c.JPEG", "d.webp", "e.bmp"]
