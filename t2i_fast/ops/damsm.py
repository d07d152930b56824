"""DAMSM matching losses (AttnGAN `words_loss` / `sent_loss`, also GR-GAN's ITM losses).

Both build a similarity matrix with images as rows and captions as columns, scale it by gamma3,
hide off-diagonal pairs of the same class (CUB: several images share a class; such pairs are
not negatives) and average two cross-entropies: image -> caption over the rows and
caption -> image over the columns. The word-level matrix is `word_region_similarity`, computed
for all pairs in one fused call.
"""
import torch
import torch.nn.functional as F

from t2i_fast.ops import _checks
from t2i_fast.ops._math import cosine
from t2i_fast.ops.word_region import word_region_similarity


def same_class_mask(class_ids, batch, device):
    """(B, B) bool, True where i != j share a class id; None when class_ids is None."""
    if class_ids is None:
        return None
    ids = torch.as_tensor(class_ids, device=device).reshape(-1)
    if ids.numel() != batch:
        raise ValueError(f"class_ids must hold one id per sample ({batch}), got {ids.numel()}")
    same = ids[:, None] == ids[None, :]
    return same & ~torch.eye(batch, dtype=torch.bool, device=device)


def matching_losses(sim, class_ids=None, labels=None):
    """(loss_image_to_text, loss_text_to_image) for a (B, B) logit matrix, rows images."""
    batch = sim.shape[0]
    mask = same_class_mask(class_ids, batch, sim.device)
    if mask is not None:
        sim = sim.masked_fill(mask, float("-inf"))
    if labels is None:
        labels = torch.arange(batch, device=sim.device)
    return F.cross_entropy(sim, labels), F.cross_entropy(sim.t(), labels)


def damsm_word_loss(regions, words, cap_lens, class_ids=None, *, gamma1=4.0, gamma2=5.0,
                    gamma3=10.0, labels=None, impl=None):
    """Word-level DAMSM loss. regions (B,D,H,W), words (B,D,T), cap_lens (B,) in 1..T.

    Returns (loss0, loss1): image->caption and caption->image cross-entropy of gamma3 * S.
    """
    sim = word_region_similarity(regions, words, cap_lens, gamma1, gamma2, impl=impl)
    if sim.shape[0] != sim.shape[1]:
        raise ValueError(f"damsm_word_loss: regions and words must hold the same batch (pair i "
                         f"is image i with caption i), got {sim.shape[0]} images and "
                         f"{sim.shape[1]} captions")
    return matching_losses(gamma3 * sim, class_ids, labels)


def damsm_sentence_loss(image_code, sent_code, class_ids=None, *, gamma3=10.0, eps=1e-8,
                        labels=None):
    """Sentence-level DAMSM loss. image_code (B,D), sent_code (B,D) -> (loss0, loss1)."""
    op = "damsm_sentence_loss"
    _checks.tensor(op, "image_code", image_code, 2)
    _checks.tensor(op, "sent_code", sent_code, 2)
    image_code, sent_code = _checks.autocast(image_code.device, image_code, sent_code,
                                             lower=False)
    if sent_code.shape != image_code.shape:
        raise ValueError(f"{op}: sent_code must have the shape of image_code "
                         f"{tuple(image_code.shape)}, got {tuple(sent_code.shape)}")
    _checks.same(op, "image_code", image_code, sent_code=sent_code)
    sim = cosine(image_code[:, None, :], sent_code[None, :, :], dim=2, eps=eps)
    return matching_losses(gamma3 * sim, class_ids, labels)
