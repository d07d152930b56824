"""Refinement blocks: DM-GAN's dynamic-memory stage and AttnGAN's attention stage.

Both read the image features h (B, ngf, H, W) and text slots (B, nef, T) with a padding mask
(B, T) (True = padded), and return features (B, ngf, 2H, 2W) (or (B, ngf, H, W) when the block
does not upsample) plus, on request, the attention maps (B, T, H, W). The attention and memory
math is `t2i_fast.ops` only, so the blocks run on every backend (`impl`, `use_backend`).

State-dict keys are the upstream ones (reference §1.9): A, B, M_r.0, M_w.0, key.0, value.0,
response_gate.0, residual.{i}.block.{0,1,3,4}, upsample.{1,2} for DM-GAN; att.conv_context for
AttnGAN. A block that does not upsample ends in `project.{0,1}` (conv3x3 + BN + GLU) instead.

The residual blocks and the up/project block after the attention form one chain that runs
under the block's memory policy (`t2i_fast.models.memory`): 'eager' is the upstream code;
'lean' keeps the chain input and the convolution outputs; 'max' keeps the chain input only.
Under 'lean' and 'max' DM-GAN's [r'; r'] is never built: the first convolution runs on r with
its two weight halves summed.
"""
import torch
from torch import nn

from t2i_fast import ops
from t2i_fast.models.layers import ResBlock, expect, glu_step, same_block, up_block
from t2i_fast.models.memory import check_options, run_block


class _Refinement(nn.Module):
    """Residual blocks on 2*ngf channels, then up_block (or same_block) to ngf channels."""

    def __init__(self, ngf, nef, r_num, upsample, mask_compat, impl, memory):
        super().__init__()
        check_options(memory)
        self.gf_dim, self.ef_dim, self.upsamples = ngf, nef, upsample
        self.mask_compat, self.impl, self.memory = mask_compat, impl, memory
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

    def eager_chain(self, x):
        """The chain's upstream code path from its input (r for DM-GAN, [h; c] for AttnGAN)."""
        if self.fold_input:
            x = torch.cat([x, x], dim=1)
        for block in self.residual:
            x = block(x)
        return self.out_block(x)

    def chain_units(self):
        """The residual blocks and the up/project block as memory units (with fold_input the
        chain input r stands for [r; r])."""
        fold = self.fold_input
        units = [block.unit(fold=fold and i == 0) for i, block in enumerate(self.residual)]
        return units + [glu_step(self.out_block, fold=fold and not units)]

    def chain_input_shape(self, batch, size):
        """Shape of the chain input for an h_code of size x size pixels."""
        return (batch, (1 if self.fold_input else 2) * self.gf_dim, size, size)

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
    memory: 'eager' | 'lean' | 'max', what the chain after the attention keeps for backward
    (same outputs and gradients).
    """
    fold_input = True       # the chain starts from r, standing for [r; r]

    def __init__(self, ngf, nef, r_num=2, upsample=True, mask_compat=False, impl=None,
                 memory="eager"):
        super().__init__(ngf, nef, r_num, upsample, mask_compat, impl, memory)
        self.A = nn.Linear(nef, 1, bias=False)          # word part of the writing gate
        self.B = nn.Linear(ngf, 1, bias=False)          # image part of the writing gate
        self.M_r = nn.Sequential(nn.Conv1d(ngf, 2 * ngf, 1), nn.ReLU())
        self.M_w = nn.Sequential(nn.Conv1d(nef, 2 * ngf, 1), nn.ReLU())
        self.key = nn.Sequential(nn.Conv1d(2 * ngf, ngf, 1), nn.ReLU())
        self.value = nn.Sequential(nn.Conv1d(2 * ngf, ngf, 1), nn.ReLU())
        self.response_gate = nn.Sequential(nn.Conv2d(2 * ngf, 1, 1), nn.Sigmoid())

    def memory_slots(self, h_code, word_embs):
        """Keys and values (B, C, T) written from the slots and the image mean."""
        # Upstream detaches the spatial mean: no gradient reaches h through the writing path.
        r_mean = h_code.mean(dim=(2, 3)).detach()                               # (B, C)
        gate = torch.sigmoid(self.A(word_embs.transpose(1, 2))
                             + self.B(r_mean)[:, None, :]).transpose(1, 2)      # (B, 1, T)
        memory = (self.M_w(word_embs) * gate
                  + self.M_r(r_mean[:, :, None]) * (1 - gate))                  # (B, 2C, T)
        return self.key(memory), self.value(memory)

    def forward(self, h_code, c_code, word_embs, mask=None, cap_lens=None, *,
                return_attn=False, memory=None):
        """Upstream signature; c_code and cap_lens are unused (as upstream).

        h_code (B, C, H, W), word_embs (B, D, T), mask (B, T) -> (out, attn or None); memory
        overrides the block's policy for this call.
        """
        mask = self._check(h_code, word_embs, mask)
        key, value = self.memory_slots(h_code, word_embs)
        gate = self.response_gate[0]
        res = ops.dynamic_memory(h_code, key, value, mask, gate.weight, gate.bias,
                                 mask_compat=self.mask_compat, return_attn=return_attn,
                                 impl=self.impl)
        r, attn = res if return_attn else (res, None)                          # (B, C, H, W)
        out = run_block(memory or self.memory, self.chain_units, r, self.eager_chain)
        return self._check_out(out, h_code), attn


class ATT_STAGE_G(_Refinement):  # noqa: N801 (AttnGAN's NEXT_STAGE_G)
    """AttnGAN word-attention refinement (reference §2.1): [h; c] with c the attended words.

    ngf: image channels C of h; nef: text width D; r_num, upsample, mask_compat, impl, memory:
    as NEXT_STAGE_G.
    """
    fold_input = False      # the chain starts from [h; c]

    def __init__(self, ngf, nef, r_num=2, upsample=True, mask_compat=False, impl=None,
                 memory="eager"):
        super().__init__(ngf, nef, r_num, upsample, mask_compat, impl, memory)
        self.att = ops.GlobalAttentionGeneral(ngf, nef)   # holds att.conv_context (C, D, 1, 1)

    def forward(self, h_code, c_code, word_embs, mask=None, cap_lens=None, *,
                return_attn=False, memory=None):
        mask = self._check(h_code, word_embs, mask)
        words = self.att.conv_context(word_embs.unsqueeze(3)).squeeze(3)        # (B, C, T)
        res = ops.memory_read(h_code, words, words, mask, mask_compat=self.mask_compat,
                              return_attn=return_attn, impl=self.impl)
        context, attn = res if return_attn else (res, None)                    # (B, C, H, W)
        out = run_block(memory or self.memory, self.chain_units,
                        torch.cat([h_code, context], dim=1), self.eager_chain)
        return self._check_out(out, h_code), attn
