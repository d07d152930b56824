"""The built-in dataset: procedurally rendered shapes with captions. No download.

Each image is one shape on a soft grey gradient. Its attributes (colour, shape, size, position)
are drawn from a generator seeded by (seed, split, index), so image i of a split is the same on
every machine; the five captions describe the same attributes in different phrasings.

    ds = ShapesDataset("train", image_size=64)
    item = ds[0]          # image, caption, cap_len, class_id, index, attributes
    ds.describe(0)        # the five captions as text

`attributes` holds the indices into COLOURS, SHAPES, SIZES and POSITIONS; class_id is the index
of the attribute combination, so images with the same attributes are never used as negatives by
the matching losses.
"""
import numpy as np
from PIL import Image, ImageDraw

from t2i_fast.data.base import CaptionDataset, image_to_tensor
from t2i_fast.data.vocab import Vocabulary, tokenize

COLOURS = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230),
           "yellow": (240, 220, 40), "purple": (150, 50, 200), "white": (250, 250, 250)}
SHAPES = ("circle", "square", "triangle")
SIZES = ("small", "large")
POSITIONS = ("left", "right", "top", "bottom", "centre")
ATTRIBUTES = {"colour": tuple(COLOURS), "shape": SHAPES, "size": SIZES, "position": POSITIONS}

_SIZE_WORDS = {"small": ("small", "little", "tiny"), "large": ("large", "big", "huge")}
_PLACE = {"left": ("on the left", "at the left side"), "right": ("on the right",
          "at the right side"), "top": ("at the top", "near the top"),
          "bottom": ("at the bottom", "near the bottom"), "centre": ("in the centre",
          "in the middle")}
_TEMPLATES = (
    "a {size} {colour} {shape} {place}",
    "there is a {colour} {shape} {place}",
    "{place} there is a {size} {colour} {shape}",
    "a picture of a {size} {shape} coloured {colour}",
    "the {shape} is {colour} and {size} and sits {place}",
)
_CENTRES = {"left": (0.28, 0.5), "right": (0.72, 0.5), "top": (0.5, 0.28),
            "bottom": (0.5, 0.72), "centre": (0.5, 0.5)}
_RADIUS = {"small": 0.12, "large": 0.22}    # fraction of the image side
_SPLITS = {"train": (10_000, 0), "test": (1_000, 1)}
_SUPERSAMPLE = 4
_CACHE_PIXELS = 10_000 * 64 * 64    # renders kept per dataset: a whole 64-pixel train split


def vocabulary():
    """The fixed vocabulary of every phrasing (id order is stable across versions)."""
    words = []
    for template in _TEMPLATES:
        words += tokenize(template.format(size="", colour="", shape="", place=""))
    words += list(COLOURS) + list(SHAPES)
    for group in (_SIZE_WORDS, _PLACE):
        for phrases in group.values():
            for phrase in phrases:
                words += tokenize(phrase)
    return Vocabulary.build([" ".join(words)])


def num_classes():
    return int(np.prod([len(v) for v in ATTRIBUTES.values()]))


def class_of(attributes):
    """Index of an attribute combination (colour-major)."""
    index = 0
    for name, values in ATTRIBUTES.items():
        index = index * len(values) + int(attributes[name])
    return index


