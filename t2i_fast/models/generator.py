"""The generator: conditioning augmentation, the image-level stage, and a refinement schedule.

G_NET with the schedule (sentence, word) is GR-GAN's GRG (reference §3.2); with (word, word)
and memory blocks it is DM-GAN's G_NET, with attention blocks AttnGAN's. Keys follow the
upstream G_NET: ca_net, h_net1, img_net1, h_net{s}, img_net{s} for stage s = 2, 3, ...; a
stage with several iterations holds an nn.ModuleList (h_net{s}.{i}.*).
"""
import itertools
import math

import torch
from torch import nn

from t2i_fast.models import memory as mem
from t2i_fast.models.chain import Step
from t2i_fast.models.config import StageSpec
from t2i_fast.models.layers import GLU, conv3x3, expect, glu_step, up_block
from t2i_fast.models.refine import ATT_STAGE_G, NEXT_STAGE_G


class CA_NET(nn.Module):  # noqa: N801 (upstream name)
    """Conditioning augmentation: sentence (B, t_dim) -> c, mu, logvar, each (B, c_dim).

    t_dim: sentence width (nef); c_dim: condition width. A fresh N(0, I) sample on every call
    (also at sampling time, as upstream) unless `noise` (B, c_dim) is given.
    """

    def __init__(self, t_dim, c_dim):
        super().__init__()
        self.t_dim, self.c_dim = t_dim, c_dim
        self.fc = nn.Linear(t_dim, 4 * c_dim)
        self.relu = GLU()

    def forward(self, text_embedding, noise=None):
        expect(text_embedding, (None, self.t_dim), "CA_NET sentence")
        x = self.relu(self.fc(text_embedding))
        mu, logvar = x[:, :self.c_dim], x[:, self.c_dim:]
        if noise is None:
            noise = torch.randn_like(mu)
        return mu + noise * torch.exp(0.5 * logvar), mu, logvar


class INIT_STAGE_G(nn.Module):  # noqa: N801 (upstream name)
    """[c; z] (B, ncf + z_dim) -> features (B, ngf / 2^n_up, 4 * 2^n_up, same).

    ngf: channels at 4x4 (upstream 16 * GF_DIM); ncf: condition width; z_dim: noise width;
    n_up: upBlocks (4 for the 64-pixel stage), each halving channels and doubling the size;
    memory: 'eager' | 'lean' | 'max', what the stage keeps for backward (one chain).
    """

    def __init__(self, ngf, ncf, z_dim=100, n_up=4, memory="eager"):
        super().__init__()
        mem.check_options(memory)
        self.gf_dim, self.in_dim, self.n_up, self.memory = ngf, ncf + z_dim, n_up, memory
        self.fc = nn.Sequential(nn.Linear(self.in_dim, ngf * 4 * 4 * 2, bias=False),
                                nn.BatchNorm1d(ngf * 4 * 4 * 2), GLU())
        for i in range(n_up):
            self.add_module(f"upsample{i + 1}", up_block(ngf >> i, ngf >> (i + 1)))

    def chain_units(self):
        """fc + BN1d + GLU and the upBlocks as one chain of memory units."""
        first = Step(self.fc[0].weight, bn=self.fc[1], act="glu", view=(self.gf_dim, 4, 4))
        return [first] + [glu_step(getattr(self, f"upsample{i + 1}")) for i in range(self.n_up)]

    def eager_chain(self, x):
        """The chain's upstream code path: [c; z] (B, ncf + z_dim) -> features."""
        x = self.fc(x).view(-1, self.gf_dim, 4, 4)
        for i in range(self.n_up):
            x = getattr(self, f"upsample{i + 1}")(x)
        return x

    def forward(self, z_code, c_code, memory=None):
        """memory overrides the stage's policy for this call."""
        x = torch.cat([c_code, z_code], dim=1)                 # c first, as upstream
        expect(x, (None, self.in_dim), "INIT_STAGE_G [c; z]")
        return mem.run_block(memory or self.memory, self.chain_units, x, self.eager_chain)


