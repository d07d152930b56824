"""Datasets on disk: the AttnGAN layout (CUB, COCO; reference §2.4) and a plain folder.

    ds = AttnGANDataset("data/birds", split="train")             # kind 'cub' is detected
    ds = AttnGANDataset("data/coco", split="test", image_size=256)
    ds = FolderDataset("my_pictures")                              # a.jpg + a.txt, ...
    item = ds[0]        # the dict of base.py: image (3, S, S) in [-1, 1], caption, cap_len, ...

Images (reference §1.10): CUB images are first cropped to the square of half-side
r = 0.75·max(w, h) around the bounding box's centre, clipped to the image. Training images
(split 'train' with train_augment) are resized to shorter side int(S·76/64), randomly cropped
to S×S and flipped with probability 1/2, all drawn from the item generator so that an item
depends only on (seed, epoch, index). Other images (the test split; train_augment=False)
are resized to shorter side S and centre-cropped to S×S: deterministic, so evaluation sees
the same pixels every epoch (upstream augments the test split too).
"""
import os
import warnings

from PIL import Image

from t2i_fast.errors import DataError, DataNotFound

from . import pickles
from .base import CaptionDataset, image_to_tensor
from .vocab import Vocabulary, tokenize

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
KINDS = {  # kind -> (image folder under root, captions per image, bounding boxes)
    "cub": ("CUB_200_2011/images", 10, True),
    "coco": ("images", 5, False),
}


def bbox_crop(img, bbox):
    """AttnGAN's CUB crop: the square of half-side 0.75·max(w, h) around the centre of
    bbox = (x, y, w, h), clipped to the image (so not square near the borders)."""
    x, y, w, h = bbox
    width, height = img.size
    r = int(max(w, h) * 0.75)
    cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
    box = (max(0, cx - r), max(0, cy - r), min(width, cx + r), min(height, cy + r))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise DataError(f"bounding box {tuple(bbox)} leaves nothing of the {width}x{height} "
                         f"image")
    return img.crop(box)


def square_image(img, size, rng=None, augment=False):
    """PIL image -> (3, size, size) in [-1, 1]. augment: resize the shorter side to
    int(size·76/64), random crop, random flip (rng draws); else resize to size, centre crop."""
    short = int(size * 76 / 64) if augment else size
    w, h = img.size
    scale = short / min(w, h)
    img = img.resize((max(short, int(w * scale)), max(short, int(h * scale))), Image.BILINEAR)
    w, h = img.size
    if augment:
        top, left = int(rng.integers(h - size + 1)), int(rng.integers(w - size + 1))
    else:
        top, left = (h - size) // 2, (w - size) // 2
    img = img.crop((left, top, left + size, top + size))
    if augment and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return image_to_tensor(img)


def open_image(path):
    """The RGB image at `path`; clear errors for missing or unreadable files."""
    if not os.path.isfile(path):
        raise DataNotFound(f"image {path} not found")
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as e:
        raise DataError(f"image {path} cannot be read: {e}") from e


def read_caption_lines(path):
    """(line, tokens) of each non-blank line of a caption file; tokens is [] for a line
    without words. Undecodable bytes become U+FFFD; AttnGAN's '\\ufffd\\ufffd' -> ' ' is kept."""
    if not os.path.isfile(path):
        raise DataNotFound(f"caption file {path} not found")
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.read().split("\n")
    return [(line, tokenize(line.replace("\ufffd\ufffd", " "))) for line in lines
            if line.strip()]


def _need(path, what):
    if not os.path.exists(path):
        raise DataNotFound(f"{what} {path} not found")
    return path


class _SquareImages(CaptionDataset):
    """Shared image loading: subclasses set self.paths (and optionally self.bboxes)."""

    bboxes = None

    def __init__(self, image_size, max_words, seed, augment):
        super().__init__(max_words=max_words, seed=seed)
        if int(image_size) < 1:
            raise ValueError(f"image_size must be >= 1, got {image_size}")
        self.image_size, self.augment = int(image_size), bool(augment)

    def __len__(self):
        return len(self.paths)

    def captions(self, index):
        return self.caps[index]

    def load_image(self, index, rng):
        path = self.paths[index]
        img = open_image(path)
        if self.bboxes is not None:
            try:
                img = bbox_crop(img, self.bboxes[index])
            except DataError as e:
                raise DataError(f"image {path}: {e}") from e
        return square_image(img, self.image_size, rng, self.augment)