class ShapesDataset(CaptionDataset):
    """split: 'train' (10,000 images) or 'test' (1,000); size: number of images (default all);
    image_size: side S; max_words: caption slots kept (longest caption has 11 words)."""

    captions_per_image = len(_TEMPLATES)

    def __init__(self, split="train", image_size=64, max_words=18, seed=0, size=None):
        super().__init__(max_words, seed)
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if image_size < 8:
            raise ValueError(f"image_size must be >= 8, got {image_size}")
        full, self.split_id = _SPLITS[split]
        self.split, self.image_size = split, int(image_size)
        self.size = full if size is None else int(size)
        if not 0 < self.size <= full:
            raise ValueError(f"size must be in 1..{full} for split {split!r}, got {size}")
        self.vocab = vocabulary()
        self._attrs = [self._draw(i) for i in range(self.size)]
        self._captions = [[self.vocab.encode(t) for t in self.describe(i)]
                          for i in range(self.size)]
        # Each image is rendered once (about 1.5 ms) and kept, when the split fits.
        self._renders = {} if self.size * self.image_size ** 2 <= _CACHE_PIXELS else None

    def _draw(self, index):
        """Attributes and rendering parameters of image `index` (fixed by seed and split)."""
        rng = np.random.default_rng([self.seed, 7919 + self.split_id, index])
        attrs = {name: int(rng.integers(len(values))) for name, values in ATTRIBUTES.items()}
        attrs["_jitter"] = rng.uniform(-0.04, 0.04, size=3)          # dx, dy, radius scale
        attrs["_background"] = rng.uniform(70, 140, size=2)          # top and bottom grey
        attrs["_phrasing"] = rng.integers(0, 6, size=(len(_TEMPLATES), 2))
        return attrs

    def __len__(self):
        return self.size

    def attributes(self, index):
        return {name: self._attrs[index][name] for name in ATTRIBUTES}

    def class_id(self, index):
        return class_of(self._attrs[index])

    def describe(self, index):
        """The captions of image `index` as text."""
        attrs = self._attrs[index]
        names = {k: v[attrs[k]] for k, v in ATTRIBUTES.items()}
        out = []
        for template, (a, b) in zip(_TEMPLATES, attrs["_phrasing"]):
            sizes, places = _SIZE_WORDS[names["size"]], _PLACE[names["position"]]
            out.append(template.format(size=sizes[a % len(sizes)], colour=names["colour"],
                                       shape=names["shape"], place=places[b % len(places)]))
        return out

    def captions(self, index):
        return self._captions[index]

    def render(self, index):
        """Image `index` as a PIL image (S x S), antialiased by supersampling."""
        attrs = self._attrs[index]
        side = self.image_size * _SUPERSAMPLE
        top, bottom = attrs["_background"]
        ramp = np.linspace(top, bottom, side, dtype=np.float32)[:, None, None]
        canvas = np.broadcast_to(ramp, (side, side, 3)).astype(np.uint8)
        img = Image.fromarray(canvas, "RGB")
        draw = ImageDraw.Draw(img)
        cx, cy = _CENTRES[POSITIONS[attrs["position"]]]
        dx, dy, dr = attrs["_jitter"]
        r = (_RADIUS[SIZES[attrs["size"]]] + dr * 0.5) * side
        x, y = (cx + dx) * side, (cy + dy) * side
        colour = COLOURS[ATTRIBUTES["colour"][attrs["colour"]]]
        shape = SHAPES[attrs["shape"]]
        if shape == "circle":
            draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)
        elif shape == "square":
            s = r * 0.886                       # the circle's area
            draw.rectangle([x - s, y - s, x + s, y + s], fill=colour)
        else:
            s = r * 1.35
            draw.polygon([(x, y - s), (x + s * 0.866, y + s / 2), (x - s * 0.866, y + s / 2)],
                         fill=colour)
        return img.resize((self.image_size, self.image_size), Image.Resampling.LANCZOS)

    def load_image(self, index, rng):
        image = self._renders.get(index) if self._renders is not None else None
        if image is None:
            image = self.render(index)
            if self._renders is not None:
                self._renders[index] = image
        return image_to_tensor(image)

    def item(self, index, caption_index=None):
        out = super().item(index, caption_index)
        out["attributes"] = self.attributes(index)
        return out


def dominant_colour(images, background_tolerance=40.0):
    """Index into COLOURS of the dominant shape colour of each image (B, 3, H, W) in [-1, 1].

    Pixels within `background_tolerance` (0-255 units) of grey (equal channels below 150) are
    background; the rest vote for their nearest palette colour. Returns (B,) int64 (-1: no
    foreground pixel)."""
    import torch
    rgb = (images.detach().float().clamp(-1, 1) + 1) * 127.5                # (B, 3, H, W)
    palette = torch.tensor(list(COLOURS.values()), dtype=rgb.dtype)       # (K, 3)
    pixels = rgb.permute(0, 2, 3, 1).reshape(rgb.shape[0], -1, 3)         # (B, P, 3)
    spread = pixels.max(dim=2).values - pixels.min(dim=2).values
    grey = (spread < background_tolerance) & (pixels.max(dim=2).values < 150)
    nearest = torch.cdist(pixels, palette[None].expand(rgb.shape[0], -1, -1)).argmin(dim=2)
    votes = torch.zeros(rgb.shape[0], len(COLOURS), dtype=torch.long)
    votes.scatter_add_(1, nearest, (~grey).long())
    out = votes.argmax(dim=1)
    out[votes.sum(dim=1) == 0] = -1
    return out


def caption_attributes(text):
    """{attribute: index or None} named by a caption of this dataset (None: not mentioned;
    several phrasings name size and position with synonyms)."""
    words = set(tokenize(text))
    found = {"colour": [i for i, c in enumerate(COLOURS) if c in words],
             "shape": [i for i, s in enumerate(SHAPES) if s in words],
             "size": [i for i, s in enumerate(SIZES) if words & set(_SIZE_WORDS[s])],
             "position": [i for i, p in enumerate(POSITIONS)
                          if any(set(tokenize(ph)) - {"on", "the", "at", "near", "in", "side"}
                                 <= words for ph in _PLACE[p])]}
    return {k: (v[0] if len(v) == 1 else None) for k, v in found.items()}
