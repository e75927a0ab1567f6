"""A labelled image grid (prompts down the side, seeds across the top) and its atomic save.

Cells are sized to the largest image, so renders of different sizes still line
up; a row grows taller only when its wrapped label needs more room than a cell.
"""

from __future__ import annotations

import os
from pathlib import Path

import PIL.Image
from PIL import ImageDraw, ImageFont

from train.atomic import atomic_path

BACKGROUND = (255, 255, 255)
TEXT = (0, 0, 0)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1, scalable when FreeType is present
    except TypeError:
        return ImageFont.load_default()


def _wrap(text: str, font, width: int) -> list[str]:
    """Greedy word wrap to ``width`` pixels; explicit newlines kept, overlong words split."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split():
            candidate = f"{line} {word}".strip()
            if font.getlength(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            line = word
            while font.getlength(line) > width and len(line) > 1:
                cut = len(line) - 1
                while cut > 1 and font.getlength(line[:cut]) > width:
                    cut -= 1
                lines.append(line[:cut])
                line = line[cut:]
        lines.append(line)
    return lines


def _draw_lines(draw: ImageDraw.ImageDraw, lines: list[str], font, x: int, y: int, width: int, line_h: int) -> None:
    """Draw lines centred horizontally in [x, x + width) from top ``y``."""
    for i, line in enumerate(lines):
        offset = max(0, (width - int(font.getlength(line))) // 2)
        draw.text((x + offset, y + i * line_h), line, fill=TEXT, font=font)


def make_grid(
    rows: list[list[PIL.Image.Image]], row_labels: list[str], col_labels: list[str], title: str | None = None
) -> PIL.Image.Image:
    """Images in cells under a header of column labels, beside a column of wrapped row labels."""
    if len(rows) != len(row_labels):
        raise ValueError(f"make_grid: {len(rows)} rows but {len(row_labels)} row labels")
    images = [image for row in rows for image in row]
    if not images:
        raise ValueError("make_grid: no images")
    n_cols = max(len(col_labels), *(len(row) for row in rows))
    cell_w = max(image.width for image in images)
    cell_h = max(image.height for image in images)

    font_size = max(12, min(32, cell_h // 12))
    font = _font(font_size)
    pad = font_size // 2
    top, bottom = font.getbbox("Hgy")[1::2]
    line_h = bottom - min(0, top) + font_size // 4
    label_w = max(cell_w, 10 * font_size)
    width = label_w + n_cols * cell_w

    title_lines = _wrap(title, font, width - 2 * pad) if title else []
    title_h = len(title_lines) * line_h + 2 * pad if title_lines else 0
    col_lines = [_wrap(label, font, cell_w - 2 * pad) for label in col_labels]
    header_h = max((len(lines) for lines in col_lines), default=0) * line_h + 2 * pad
    row_lines = [_wrap(label, font, label_w - 2 * pad) for label in row_labels]
    row_heights = [max(cell_h, len(lines) * line_h + 2 * pad) for lines in row_lines]

    grid = PIL.Image.new("RGB", (width, title_h + header_h + sum(row_heights)), BACKGROUND)
    draw = ImageDraw.Draw(grid)
    _draw_lines(draw, title_lines, font, pad, pad, width - 2 * pad, line_h)
    for col, lines in enumerate(col_lines):
        _draw_lines(draw, lines, font, label_w + col * cell_w + pad, title_h + pad, cell_w - 2 * pad, line_h)
    y = title_h + header_h
    for row, lines, row_h in zip(rows, row_lines, row_heights, strict=True):
        label_top = y + max(pad, (row_h - len(lines) * line_h) // 2)
        _draw_lines(draw, lines, font, pad, label_top, label_w - 2 * pad, line_h)
        for col, image in enumerate(row):
            x = label_w + col * cell_w + (cell_w - image.width) // 2
            grid.paste(image.convert("RGB"), (x, y + (row_h - image.height) // 2))
        y += row_h
    return grid


def save_png_atomic(image: PIL.Image.Image, path: str | os.PathLike) -> Path:
    """Write ``image`` as a PNG at ``path`` via a temporary file, so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")
    return Path(path)
