"""GR-GAN's Cross-Modal Distance (CMD) as its eval/CMD/CMD_score.py computes it (reference §3.6).

    real = image_stats(clip_image_embs_of_real_test_images)    # cache with save_stats
    sent = sentence_stats(clip_text_embs_of_test_captions)
    out = cmd_score(real, clip_image_embs_of_fakes, sent)      # dict, see cmd_score

Embeddings (CLIP ViT-B/32 in GR-GAN; any encoder here) are L2-normalised per row, then images
are scaled by 10 and sentences by 1, and each set is summarised by a Gaussian (mean, np.cov).
With FD the Fréchet distance:
    FD1 = FD(real images, real sentences)
    FD2 = FD(fake images, real sentences)     printed as "fake image and real sent"; most
                                              plausibly the paper's "ITDis" (not checked)
    FD3 = FD(real images, fake images)
    CMD = FD3 + FD2 - FD1                     lower is better
The 10x / 1x asymmetry is GR-GAN's: FD1 and FD2 are dominated by the norm gap (FD1 = 91.76
on its shipped COCO stats, 1.08 if the images were kept at unit norm). GR-GAN's loaders use
batches of 64 and drop the last partial one; pass batch_size=64 to the stats helpers to drop
the same rows. The embeddings are the caller's: GR-GAN feeds CLIP ViT-B/32 images resized to
224x224 in [0, 1] without CLIP's mean/std normalisation, and the test-split captions' tokens.
"""
import os

import numpy as np

from t2i_fast.metrics.frechet import (check_stats, frechet_distance, gaussian_stats, load_stats,
                                       to_float64)

IMAGE_SCALE = 10.0
SENTENCE_SCALE = 1.0


def normalized(embs, scale, what="embeddings", batch_size=None):
    """embs (N, D) -> float64 (N', D): each row scaled to norm `scale`. With batch_size, only
    the first N' = N - N % batch_size rows are kept (GR-GAN's drop_last)."""
    x = to_float64(embs, what, ndim=2)
    if batch_size is not None:
        x = x[:x.shape[0] - x.shape[0] % batch_size]
    if x.shape[0] == 0:
        raise ValueError(f"{what}: no rows left (shape {x.shape}, batch_size {batch_size})")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what}: row {int(np.flatnonzero(norms[:, 0] == 0)[0])} has norm 0 "
                         f"and cannot be normalised")
    return x / norms * scale


def embed_stats(embs, scale, what="embeddings", batch_size=None):
    """embs (N, D) -> (mu (D,), sigma (D, D)) of the rows normalised to norm `scale`."""
    return gaussian_stats(normalized(embs, scale, what, batch_size))


def image_stats(embs, batch_size=None):
    """Image embeddings (N, D) -> Gaussian stats of the rows at norm 10 (GR-GAN's images)."""
    return embed_stats(embs, IMAGE_SCALE, "image embeddings", batch_size)


def sentence_stats(embs, batch_size=None):
    """Sentence embeddings (N, D) -> Gaussian stats of the rows at norm 1."""
    return embed_stats(embs, SENTENCE_SCALE, "sentence embeddings", batch_size)


def _resolve(side, scale, what):
    """(mu, sigma) from a stats pair, an .npz path or raw embeddings (N, D)."""
    if isinstance(side, (str, os.PathLike)):
        return load_stats(side)
    if isinstance(side, (tuple, list)):
        if len(side) != 2:
            raise ValueError(f"{what}: a tuple must be (mu, sigma), got {len(side)} items")
        return check_stats(side[0], side[1], what)
    return embed_stats(side, scale, what)


def cmd_score(real_img_stats, fake_img_feats, sent_stats):
    """GR-GAN's CMD. Each argument is a (mu, sigma) pair, the path of an .npz of them (GR-GAN's
    image_feature.npz / sent_feature.npz, or save_stats output), or raw embeddings (N, D), which
    are normalised and scaled here (images x10, sentences x1).

    Returns dict(cmd=FD3 + FD2 - FD1, fd_real_fake=FD3, itdis=FD2, fd_real_sent=FD1).
    """
    real = _resolve(real_img_stats, IMAGE_SCALE, "cmd_score real_img_stats")
    fake = _resolve(fake_img_feats, IMAGE_SCALE, "cmd_score fake_img_feats")
    sent = _resolve(sent_stats, SENTENCE_SCALE, "cmd_score sent_stats")
    fd1 = frechet_distance(*real, *sent)
    fd2 = frechet_distance(*fake, *sent)
    fd3 = frechet_distance(*real, *fake)
    return dict(cmd=fd3 + fd2 - fd1, fd_real_fake=fd3, itdis=fd2, fd_real_sent=fd1)
