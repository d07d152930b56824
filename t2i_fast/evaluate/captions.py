"""Which caption each evaluated image gets, and the pool of mismatched captions."""
from dataclasses import dataclass

import numpy as np
import torch



# --------------------------------------------------------------------------------------------
# Captions
# --------------------------------------------------------------------------------------------

@dataclass
class Captions:
    """N captions: image (N,) index in the split, ids (N, L) word ids, lens (N,), texts (N),
    class_ids (N,)."""
    image: np.ndarray
    ids: torch.Tensor
    lens: torch.Tensor
    texts: list
    class_ids: np.ndarray

    def __len__(self):
        return len(self.texts)


def draw_caption(ds, index):
    """The caption CaptionDataset.item draws for `index` at the dataset's epoch (the same rng
    calls in the same order), without loading the image: (ids (max_words,), length)."""
    rng = ds.item_rng(index)
    caps = ds.captions(index)
    k = int(rng.integers(len(caps)))
    return ds.fit_caption(caps[k], rng)


def _captions(ds, pairs, image, texts=None):
    ids = torch.stack([p[0] for p in pairs])
    lens = torch.tensor([p[1] for p in pairs], dtype=torch.long)
    image = np.asarray(image, dtype=np.int64)
    if texts is None:
        texts = [ds.vocab.decode(i[:n]) for i, n in pairs]
    return Captions(image, ids, lens, texts,
                    np.array([ds.class_id(int(i)) for i in image], dtype=np.int64))


def select_captions(ds, num_images):
    """The N = num_images evaluated captions (module docstring); texts are what the generator
    reads (long captions cut to max_words ids). Leaves the dataset at epoch 0."""
    pairs, image = [], []
    for i in range(num_images):
        index, epoch = i % len(ds), i // len(ds)
        if epoch != ds.epoch:
            ds.set_epoch(epoch)
        pairs.append(draw_caption(ds, index))
        image.append(index)
    ds.set_epoch(0)
    return _captions(ds, pairs, image)


def caption_pool(ds):
    """Every caption of every image of `ds`, image-major: (Captions, offsets (T + 1,)) with
    image j's captions at rows offsets[j]:offsets[j + 1]. ids keep the first max_words ids of
    long captions (for the run's encoders); texts are whole (for CLIP)."""
    pairs, image, texts, offsets = [], [], [], [0]
    for j in range(len(ds)):
        caps = ds.captions(j)
        pairs += [ds.fit_caption(c) for c in caps]
        texts += [ds.vocab.decode(c) for c in caps]
        image += [j] * len(caps)
        offsets.append(offsets[-1] + len(caps))
    return _captions(ds, pairs, image, texts), np.array(offsets, dtype=np.int64)
