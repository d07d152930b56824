"""Image grids with each image's caption written beneath it (PNG sample sheets).

    caption_grid(images, captions, "samples/step_0000200.png", columns=4)
"""
import textwrap

from PIL import Image, ImageDraw, ImageFont

from t2i_fast.data.base import tensor_to_image


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):      # Pillow built without FreeType
        return ImageFont.load_default()


def caption_grid(images, captions, path=None, columns=4, cell=128, lines=3, font_size=11):
    """images (N, 3, H, W) in [-1, 1] and N captions -> a PIL image (saved to `path` if given).

    Each image is scaled to `cell` pixels (nearest neighbour, so pixels stay visible) with up
    to `lines` wrapped lines of its caption beneath."""
    if len(images) != len(captions):
        raise ValueError(f"caption_grid: {len(images)} images but {len(captions)} captions")
    if len(images) == 0:
        raise ValueError("caption_grid: no images")
    font = _font(font_size)
    line_h = font_size + 3
    chars = max(8, int(cell / (font_size * 0.55)))
    rows = -(-len(images) // columns)
    height = cell + lines * line_h + 6
    sheet = Image.new("RGB", (columns * cell, rows * height), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, text) in enumerate(zip(images, captions)):
        x, y = (i % columns) * cell, (i // columns) * height
        sheet.paste(tensor_to_image(img).resize((cell, cell), Image.Resampling.NEAREST), (x, y))
        wrapped = textwrap.wrap(text, chars)[:lines]
        for k, line in enumerate(wrapped):
            draw.text((x + 3, y + cell + 3 + k * line_h), line, fill="black", font=font)
    if path is not None:
        sheet.save(path)
    return sheet
