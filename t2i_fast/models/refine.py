"""Refinement blocks: DM-GAN's dynamic-memory stage and AttnGAN's attention stage.

Both read the image features h (B, ngf, H, W) and text slots (B, nef, T) with a padding mask
(B, T) (True = padded), and return features (B, ngf, 2H, 2W) (or (B, ngf, H, W) when the block
does not upsample) plus, on request, the attention maps (B, T, H, W). The attention and memory
math is `t2i_fast.ops` only, so the blocks run on every backend (`impl`, `use_backend`).

State-dict keys are the upstream ones (reference §1.9): A, B, M_r.0, M_w.0, key.0, value.0,
response_gate.0, residual.{i}.block.{0,1,3,4}, upsample.{1,2} for DM-GAN; att.conv_context for
AttnGAN. A block that does not upsample ends in `project.{0,1}` (conv3x3 + BN + GLU) instead.

Lean mode (`lean = True`) computes the same function with less memory kept for backward:
the fused op keeps only h and one statistic per pixel; the residual blocks and the up/project
block are recomputed in backward (only their input stays alive); DM-GAN's [r'; r'] is never
built (`ResBlock.forward_doubled`).
"""
import torch
from torch import nn

from t2i_fast import ops
from t2i_fast.models.layers import (ResBlock, expect, recompute, run_glu_block, same_block,
                                    up_block)


class _Refinement(nn.Module):
    """Residual blocks on 2*ngf channels, then up_block (or same_block) to ngf channels."""

    def __init__(self, ngf, nef, r_num, upsample, mask_compat, impl, lean):
        super().__init__()
        self.gf_dim, self.ef_dim, self.upsamples = ngf, nef, upsample
        self.mask_compat, self.impl, self.lean = mask_compat, impl, lean
        self.residual = nn.Sequential(*[ResBlock(2 * ngf) for _ in range(r_num)])
        if upsample:
            self.upsample = up_block(2 * ngf, ngf)
        else:
            self.project = same_block(2 * ngf, ngf)

    @property
    def out_block(self):
        return self.upsample if self.upsamples else self.project

    def _check(self, h_code, word_embs, mask):
        batch = h_code.shape[0]
        expect(h_code, (batch, self.gf_dim, None, None), f"{type(self).__name__} h_code")
        expect(word_embs, (batch, self.ef_dim, None), f"{type(self).__name__} word_embs")
        if mask is not None:
            if mask.dtype == torch.uint8:   # upstream builds ByteTensor masks
                mask = mask.bool()
            expect(mask, (batch, word_embs.shape[2]), f"{type(self).__name__} mask")
        return mask

    def _tail(self, x, lean):
        for block in self.residual:
            x = block(x, lean=lean)
        return run_glu_block(self.out_block, x, lean)

    def _check_out(self, out, h_code):
        scale = 2 if self.upsamples else 1
        batch, _, height, width = h_code.shape
        return expect(out, (batch, self.gf_dim, scale * height, scale * width),
                      f"{type(self).__name__} output")