class GET_IMAGE_G(nn.Module):  # noqa: N801 (upstream name)
    """Features (B, ngf, H, W) -> image (B, 3, H, W) in [-1, 1] (conv3x3, tanh)."""

    def __init__(self, ngf):
        super().__init__()
        self.gf_dim = ngf
        self.img = nn.Sequential(conv3x3(ngf, 3), nn.Tanh())

    def forward(self, h_code):
        expect(h_code, (None, self.gf_dim, None, None), "GET_IMAGE_G input")
        return self.img(h_code)


class G_NET(nn.Module):  # noqa: N801 (upstream name)
    """CA + image-level stage + a schedule of refinement stages, one image per stage.

    ngf: GF_DIM; nef: text width D; ncf: condition width; z_dim: noise width; r_num: ResBlocks
    per refinement block; schedule: StageSpecs (level, upsample, iterations); base_size: the
    image-level resolution; attention: 'memory' (DM-GAN/GR-GAN) or 'attention' (AttnGAN);
    sentence_shortcut: sentence stages read a single memory slot (see `stage_text`);
    mask_compat, impl, memory: passed to the blocks (`configure` changes them later);
    memory_budget: bytes the blocks may keep for backward, or None; when set, each block gets
    the fastest policy that fits (`memory_plan`) in place of its own `memory`.
    """
    return_attn = False     # forward's default (True under t2i_fast.models.upstream conventions)

    def __init__(self, ngf=64, nef=512, ncf=100, z_dim=100, r_num=3,
                 schedule=(StageSpec("sentence"), StageSpec("word")), base_size=64,
                 attention="memory", sentence_shortcut=True, mask_compat=False, impl=None,
                 memory="eager", memory_budget=None):
        super().__init__()
        mem.check_options(memory, memory_budget)
        n_up = int(math.log2(base_size // 4))
        if 4 << n_up != base_size:
            raise ValueError(f"G_NET: base_size must be 4 * 2^k, got {base_size}")
        self.gf_dim, self.ef_dim, self.z_dim = ngf, nef, z_dim
        self.schedule = tuple(StageSpec(*s) for s in schedule)
        self.sentence_shortcut = sentence_shortcut
        self.memory_budget, self._plans = memory_budget, {}
        self.ca_net = CA_NET(nef, ncf)
        self.h_net1 = INIT_STAGE_G(ngf << n_up, ncf, z_dim, n_up, memory=memory)
        self.img_net1 = GET_IMAGE_G(ngf)
        block = {"memory": NEXT_STAGE_G, "attention": ATT_STAGE_G}[attention]
        for s, spec in enumerate(self.schedule, start=2):
            blocks = [block(ngf, nef, r_num, upsample=spec.upsample and i == 0,
                            mask_compat=mask_compat, impl=impl, memory=memory)
                      for i in range(spec.iterations)]
            self.add_module(f"h_net{s}", blocks[0] if len(blocks) == 1 else nn.ModuleList(blocks))
            self.add_module(f"img_net{s}", GET_IMAGE_G(ngf))

    @classmethod
    def from_config(cls, cfg):
        return cls(cfg.gf_dim, cfg.text_dim, cfg.condition_dim, cfg.z_dim, cfg.r_num,
                   cfg.schedule, cfg.base_size, cfg.attention, cfg.sentence_shortcut,
                   cfg.mask_compat, cfg.impl, cfg.memory, cfg.memory_budget)

    def stage_blocks(self, s):
        """The refinement blocks of stage s (2, 3, ...) in order."""
        net = getattr(self, f"h_net{s}")
        return list(net) if isinstance(net, nn.ModuleList) else [net]

    def memory_blocks(self):
        """[(block, chain input shape for batch 1)]: the image-level stage, then every
        refinement block in order; each runs under its own memory policy."""
        out = [(self.h_net1, (1, self.h_net1.in_dim))]
        size = 4 << self.h_net1.n_up
        for s in range(2, len(self.schedule) + 2):
            for block in self.stage_blocks(s):
                out.append((block, block.chain_input_shape(1, size)))
                size *= 2 if block.upsamples else 1
        return out

    def memory_plan(self, batch, element_size):
        """The policy of every block (order of memory_blocks) under memory_budget: the fastest
        assignment whose estimated bytes fit it (memory.plan), planned once per batch size."""
        key = (batch, element_size, self.memory_budget)
        if key not in self._plans:
            blocks = self.memory_blocks()
            estimates = [mem.estimate(block.chain_units(), (batch, *shape[1:]), element_size)
                         for block, shape in blocks]
            try:
                self._plans[key] = mem.plan(estimates, self.memory_budget)
            except mem.MemoryBudgetError as err:
                raise mem.MemoryBudgetError(f"{err} at batch {batch}") from None
        return self._plans[key]

    def stage_text(self, level, sent_emb, word_embs, mask):
        """The memory slots (B, D, T') and mask a stage of `level` reads.

        A sentence stage's memory is the sentence vector repeated over the T word slots with the
        word mask (GR-GAN). Every slot then holds the same key and value, so the addressing
        softmax is uniform over the valid slots and each pixel reads exactly the value vector
        (reference §3.2). The shortcut passes one slot and no mask instead: the fused op then
        skips the T-slot attention and only gates h with that value, with the same result (the
        masks leave every caption at least one valid slot, so the general path never reads 0).
        """
        if level == "word":
            return word_embs, mask
        if self.sentence_shortcut:
            return sent_emb[:, :, None], None
        return sent_emb[:, :, None].expand(-1, -1, word_embs.shape[2]), mask

    def forward(self, z_code, sent_emb, word_embs, mask=None, cap_lens=None, *,
                return_attn=None, ca_noise=None):
        """z_code (B, z_dim), sent_emb (B, D), word_embs (B, D, T), mask (B, T) True = padded.

        Returns (images, attention maps, mu, logvar): one image (B, 3, S, S) per stage, and
        with return_attn the maps (B, T', H, W) of every refinement block (else an empty list;
        None: the module's `return_attn`). cap_lens is unused (upstream signature).
        """
        if return_attn is None:
            return_attn = self.return_attn
        batch = z_code.shape[0]
        expect(z_code, (batch, self.z_dim), "G_NET z_code")
        expect(sent_emb, (batch, self.ef_dim), "G_NET sent_emb")
        expect(word_embs, (batch, self.ef_dim, None), "G_NET word_embs")
        if mask is not None:
            mask = expect(mask.bool(), (batch, word_embs.shape[2]), "G_NET mask")
        c_code, mu, logvar = self.ca_net(sent_emb, ca_noise)
        if torch.is_grad_enabled() and self.memory_budget is not None:
            policies = iter(self.memory_plan(batch, _activation_size(c_code)))
        else:
            policies = itertools.repeat(None)   # each block's own policy (eager without autograd)
        h_code = self.h_net1(z_code, c_code, memory=next(policies))
        images, attns = [self.img_net1(h_code)], []
        for s, spec in enumerate(self.schedule, start=2):
            text, text_mask = self.stage_text(spec.level, sent_emb, word_embs, mask)
            for block in self.stage_blocks(s):
                h_code, attn = block(h_code, c_code, text, text_mask, return_attn=return_attn,
                                     memory=next(policies))
                if attn is not None:
                    attns.append(attn)
            images.append(getattr(self, f"img_net{s}")(h_code))
        return images, attns, mu, logvar


def _activation_size(t):
    """Bytes per activation element: the autocast dtype's when autocast is on."""
    device = t.device.type
    if torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device).itemsize
    return t.element_size()


def configure(module, **options):
    """Set execution options (memory, memory_budget, impl, mask_compat, sentence_shortcut) on
    every submodule that has them; returns the module. Parameters and buffers are untouched."""
    allowed = {"memory", "memory_budget", "impl", "mask_compat", "sentence_shortcut"}
    if not set(options) <= allowed:
        raise ValueError(f"configure: options are {sorted(allowed)}, got {sorted(options)}")
    mem.check_options(options.get("memory", "eager"), options.get("memory_budget"))
    for sub in module.modules():
        for key, value in options.items():
            if hasattr(sub, key) and not isinstance(getattr(sub, key), (nn.Module, torch.Tensor)):
                setattr(sub, key, value)
    return module
