"""The dataset interface every caption dataset implements, and batching for the models.

An item is a dict:
    image     (3, S, S) float32 in [-1, 1], S = the dataset's image_size
    caption   (max_words,) int64 word ids, 0 = padding (one caption of the image)
    cap_len   int, 1..max_words: the number of non-padding ids
    class_id  int (CUB class, synthetic attribute combination, or the index: COCO)
    index     int, the image's index in the split
Synthetic items also carry `attributes` (a dict of ints, see shapes.py).

Randomness (which caption, crops and flips) comes from a generator seeded by
(seed, epoch, index), so an item depends only on those three numbers: a resumed run or a
different number of workers or processes reads the same data.
"""
import numpy as np
import torch
from torch.utils.data import Dataset


class CaptionDataset(Dataset):
    """Base class: subclasses set self.vocab, self.image_size and implement `__len__`,
    `captions(index)` (list of id lists) and `load_image(index, rng)`.

    max_words: captions longer than this keep a random subset of max_words ids in order
    (AttnGAN's get_caption); shorter ones are padded with 0.
    """

    vocab = None
    image_size = None

    def __init__(self, max_words=18, seed=0):
        if max_words < 1:
            raise ValueError(f"max_words must be >= 1, got {max_words}")
        self.max_words, self.seed, self.epoch = int(max_words), int(seed), 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def item_rng(self, index):
        return np.random.default_rng([self.seed, self.epoch, int(index)])

    def captions(self, index):
        raise NotImplementedError

    def load_image(self, index, rng):
        raise NotImplementedError

    def class_id(self, index):
        return int(index)

    def fit_caption(self, ids, rng=None):
        """(padded ids (max_words,), length): AttnGAN's get_caption."""
        ids = [int(i) for i in ids if int(i) != 0]
        if not ids:
            raise ValueError("empty caption")
        if len(ids) > self.max_words:
            keep = np.arange(len(ids)) if rng is None else rng.permutation(len(ids))
            ids = [ids[i] for i in np.sort(keep[:self.max_words])]
        out = torch.zeros(self.max_words, dtype=torch.long)
        out[:len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out, len(ids)

    def item(self, index, caption_index=None):
        """The item of `index`; caption_index picks a caption (default: a random one)."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} images")
        rng = self.item_rng(index)
        caps = self.captions(index)
        k = int(rng.integers(len(caps))) if caption_index is None else int(caption_index)
        caption, cap_len = self.fit_caption(caps[k], rng)
        return {"image": self.load_image(index, rng), "caption": caption, "cap_len": cap_len,
                "class_id": self.class_id(index), "index": int(index)}

    def __getitem__(self, index):
        return self.item(int(index))


def image_to_tensor(img):
    """PIL RGB image -> (3, H, W) float32 in [-1, 1]."""
    arr = np.asarray(img.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous().div_(127.5).sub_(1.0)


def tensor_to_image(x):
    """(3, H, W) in [-1, 1] -> PIL RGB image."""
    from PIL import Image
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte()
    return Image.fromarray(arr.permute(1, 2, 0).cpu().numpy(), "RGB")
