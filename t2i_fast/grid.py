"""Image grids with each image's caption written beneath it (PNG sample sheets), and sheets of
per-word attention overlays.

    caption_grid(images, captions, columns=4).save("grid.png")
    attention_sheet([("stage 2", image, maps, ["a", "red", "bird"])]).save("attention.png")
"""
import textwrap

import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont

from t2i_fast.data.base import tensor_to_image


def _font(size):
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):      # Pillow built without FreeType
        return ImageFont.load_default()


def caption_grid(images, captions, columns=4, cell=128, lines=3, font_size=11):
    """images (N, 3, H, W) in [-1, 1] and N captions -> a PIL image.

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
    return sheet


# AttnGAN's build_super_images pastes each map over the image through a mask of 210 / 255.
ATTENTION_ALPHA = 210 / 255


def attention_sheet(rows, cell=None, font_size=11):
    """AttnGAN-style per-word attention overlays: one row per refinement block, the block's
    image first, then for each word slot the image blended with the slot's map (upsampled
    bilinearly to the image and scaled by the row's min and max, as build_super_images),
    each tile labelled 'j:word' above.

    rows: [(name, image (3, S, S) in [-1, 1], maps (T, H, W), labels)], labels naming the
    first n <= T slots (only those are drawn); cell: tile side (default the largest image,
    at least 128). Returns a PIL image."""
    if not rows:
        raise ValueError("attention_sheet: no rows")
    cell = cell or max(128, max(image.shape[-1] for _, image, _, _ in rows))
    font = _font(font_size)
    label_h, pad = font_size + 5, 2
    width = max(len(labels) for *_, labels in rows) + 1
    sheet = Image.new("RGB", (width * (cell + pad), len(rows) * (cell + label_h)), "white")
    draw = ImageDraw.Draw(sheet)
    for r, (row_name, image, maps, labels) in enumerate(rows):
        if maps.shape[0] < len(labels):
            raise ValueError(f"attention_sheet: row {r} has {maps.shape[0]} maps for "
                             f"{len(labels)} labels")
        img = F.interpolate(image[None].float(), size=(cell, cell), mode="bilinear",
                            align_corners=True)[0].add(1).mul(127.5).clamp(0, 255)
        up = F.interpolate(maps[None, :len(labels)].float(), size=(cell, cell),
                           mode="bilinear", align_corners=False)[0]
        up = (up - up.min()) / (up.max() - up.min()).clamp(min=1e-12) * 255
        y = r * (cell + label_h)
        tiles = [img] + [img * (1 - ATTENTION_ALPHA) + m * ATTENTION_ALPHA for m in up]
        names = [row_name] + [f"{j}:{w[:8]}" for j, w in enumerate(labels)]
        for t, (tile, name) in enumerate(zip(tiles, names)):
            x = t * (cell + pad)
            pixels = tile.round().byte().permute(1, 2, 0).numpy()
            sheet.paste(Image.fromarray(pixels), (x, y + label_h))
            draw.text((x + 2, y + 2), name, fill="black", font=font)
    return sheet