class NEXT_STAGE_G(_Refinement):  # noqa: N801 (upstream name)
    """DM-GAN dynamic-memory refinement (reference §1.4).

    ngf: image channels C of h (B, C, H, W); nef: text width D of the slots (B, D, T);
    r_num: residual blocks on 2C channels; upsample: end with up_block (2H x 2W) or same_block;
    mask_compat: reproduce the upstream tiled mask (AttnGAN #93); impl: backend of the ops;
    lean: the memory-lean execution (same outputs and gradients).
    """

    def __init__(self, ngf, nef, r_num=2, upsample=True, mask_compat=False, impl=None,
                 lean=False):
        super().__init__(ngf, nef, r_num, upsample, mask_compat, impl, lean)
        self.A = nn.Linear(nef, 1, bias=False)          # word part of the writing gate
        self.B = nn.Linear(ngf, 1, bias=False)          # image part of the writing gate
        self.M_r = nn.Sequential(nn.Conv1d(ngf, 2 * ngf, 1), nn.ReLU())
        self.M_w = nn.Sequential(nn.Conv1d(nef, 2 * ngf, 1), nn.ReLU())
        self.key = nn.Sequential(nn.Conv1d(2 * ngf, ngf, 1), nn.ReLU())
        self.value = nn.Sequential(nn.Conv1d(2 * ngf, ngf, 1), nn.ReLU())
        self.response_gate = nn.Sequential(nn.Conv2d(2 * ngf, 1, 1), nn.Sigmoid())

    def memory(self, h_code, word_embs):
        """Keys and values (B, C, T) written from the slots and the image mean."""
        # Upstream detaches the spatial mean: no gradient reaches h through the writing path.
        r_mean = h_code.mean(dim=(2, 3)).detach()                               # (B, C)
        gate = torch.sigmoid(self.A(word_embs.transpose(1, 2))
                             + self.B(r_mean)[:, None, :]).transpose(1, 2)      # (B, 1, T)
        memory = (self.M_w(word_embs) * gate
                  + self.M_r(r_mean[:, :, None]) * (1 - gate))                  # (B, 2C, T)
        return self.key(memory), self.value(memory)

    def forward(self, h_code, c_code, word_embs, mask=None, cap_lens=None, *,
                return_attn=False):
        """Upstream signature; c_code and cap_lens are unused (as upstream).

        h_code (B, C, H, W), word_embs (B, D, T), mask (B, T) -> (out, attn or None).
        """
        mask = self._check(h_code, word_embs, mask)
        key, value = self.memory(h_code, word_embs)
        gate = self.response_gate[0]
        res = ops.dynamic_memory(h_code, key, value, mask, gate.weight, gate.bias,
                                 mask_compat=self.mask_compat, return_attn=return_attn,
                                 impl=self.impl)
        r, attn = res if return_attn else (res, None)                          # (B, C, H, W)
        if not self.lean:
            out = self._tail(torch.cat([r, r], dim=1), lean=False)
        else:
            out = recompute(self._lean_tail, r)
        return self._check_out(out, h_code), attn

    def _lean_tail(self, r):
        if len(self.residual) == 0:
            return run_glu_block(self.out_block, torch.cat([r, r], dim=1), lean=True)
        x = self.residual[0].forward_doubled(r, lean=True)
        for block in self.residual[1:]:
            x = block(x, lean=True)
        return run_glu_block(self.out_block, x, lean=True)


class ATT_STAGE_G(_Refinement):  # noqa: N801 (AttnGAN's NEXT_STAGE_G)
    """AttnGAN word-attention refinement (reference §2.1): [h; c] with c the attended words.

    ngf: image channels C of h; nef: text width D; r_num, upsample, mask_compat, impl, lean: as
    NEXT_STAGE_G.
    """

    def __init__(self, ngf, nef, r_num=2, upsample=True, mask_compat=False, impl=None,
                 lean=False):
        super().__init__(ngf, nef, r_num, upsample, mask_compat, impl, lean)
        self.att = ops.GlobalAttentionGeneral(ngf, nef)   # holds att.conv_context (C, D, 1, 1)

    def forward(self, h_code, c_code, word_embs, mask=None, cap_lens=None, *,
                return_attn=False):
        mask = self._check(h_code, word_embs, mask)
        words = self.att.conv_context(word_embs.unsqueeze(3)).squeeze(3)        # (B, C, T)
        res = ops.memory_read(h_code, words, words, mask, mask_compat=self.mask_compat,
                              return_attn=return_attn, impl=self.impl)
        context, attn = res if return_attn else (res, None)                    # (B, C, H, W)

        def tail(h, c):
            return self._tail(torch.cat([h, c], dim=1), lean=self.lean)
        out = recompute(tail, h_code, context) if self.lean else tail(h_code, context)
        return self._check_out(out, h_code), attn
