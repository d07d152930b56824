"""Data for training: datasets by name, a resumable distributed batch order, caption tokens
for the text encoders, and the multi-resolution real images.

    batches = EpochBatches(len(ds), batch_size=16, seed=0, epoch=3, start=10)   # rank 0 of 1
    tokens = CaptionCodec(model_cfg, ds.vocab).encode(batch["caption"], batch["cap_len"])
"""
import torch
import torch.nn.functional as F
from torch.utils.data import Sampler


def make_codec(train_cfg, model_cfg, vocab):
    """The CaptionCodec of a run (CLIP BPE tokens when the run uses published CLIP weights)."""
    bpe = None
    if train_cfg.clip_bpe:
        from t2i_fast.metrics.clip_tokenizer import ClipTokenizer
        bpe = ClipTokenizer(train_cfg.clip_bpe)
    return CaptionCodec(model_cfg, vocab, bpe)


def max_words(model_cfg):
    """Word ids a dataset keeps per caption: the RNN reads words_num (upstream WORDS_NUM);
    the CLIP text encoder reads its context less the start and end tokens."""
    if model_cfg.text_encoder == "clip":
        return model_cfg.clip_context - 2
    return model_cfg.words_num


def build_dataset(train_cfg, model_cfg, split, write_caches=True):
    """The dataset of `train_cfg` for split 'train' or 'test' at the model's image size;
    write_caches: whether the AttnGAN layout may write captions.pickle it built from text/."""
    size, words = model_cfg.image_size, max_words(model_cfg)
    if train_cfg.dataset == "shapes":
        from t2i_fast.data.shapes import ShapesDataset
        n = train_cfg.dataset_size if split == "train" else None
        return ShapesDataset(split, image_size=size, max_words=words, seed=train_cfg.seed,
                             size=n)
    if train_cfg.dataset in ("cub", "coco"):
        from t2i_fast.data.attngan import AttnGANDataset
        kwargs = {}
        if train_cfg.captions_per_image is not None:
            kwargs["captions_per_image"] = train_cfg.captions_per_image
        return AttnGANDataset(train_cfg.data_dir, kind=train_cfg.dataset, split=split,
                              image_size=size, max_words=words, seed=train_cfg.seed,
                              write_captions=write_caches, **kwargs)
    from t2i_fast.data.attngan import FolderDataset
    return FolderDataset(train_cfg.data_dir, split=split, image_size=size, max_words=words,
                         seed=train_cfg.seed)


class EpochBatches(Sampler):
    """Index batches of one epoch: a permutation seeded by (seed, epoch), cut to a multiple of
    world * batch_size (drop_last), rank r taking every world-th index; `start` skips the
    first batches (resuming mid-epoch)."""

    def __init__(self, n, batch_size, seed, epoch, rank=0, world=1, start=0):
        self.batch_size, self.rank, self.world, self.start = batch_size, rank, world, start
        self.per_rank = n // (batch_size * world)
        if self.per_rank == 0:
            raise ValueError(f"dataset of {n} items is smaller than one batch of "
                             f"{batch_size} x {world} processes")
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        order = torch.randperm(n, generator=g)[:self.per_rank * batch_size * world]
        self.order = order[rank::world].view(self.per_rank, batch_size)

    def __len__(self):
        return self.per_rank - self.start

    def __iter__(self):
        for i in range(self.start, self.per_rank):
            yield self.order[i].tolist()


class CaptionCodec:
    """Word ids from a dataset -> the tokens the model's text encoder reads.

    rnn: the ids themselves (B, words_num), 0 = padding.
    clip: [start, ids..., end, 0...] (B, clip_context) with start = vocab_size - 2 and
    end = vocab_size - 1 (the end token has the largest id, as CLIP's), so the word ids of the
    dataset vocabulary must stay below vocab_size - 2.
    clip with `bpe` (a ClipTokenizer, for published CLIP weights): the caption text re-encoded
    with CLIP's byte-pair tokens, as GR-GAN feeds CLIP.
    """

    def __init__(self, model_cfg, vocab, bpe=None):
        self.cfg, self.vocab, self.bpe = model_cfg, vocab, bpe
        if bpe is not None:
            if model_cfg.text_encoder != "clip" or bpe.vocab_size != model_cfg.vocab_size:
                raise ValueError(f"CLIP BPE tokens ({bpe.vocab_size}) need the clip text "
                                 f"encoder with vocab_size {bpe.vocab_size}, got "
                                 f"{model_cfg.text_encoder!r} with {model_cfg.vocab_size}")
            return
        reserved = 2 if model_cfg.text_encoder == "clip" else 0
        if len(vocab) + reserved > model_cfg.vocab_size:
            raise ValueError(f"the dataset vocabulary has {len(vocab)} words; the model's "
                             f"vocab_size {model_cfg.vocab_size} must be >= "
                             f"{len(vocab) + reserved} (set it with --set vocab_size=...)")

    def encode(self, caption, cap_len):
        """caption (B, L) ids, cap_len (B,) -> tokens (B, context or words_num)."""
        caption = torch.as_tensor(caption)
        if self.cfg.text_encoder != "clip":
            return caption[:, :self.cfg.words_num]
        cap_len = torch.as_tensor(cap_len)
        if self.bpe is not None:
            texts = [self.vocab.decode(c[:n]) for c, n in zip(caption, cap_len.tolist())]
            return self.bpe.tokenize(texts, context_length=self.cfg.clip_context)
        if int(cap_len.max()) > self.cfg.clip_context - 2:
            raise ValueError(f"captions of {int(cap_len.max())} words exceed the CLIP context "
                             f"{self.cfg.clip_context} less start and end tokens")
        batch = caption.shape[0]
        tokens = torch.zeros(batch, self.cfg.clip_context, dtype=torch.long)
        tokens[:, 0] = self.cfg.vocab_size - 2
        width = min(caption.shape[1], self.cfg.clip_context - 2)
        tokens[:, 1:1 + width] = caption[:, :width]
        tokens[torch.arange(batch), cap_len.long() + 1] = self.cfg.vocab_size - 1
        return tokens

    def encode_text(self, texts):
        """Captions as strings -> (tokens, caption ids, lengths); unknown words raise."""
        ids = [self.vocab.encode(t) for t in texts]
        longest = max(len(i) for i in ids)
        width = max(longest, 1)
        caption = torch.zeros(len(ids), width, dtype=torch.long)
        for row, seq in enumerate(ids):
            caption[row, :len(seq)] = torch.tensor(seq)
        lens = torch.tensor([len(i) for i in ids])
        if self.cfg.text_encoder != "clip" and longest > self.cfg.words_num:
            raise ValueError(f"captions longer than words_num={self.cfg.words_num} words: "
                             f"{[t for t, i in zip(texts, ids) if len(i) > self.cfg.words_num]}")
        return self.encode(caption, lens), caption, lens


def multiscale(images, sizes):
    """The real image at each generator resolution (antialiased bilinear downsampling)."""
    out = []
    for size in sizes:
        if images.shape[-1] == size:
            out.append(images)
        else:
            out.append(F.interpolate(images, size=(size, size), mode="bilinear",
                                     align_corners=False, antialias=True))
    return out