class AttnGANDataset(_SquareImages):
    """One split of an AttnGAN data folder (data/birds or data/coco, reference §2.4).

    root: the folder holding train/, test/, captions.pickle (built from text/ when absent)
    split: 'train' | 'test' (reads <root>/<split>/filenames.pickle)
    kind: 'cub' | 'coco'; None picks 'cub' when <root>/CUB_200_2011 exists, else 'coco'
    captions_per_image: K (default 10 for CUB, 5 for COCO); bbox: crop around the CUB
    bounding box (default: True for CUB; COCO has none)
    train_augment: random resize-crop and flip on the train split (see the module doc)
    write_captions: write captions.pickle when it was built from text/ (False: build it in
    memory only, e.g. to show a run's config without writing anything)

    Class ids come from <split>/class_info.pickle when present, else the index (COCO).
    """

    def __init__(self, root, split="train", kind=None, image_size=256, max_words=18,
                 captions_per_image=None, bbox=None, seed=0, train_augment=True,
                 write_captions=True):
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise DataNotFound(f"AttnGAN data folder {root} not found")
        if kind is None:
            kind = "cub" if os.path.isdir(os.path.join(root, "CUB_200_2011")) else "coco"
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {sorted(KINDS)} or None, got {kind!r}")
        image_dir, default_k, default_bbox = KINDS[kind]
        super().__init__(image_size, max_words, seed, augment=train_augment and split == "train")
        self.root, self.split, self.kind = root, split, kind
        self.write_captions = write_captions
        self.captions_per_image = k = int(captions_per_image or default_k)
        if k < 1:
            raise ValueError(f"captions_per_image must be >= 1, got {captions_per_image}")
        self.keys = pickles.load_filenames(_need(self._file(split, "filenames.pickle"),
                                                 "filenames file"))
        self.paths = [os.path.join(root, image_dir, key + ".jpg") for key in self.keys]
        flat, self.vocab = self._load_captions()
        if len(flat) != len(self.keys) * k:
            raise DataError(
                f"{self._file('captions.pickle')}: {len(flat)} {split} captions but "
                f"{self._file(split, 'filenames.pickle')} lists {len(self.keys)} images "
                f"× {k} captions per image = {len(self.keys) * k}")
        self.caps = [flat[i * k:(i + 1) * k] for i in range(len(self.keys))]
        self._check_captions()
        class_file = self._file(split, "class_info.pickle")
        self.class_ids = (pickles.load_class_info(class_file, len(self.keys))
                          if os.path.isfile(class_file) else None)
        use_bbox = default_bbox if bbox is None else bool(bbox)
        self.bboxes = self._load_bboxes() if use_bbox else None

    def _file(self, *parts):
        return os.path.join(self.root, *parts)

    def class_id(self, index):
        return int(index) if self.class_ids is None else self.class_ids[index]

    def _load_captions(self):
        """(this split's flat token-id lists, Vocabulary) from captions.pickle, which is
        built from text/ first when absent."""
        path = self._file("captions.pickle")
        if os.path.isfile(path):
            train, test, ixtoword, _ = pickles.load_captions(path)
            try:
                vocab = Vocabulary(ixtoword)
            except ValueError as e:
                raise DataError(f"{path}: {e}") from e
        else:
            train, test, vocab = self._build_captions(path)
        return (train if self.split == "train" else test), vocab

    def _build_captions(self, path):
        """AttnGAN's load_text_data: the first K captions with words of text/<key>.txt
        for every key of both splits and a vocabulary of every word (train first, in order
        of first appearance), written to `path` and returned as (train, test, vocab).
        Lines without words are skipped as upstream; a file left with fewer than K captions
        is an error here (upstream prints and goes on, which shifts every later image onto
        the wrong captions). A read-only folder only warns: the result is used in memory."""
        tokens = {}
        for split in ("train", "test"):
            keys = pickles.load_filenames(_need(self._file(split, "filenames.pickle"),
                                                "filenames file"))
            tokens[split] = []
            for key in keys:
                text = self._file("text", key + ".txt")
                caps = [c for _, c in read_caption_lines(text) if c][:self.captions_per_image]
                if len(caps) < self.captions_per_image:
                    raise DataError(f"caption file {text} has {len(caps)} captions with "
                                     f"words, expected at least {self.captions_per_image}")
                tokens[split].extend(caps)
        vocab = Vocabulary.build(tokens["train"] + tokens["test"])
        train, test = ([[vocab.wordtoix[w] for w in c] for c in tokens[s]]
                       for s in ("train", "test"))
        if not self.write_captions:
            return train, test, vocab
        try:
            pickles.write_captions(path, train, test, vocab.ixtoword, vocab.wordtoix)
        except OSError as e:
            warnings.warn(f"could not write {path} ({e}); captions built from text/ are used "
                          f"in memory and will be rebuilt next time")
        return train, test, vocab

    def _check_captions(self):
        n = len(self.vocab)
        for key, caps in zip(self.keys, self.caps):
            for c in caps:
                if not c or min(c) < 0 or max(c) >= n:
                    raise DataError(f"{self._file('captions.pickle')}: a caption of {key!r} "
                                     f"is empty or has ids outside 0..{n - 1}")

    def _load_bboxes(self):
        """Bounding boxes (x, y, w, h) of self.keys from images.txt + bounding_boxes.txt,
        aligned by row and cast to int as upstream."""
        names = _need(self._file("CUB_200_2011", "images.txt"), "CUB image list")
        boxes = _need(self._file("CUB_200_2011", "bounding_boxes.txt"), "CUB bounding boxes")
        with open(names) as f:
            rows = [line.split(maxsplit=1) for line in f if line.strip()]
        with open(boxes) as f:
            box_rows = [line.split() for line in f if line.strip()]
        if len(rows) != len(box_rows):
            raise DataError(f"{names} has {len(rows)} rows but {boxes} has {len(box_rows)}")
        table = {}
        for line, (row, box) in enumerate(zip(rows, box_rows), start=1):
            if len(row) != 2 or len(box) != 5 or row[0] != box[0]:
                raise DataError(f"row {line} of {names} / {boxes}: expected 'id path' and "
                                 f"'id x y w h' with the same id, got {row} and {box}")
            try:
                table[os.path.splitext(row[1].strip())[0]] = [int(float(v)) for v in box[1:]]
            except ValueError as e:
                raise DataError(f"row {line} of {boxes}: {e}") from e
        missing = [k for k in self.keys if k not in table]
        if missing:
            raise DataError(f"{boxes}: no bounding box for {len(missing)} keys of "
                             f"{self._file(self.split, 'filenames.pickle')}, e.g. {missing[0]!r}")
        return [table[k] for k in self.keys]


