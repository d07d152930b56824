"""Drop-in replacements for the upstream AttnGAN / DM-GAN attention pieces.

Same constructor and forward signatures and the same state-dict key names as upstream
(`Memory` from DM-GAN code/model.py, `GlobalAttentionGeneral` and `func_attention` from AttnGAN
code/GlobalAttention.py, `words_loss` / `sent_loss` from code/miscc/losses.py), computed by the
fused ops. Two deliberate differences: the padding mask is applied per sample (pass
`mask_compat=True` to reproduce the upstream tiling, AttnGAN issue #93, for published
checkpoints), and a pixel whose every slot is masked reads 0 instead of NaN.
"""
import torch
from torch import nn

from t2i_fast.ops.damsm import damsm_sentence_loss, damsm_word_loss
from t2i_fast.ops.dynamic_memory import memory_read
from t2i_fast.ops.word_region import word_region_attention


def _as_bool_mask(mask):
    if mask is not None and mask.dtype == torch.uint8:  # upstream builds ByteTensor masks
        return mask.bool()
    return mask


class Memory(nn.Module):
    """DM-GAN key addressing and value reading (no parameters).

    forward(input (B,C,H,W), context_key (B,C,T), content_value (B,Cv,T))
    -> (weighted context (B,Cv,H,W), attention (B,T,H,W)). Set the mask with applyMask(mask).
    """

    def __init__(self, mask_compat=False, impl=None):
        super().__init__()
        self.mask = None
        self.mask_compat = mask_compat
        self.impl = impl

    def applyMask(self, mask):  # noqa: N802 (upstream name)
        self.mask = _as_bool_mask(mask)

    def forward(self, input, context_key, content_value):  # noqa: A002 (upstream name)
        return memory_read(input, context_key, content_value, self.mask,
                           mask_compat=self.mask_compat, return_attn=True, impl=self.impl)


class GlobalAttentionGeneral(nn.Module):
    """AttnGAN word attention: words projected to idf channels serve as keys and values.

    idf: image feature channels; cdf: word embedding width.
    forward(input (B,idf,H,W), context (B,cdf,T)) -> (context (B,idf,H,W), attn (B,T,H,W)).
    """

    def __init__(self, idf, cdf, mask_compat=False, impl=None):
        super().__init__()
        self.conv_context = nn.Conv2d(cdf, idf, kernel_size=1, stride=1, padding=0, bias=False)
        self.mask = None
        self.mask_compat = mask_compat
        self.impl = impl

    def applyMask(self, mask):  # noqa: N802 (upstream name)
        self.mask = _as_bool_mask(mask)

    def forward(self, input, context):  # noqa: A002 (upstream name)
        words = self.conv_context(context.unsqueeze(3)).squeeze(3)
        return memory_read(input, words, words, self.mask, mask_compat=self.mask_compat,
                           return_attn=True, impl=self.impl)


def func_attention(query, context, gamma1, impl=None):
    """query: words (B,D,T); context: regions (B,D,H,W) -> (context (B,D,T), attn (B,T,H,W))."""
    return word_region_attention(query, context, gamma1, impl=impl)


def words_loss(img_features, words_emb, labels, cap_lens, class_ids, batch_size, *, gamma1=4.0,
               gamma2=5.0, gamma3=10.0, impl=None):
    """Upstream words_loss: returns (loss0, loss1, att_maps).

    att_maps[i] (1, len_i, H, W) is caption i's word attention on its own image.
    """
    if words_emb.shape[0] != batch_size:
        raise ValueError(f"words_loss: words_emb holds {words_emb.shape[0]} captions, "
                         f"batch_size is {batch_size}")
    lens = torch.as_tensor(cap_lens, device=words_emb.device).long()
    loss0, loss1 = damsm_word_loss(img_features, words_emb, lens, class_ids, gamma1=gamma1,
                                   gamma2=gamma2, gamma3=gamma3, labels=labels, impl=impl)
    pad = torch.arange(words_emb.shape[2], device=lens.device)[None, :] >= lens[:, None]
    _, attn = word_region_attention(words_emb, img_features, gamma1, pad, impl=impl)
    att_maps = [attn[i:i + 1, :int(n)] for i, n in enumerate(lens.tolist())]
    return loss0, loss1, att_maps


def sent_loss(cnn_code, rnn_code, labels, class_ids, batch_size, eps=1e-8, *, gamma3=10.0):
    """Upstream sent_loss: returns (loss0, loss1)."""
    if cnn_code.shape[0] != batch_size:
        raise ValueError(f"sent_loss: cnn_code holds {cnn_code.shape[0]} rows, "
                         f"batch_size is {batch_size}")
    return damsm_sentence_loss(cnn_code, rnn_code, class_ids, gamma3=gamma3, eps=eps,
                               labels=labels)
