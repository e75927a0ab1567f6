"""The labelled evaluation grid and its atomic PNG save."""

from __future__ import annotations

import numpy as np
import PIL.Image
import pytest

from evaluate.grid import BACKGROUND, make_grid, save_png_atomic

CELL = 64


def solid(color, size=(CELL, CELL)) -> PIL.Image.Image:
    return PIL.Image.new("RGB", size, color)


def image_grid(n_rows: int, n_cols: int) -> list[list[PIL.Image.Image]]:
    return [[solid((40 * r + 10, 30 * c + 5, 200)) for c in range(n_cols)] for r in range(n_rows)]


def has_ink(region: PIL.Image.Image) -> bool:
    return bool((np.asarray(region) != np.array(BACKGROUND, dtype=np.uint8)).any())


def test_size_is_header_plus_rows_by_cols_and_cells_hold_the_images():
    rows = image_grid(2, 3)
    grid = make_grid(rows, ["red\n[LoRA off]", "blue\n[LoRA x1]"], ["seed 0", "seed 1", "seed 2"])
    label_w, header_h = grid.width - 3 * CELL, grid.height - 2 * CELL
    assert label_w > 0 and header_h > 0
    for r, row in enumerate(rows):
        for c, image in enumerate(row):
            x, y = label_w + c * CELL, header_h + r * CELL
            assert np.array_equal(np.asarray(grid.crop((x, y, x + CELL, y + CELL))), np.asarray(image))
    assert has_ink(grid.crop((label_w, 0, grid.width, header_h)))  # column labels
    for r in range(2):
        assert has_ink(grid.crop((0, header_h + r * CELL, label_w, header_h + (r + 1) * CELL)))  # row labels


def test_title_adds_a_band_on_top_with_text():
    rows, labels, cols = image_grid(1, 2), ["a"], ["s0", "s1"]
    plain = make_grid(rows, labels, cols)
    titled = make_grid(rows, labels, cols, title="step 100")
    band = titled.height - plain.height
    assert titled.width == plain.width and band > 0
    assert has_ink(titled.crop((0, 0, titled.width, band)))


def test_cells_fit_the_largest_image():
    rows = [[solid((255, 0, 0), (64, 64)), solid((0, 255, 0), (48, 96))]]
    grid = make_grid(rows, ["mixed sizes"], ["a", "b"])
    label_w = grid.width - 2 * 64
    header_h = grid.height - 96
    small = grid.crop((label_w, header_h + 16, label_w + 64, header_h + 80))  # 64x64, centred in a 64x96 cell
    assert np.array_equal(np.asarray(small), np.asarray(rows[0][0]))


def test_long_labels_wrap_and_grow_their_row():
    long_label = "a very long prompt " * 12 + "\n[LoRA x0.5]"
    short = make_grid(image_grid(1, 1), ["short"], ["seed 0"])
    wrapped = make_grid(image_grid(1, 1), [long_label], ["seed 0"])
    assert wrapped.width == short.width and wrapped.height > short.height


def test_mismatched_labels_are_rejected():
    with pytest.raises(ValueError, match="row labels"):
        make_grid(image_grid(2, 1), ["only one"], ["seed 0"])


def test_save_png_atomic_writes_a_png_and_no_temporaries(tmp_path):
    grid = make_grid(image_grid(1, 2), ["a"], ["s0", "s1"])
    path = save_png_atomic(grid, tmp_path / "eval" / "grid-step000010.png")
    assert path == tmp_path / "eval" / "grid-step000010.png"
    with PIL.Image.open(path) as saved:
        assert saved.format == "PNG" and np.array_equal(np.asarray(saved.convert("RGB")), np.asarray(grid))
    assert [p.name for p in path.parent.iterdir()] == [path.name]