class FolderDataset(_SquareImages):
    """Images next to their captions: <name>.jpg|.jpeg|.png with <name>.txt, one caption a
    line (blank lines ignored; a line without words is an error).

    root: the folder. When it has a train/ or test/ subfolder, split picks <root>/<split>
        (None means 'train'); otherwise the images directly in root are the one split, read
        for split None or 'train'. Only files directly in the split folder count, sorted by
        name; .txt files without an image are ignored.
    vocab: a Vocabulary (e.g. a trained model's; unknown words are an error). By default one
        is built from the captions of every split (train first), so train and test share ids.
    train_augment: random resize-crop and flip on the train split (see the module doc).
    Class ids are the indices.
    """

    def __init__(self, root, split=None, image_size=256, max_words=18, seed=0, vocab=None,
                 train_augment=True):
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise DataNotFound(f"image folder {root} not found")
        if split not in (None, "train", "test"):
            raise ValueError(f"split must be None, 'train' or 'test', got {split!r}")
        splits = [s for s in ("train", "test") if os.path.isdir(os.path.join(root, s))]
        split = split or "train"
        if splits and split not in splits:
            raise DataNotFound(f"split {split!r}: folder {os.path.join(root, split)} "
                                    f"not found")
        if not splits and split != "train":
            raise DataNotFound(f"split {split!r} needs a subfolder "
                                    f"{os.path.join(root, split)}; {root} has no train/ or "
                                    f"test/ subfolder, so all its images form the train split")
        super().__init__(image_size, max_words, seed, augment=train_augment and split == "train")
        self.root, self.split = root, split
        folders = {s: os.path.join(root, s) for s in splits} or {"train": root}
        tokens = {s: self._scan(folder) for s, folder in folders.items()}
        self.paths = [p for p, _ in tokens[split]]
        if vocab is None:
            vocab = Vocabulary.build(c for s in folders for _, caps in tokens[s] for c in caps)
        self.vocab = vocab
        self.caps = [self._encode(path, caps) for path, caps in tokens[split]]

    @staticmethod
    def _scan(folder):
        """[(image path, token lists)] of the images directly in `folder`, sorted by name."""
        images = {}
        for name in sorted(os.listdir(folder)):
            stem, ext = os.path.splitext(name)
            path = os.path.join(folder, name)
            if ext.lower() not in IMAGE_EXTENSIONS or not os.path.isfile(path):
                continue
            if stem in images:
                raise DataError(f"two images named {stem!r} in {folder}: "
                                 f"{images[stem]} and {path}")
            images[stem] = path
        if not images:
            raise DataNotFound(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
        out = []
        for stem, path in images.items():
            text = os.path.join(folder, stem + ".txt")
            if not os.path.isfile(text):
                raise DataNotFound(f"image {path} has no caption file {text}")
            lines = read_caption_lines(text)
            if not lines:
                raise DataError(f"caption file {text} is empty")
            for line, caption in lines:
                if not caption:
                    raise DataError(f"caption file {text}: the line {line!r} has no words")
            out.append((path, [caption for _, caption in lines]))
        return out

    def _encode(self, path, captions):
        unknown = sorted({w for c in captions for w in c if w not in self.vocab})
        if unknown:
            raise KeyError(f"captions of {path}: words not in the vocabulary: {unknown}")
        return [[self.vocab.wordtoix[w] for w in c] for c in captions]
