"""The generator side of t2i_fast.models: presets and shapes, upstream key names, the dynamic
memory block against an upstream-style eager version, the memory policies (lean, max and the
byte budget) against eager, the sentence shortcut."""
import copy
import io
import json

import pytest
import torch
import torch.nn.functional as F

from t2i_fast.models import (G_NET, NEXT_STAGE_G, ATT_STAGE_G, POLICIES, PRESETS, Config, D_NET,
                             MemoryBudgetError, StageSpec, build_models, configure, d_condition,
                             discriminator_loss, generator_loss, get_config, scaled_down,
                             text_features)
from t2i_fast.models.chain import Step
from t2i_fast.models.memory import run_block
from t2i_fast.models.memory import estimate as memory_estimate
from t2i_fast.models.memory import plan as memory_plan

IMPLS = (None, "reference")     # auto (C++ kernels when built) and the eager reference
TOL64 = dict(rtol=1e-9, atol=1e-11)


def preset_for_tests(name, **overrides):
    cfg = get_config(name)
    return cfg if name in ("tiny", "small") else scaled_down(cfg, **overrides)


def captions_for(cfg, batch, gen):
    """Random captions of lengths from 1 to words_num in the encoder's format."""
    lens = torch.linspace(1, cfg.words_num, batch).round().long()
    if cfg.text_encoder == "clip":
        tokens = torch.zeros(batch, cfg.clip_context, dtype=torch.long)
        for i, n in enumerate(lens.tolist()):
            tokens[i, 0] = cfg.vocab_size - 2                                  # start of text
            tokens[i, 1:n + 1] = torch.randint(1, cfg.vocab_size - 2, (n,), generator=gen)
            tokens[i, n + 1] = cfg.vocab_size - 1                              # end: largest id
        return tokens, None
    caps = torch.randint(1, cfg.vocab_size, (batch, cfg.words_num), generator=gen)
    caps[torch.arange(cfg.words_num)[None] >= lens[:, None]] = 0
    return caps, lens


def text_inputs(cfg, batch=3, seed=0, dtype=torch.float32):
    """Random G inputs: z, sentence, words, a padding mask with lengths 1..T, noise."""
    gen = torch.Generator().manual_seed(seed)
    slots = cfg.words_num
    lens = torch.linspace(1, slots, batch).round().long()
    mask = torch.arange(slots)[None, :] >= lens[:, None]
    z = torch.randn(batch, cfg.z_dim, generator=gen, dtype=dtype)
    sent = torch.randn(batch, cfg.text_dim, generator=gen, dtype=dtype)
    words = torch.randn(batch, cfg.text_dim, slots, generator=gen, dtype=dtype)
    noise = torch.randn(batch, cfg.condition_dim, generator=gen, dtype=dtype)
    return z, sent, words, mask, noise


def images_loss(images, seed=1):
    """A loss with a fixed random weight per pixel of every image."""
    gen = torch.Generator().manual_seed(seed)
    return sum((im * torch.randn(im.shape, generator=gen, dtype=im.dtype)).sum() for im in images)


# --------------------------------------------------------------------------------------------
# presets: shapes at every stage, forward and backward of the full losses
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", IMPLS, ids=["auto", "reference"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_shapes_and_training_step(name, impl):
    cfg = preset_for_tests(name, impl=impl)
    torch.manual_seed(0)
    models = build_models(cfg)
    batch = 3
    gen = torch.Generator().manual_seed(0)
    captions, lens = captions_for(cfg, batch, gen)
    words, sent, mask, cap_lens = text_features(models, captions, lens)
    assert words.shape[:2] == (batch, cfg.text_dim) and sent.shape == (batch, cfg.text_dim)
    assert mask.shape == (batch, words.shape[2]) and mask.dtype == torch.bool
    words, sent = words.detach(), sent.detach()

    z = torch.randn(batch, cfg.z_dim)
    images, attns, mu, logvar = models.generator(z, sent, words, mask, return_attn=True)
    assert [tuple(im.shape) for im in images] == [(batch, 3, s, s) for s in cfg.image_sizes]
    assert all(im.abs().max() <= 1 for im in images)
    assert mu.shape == logvar.shape == (batch, cfg.condition_dim)
    # one map per refinement block at its input size; shortcut sentence stages read one slot
    expected, size = [], cfg.base_size
    for spec in cfg.schedule:
        for i in range(spec.iterations):
            slots = 1 if spec.level == "sentence" and cfg.sentence_shortcut else words.shape[2]
            expected.append((batch, slots, size, size))
            size *= 2 if spec.upsample and i == 0 else 1
    assert [tuple(a.shape) for a in attns] == expected

    real = [torch.rand_like(im) * 2 - 1 for im in images]
    d_total = 0
    for i, (netD, size) in enumerate(zip(models.discriminators, cfg.image_sizes)):
        feat = netD(real[i])
        spatial = 4 if size >= 64 else size // 16
        assert feat.shape == (batch, 8 * cfg.df_dim, spatial, spatial)
        cond = d_condition(cfg.d_conditions[i], sent, words, mask)
        loss, _ = discriminator_loss(netD, real[i], images[i], cond, cfg.d_heads[i])
        d_total = d_total + loss
    d_total.backward()
    used = [n for n, p in models.discriminators.named_parameters() if p.grad is not None]
    assert used and all(torch.isfinite(models.discriminators.get_parameter(n).grad).all()
                        for n in used)

    models.generator.zero_grad()
    g_loss, parts = generator_loss(cfg, models.discriminators, models.image_encoder, images,
                                   sent, words, mask, cap_lens, mu, logvar)
    assert torch.isfinite(g_loss) and {"kl", "g_adv0"} <= set(parts)
    g_loss.backward()
    for n, p in models.generator.named_parameters():
        assert p.grad is not None, f"{n} got no gradient"
        assert torch.isfinite(p.grad).all(), n


def test_preset_values():
    grgan = get_config("grgan-coco")
    assert (grgan.text_dim, grgan.gf_dim, grgan.df_dim, grgan.r_num, grgan.words_num) == \
        (512, 64, 32, 3, 12)
    assert grgan.image_sizes == (64, 128, 256)
    assert [s.level for s in grgan.schedule] == ["sentence", "word"]
    assert grgan.d_heads == ("uncond", "cond", "cond")
    assert [(m.kind, m.weight) for m in grgan.matching] == \
        [("sentence", 1.0), ("word", 1.0), ("sentence", 4.0)]
    cub, coco = get_config("dmgan-cub"), get_config("dmgan-coco")
    assert (cub.r_num, cub.words_num, cub.matching[0].weight) == (2, 18, 5.0)
    assert (coco.r_num, coco.words_num, coco.matching[0].weight) == (3, 12, 50.0)
    attn = get_config("attngan-cub")
    assert (attn.attention, attn.gf_dim, attn.df_dim, attn.d_norm) == \
        ("attention", 32, 64, "batch")


def test_config_json_round_trip_and_errors():
    cfg = get_config("tiny", schedule=(StageSpec("sentence"), StageSpec("word", True, 3)))
    back = Config.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and back.schedule[1] == StageSpec("word", True, 3)
    with pytest.raises(ValueError, match="unknown preset"):
        get_config("nope")
    with pytest.raises(ValueError, match="unknown config fields"):
        get_config("tiny", gf=3)
    with pytest.raises(ValueError, match="one entry per image"):
        get_config("tiny", schedule=(StageSpec("word"),))
    with pytest.raises(ValueError, match="level"):
        get_config("tiny", schedule=(StageSpec("pixel"), StageSpec("word")))


# --------------------------------------------------------------------------------------------
# upstream sizes and key names (reference §1.5, §1.9, §2.1, §3.2)
# --------------------------------------------------------------------------------------------

def _bn(prefix, n):
    return {f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")} \
        | {f"{prefix}.num_batches_tracked": ()}


def upstream_dmgan_g_keys(r_num, nef=256, ngf=64):
    """netG keys and shapes as listed in reference §1.9 (CUB: r_num 2, 119 entries)."""
    keys = {"ca_net.fc.weight": (400, nef), "ca_net.fc.bias": (400,),
            "h_net1.fc.0.weight": (32768, 200)} | _bn("h_net1.fc.1", 32768)
    for i, c in enumerate((1024, 512, 256, 128), start=1):
        keys |= {f"h_net1.upsample{i}.1.weight": (c, c, 3, 3)} | _bn(f"h_net1.upsample{i}.2", c)
    for s in (1, 2, 3):
        keys[f"img_net{s}.img.0.weight"] = (3, ngf, 3, 3)
    for s in (2, 3):
        p = f"h_net{s}"
        keys |= {f"{p}.A.weight": (1, nef), f"{p}.B.weight": (1, ngf),
                 f"{p}.M_r.0.weight": (128, 64, 1), f"{p}.M_r.0.bias": (128,),
                 f"{p}.M_w.0.weight": (128, nef, 1), f"{p}.M_w.0.bias": (128,),
                 f"{p}.key.0.weight": (64, 128, 1), f"{p}.key.0.bias": (64,),
                 f"{p}.value.0.weight": (64, 128, 1), f"{p}.value.0.bias": (64,),
                 f"{p}.response_gate.0.weight": (1, 128, 1, 1),
                 f"{p}.response_gate.0.bias": (1,),
                 f"{p}.upsample.1.weight": (128, 128, 3, 3)} | _bn(f"{p}.upsample.2", 128)
        for i in range(r_num):
            keys |= {f"{p}.residual.{i}.block.0.weight": (256, 128, 3, 3),
                     f"{p}.residual.{i}.block.3.weight": (128, 128, 3, 3)}
            keys |= _bn(f"{p}.residual.{i}.block.1", 256) | _bn(f"{p}.residual.{i}.block.4", 128)
    return keys


@pytest.mark.parametrize("name,r_num,entries,params",
                         [("dmgan-cub", 2, 119, 21_449_042), ("dmgan-coco", 3, 143, 22_335_314)])
def test_dmgan_generator_keys_shapes_and_checkpoint_load(name, r_num, entries, params):
    G = G_NET.from_config(get_config(name))
    state = G.state_dict()
    expected = upstream_dmgan_g_keys(r_num)
    assert len(state) == len(expected) == entries
    assert {k: tuple(v.shape) for k, v in state.items()} == expected
    assert sum(p.numel() for p in G.parameters()) == params
    # A checkpoint in the upstream layout loads strictly, also an old one without the BN
    # num_batches_tracked entries.
    gen = torch.Generator().manual_seed(0)
    ckpt = {k: torch.randn(s, generator=gen) if s else torch.tensor(7) for k, s in expected.items()}
    G.load_state_dict(ckpt)
    assert torch.equal(G.h_net2.M_w[0].weight, ckpt["h_net2.M_w.0.weight"])
    old = {k: v for k, v in ckpt.items() if not k.endswith("num_batches_tracked")}
    G.load_state_dict(old)


def test_grgan_and_attngan_generator_sizes():
    grg = G_NET.from_config(get_config("grgan-coco"))
    assert sum(p.numel() for p in grg.parameters()) == 22_503_762       # reference §3.2
    assert grg.state_dict()["ca_net.fc.weight"].shape == (400, 512)
    assert grg.state_dict()["h_net2.M_w.0.weight"].shape == (128, 512, 1)
    attn = G_NET.from_config(get_config("attngan-cub"))
    assert sum(p.numel() for p in attn.parameters()) == 7_084_592        # reference §1.5
    keys = attn.state_dict()
    assert keys["h_net2.att.conv_context.weight"].shape == (32, 256, 1, 1)
    assert not any(".M_w." in k or ".key." in k for k in keys)


def test_schedule_layout_and_sizes():
    cfg = get_config("tiny", schedule=(StageSpec("sentence"), StageSpec("word", True, 2),
                                       StageSpec("word", False, 1)),
                     d_heads=("uncond", "cond", "cond", "cond"),
                     d_conditions=("sentence", "sentence", "word_mean", "word_mean"))
    assert cfg.image_sizes == (16, 32, 64, 64)
    G = G_NET.from_config(cfg)
    keys = G.state_dict()
    assert "h_net3.0.upsample.1.weight" in keys and "h_net3.1.project.0.weight" in keys
    assert "h_net4.project.0.weight" in keys and "h_net4.upsample.1.weight" not in keys
    z, sent, words, mask, noise = text_inputs(cfg)
    images, attns, _, _ = G(z, sent, words, mask, return_attn=True, ca_noise=noise)
    assert [im.shape[-1] for im in images] == [16, 32, 64, 64]
    assert [a.shape[-1] for a in attns] == [16, 32, 64, 64]


def test_state_dict_round_trip():
    cfg = get_config("tiny")
    torch.manual_seed(0)
    models = build_models(cfg)
    fresh = build_models(cfg)
    for a, b in ((models.generator, fresh.generator),
                 (models.discriminators, fresh.discriminators),
                 (models.text_encoder, fresh.text_encoder)):
        buffer = io.BytesIO()
        torch.save(a.state_dict(), buffer)
        buffer.seek(0)
        b.load_state_dict(torch.load(buffer, weights_only=True))
    z, sent, words, mask, noise = text_inputs(cfg)
    models.generator.eval(), fresh.generator.eval()
    out_a = models.generator(z, sent, words, mask, ca_noise=noise)[0]
    out_b = fresh.generator(z, sent, words, mask, ca_noise=noise)[0]
    for a, b in zip(out_a, out_b):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for image, a, b in zip(out_a, models.discriminators, fresh.discriminators):
        a.eval(), b.eval()
        torch.testing.assert_close(a(image), b(image), rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# the dynamic-memory block against upstream-style eager code (reference §1.4)
# --------------------------------------------------------------------------------------------

def upstream_style_dm_stage(block, h, words, mask):
    """NEXT_STAGE_G.forward written the upstream way from the block's own parameters:
    bmm attention with a -inf masked softmax, the 1x1 gate conv over [h; o], [r'; r']."""
    batch, channels, height, width = h.shape
    r_mean = F.adaptive_avg_pool2d(h, 1).view(batch, channels).detach()
    gate_w = torch.sigmoid(block.A(words.transpose(1, 2)) + block.B(r_mean).unsqueeze(1))
    gate_w = gate_w.transpose(1, 2)
    mem = F.relu(F.conv1d(words, block.M_w[0].weight, block.M_w[0].bias)) * gate_w + \
        F.relu(F.conv1d(r_mean.unsqueeze(2), block.M_r[0].weight, block.M_r[0].bias)) * (1 - gate_w)
    key = F.relu(F.conv1d(mem, block.key[0].weight, block.key[0].bias))
    value = F.relu(F.conv1d(mem, block.value[0].weight, block.value[0].bias))
    query = h.view(batch, channels, -1).transpose(1, 2)
    scores = torch.bmm(query, key)
    scores = scores.masked_fill(mask.unsqueeze(1), float("-inf"))
    attn = torch.softmax(scores, dim=2)
    o = torch.bmm(value, attn.transpose(1, 2)).view(batch, channels, height, width)
    gate = torch.sigmoid(F.conv2d(torch.cat([h, o], 1), block.response_gate[0].weight,
                                  block.response_gate[0].bias))
    r = h * (1 - gate) + o * gate
    x = torch.cat([r, r], 1)
    for res in block.residual:
        x = x + res.block(x)
    return block.upsample(x), attn.transpose(1, 2).reshape(batch, -1, height, width)


@pytest.mark.parametrize("impl", IMPLS, ids=["auto", "reference"])
def test_dm_block_matches_upstream_style(impl):
    torch.manual_seed(0)
    block = NEXT_STAGE_G(8, 12, r_num=2, impl=impl).double()
    gen = torch.Generator().manual_seed(3)
    h = torch.randn(3, 8, 6, 5, generator=gen, dtype=torch.float64)
    words = torch.randn(3, 12, 7, generator=gen, dtype=torch.float64)
    mask = torch.arange(7)[None] >= torch.tensor([7, 3, 1])[:, None]
    ref_block = copy.deepcopy(block)
    out, attn = block(h, None, words, mask, return_attn=True)
    exp_out, exp_attn = upstream_style_dm_stage(ref_block, h, words, mask)
    torch.testing.assert_close(out, exp_out, **TOL64)
    torch.testing.assert_close(attn, exp_attn, **TOL64)
    assert attn[2, 1:].abs().max() == 0          # padded slots get no attention


def test_attention_block_matches_upstream_style():
    torch.manual_seed(0)
    block = ATT_STAGE_G(8, 12, r_num=1).double()
    gen = torch.Generator().manual_seed(4)
    h = torch.randn(2, 8, 5, 5, generator=gen, dtype=torch.float64)
    words = torch.randn(2, 12, 6, generator=gen, dtype=torch.float64)
    mask = torch.arange(6)[None] >= torch.tensor([6, 2])[:, None]
    out, attn = block(h, None, words, mask, return_attn=True)
    proj = F.conv2d(words.unsqueeze(3), block.att.conv_context.weight).squeeze(3)
    scores = torch.bmm(h.flatten(2).transpose(1, 2), proj).masked_fill(mask[:, None], -torch.inf)
    alpha = torch.softmax(scores, dim=2)
    context = torch.bmm(proj, alpha.transpose(1, 2)).view_as(h)
    x = torch.cat([h, context], 1)
    x = x + block.residual[0].block(x)
    torch.testing.assert_close(out, block.upsample(x), **TOL64)


def test_masks_hide_padded_words():
    cfg = get_config("tiny", schedule=(StageSpec("word"), StageSpec("word")))
    torch.manual_seed(0)
    G = G_NET.from_config(cfg).double().eval()
    z, sent, words, mask, noise = text_inputs(cfg, dtype=torch.float64)
    base = G(z, sent, words, mask, ca_noise=noise)[0][-1]
    changed = words + 5 * mask[:, None, :]        # new values in the padded slots only
    assert mask.any()
    # Padded slots still feed the writing gate of their own slot only: the read-out ignores them.
    torch.testing.assert_close(G(z, sent, changed, mask, ca_noise=noise)[0][-1], base, **TOL64)
    assert not torch.allclose(G(z, sent, changed, None, ca_noise=noise)[0][-1], base)
    # upstream ByteTensor masks are accepted
    torch.testing.assert_close(G(z, sent, words, mask.to(torch.uint8), ca_noise=noise)[0][-1],
                               base, **TOL64)
    # mask_compat tiles the mask across the batch (AttnGAN #93): a different result for B > 1
    configure(G, mask_compat=True)
    assert not torch.allclose(G(z, sent, words, mask, ca_noise=noise)[0][-1], base)


def test_shape_errors_are_clear():
    cfg = get_config("tiny")
    G = G_NET.from_config(cfg)
    z, sent, words, mask, _ = text_inputs(cfg)
    with pytest.raises(ValueError, match=r"G_NET word_embs: expected shape \(3, 32, \*\)"):
        G(z, sent, words[:, :5], mask)
    with pytest.raises(ValueError, match="G_NET mask"):
        G(z, sent, words, mask[:, :3])
    with pytest.raises(ValueError, match="NEXT_STAGE_G h_code"):
        G.h_net3(torch.zeros(3, 5, 8, 8), None, words, mask)


# --------------------------------------------------------------------------------------------
# memory policies and the sentence shortcut: same outputs, gradients and BN buffers (float64)
# --------------------------------------------------------------------------------------------

def run_step(G, inputs, impl, **options):
    """Forward + backward with fixed weights; returns images, grads, input grads, buffers."""
    configure(G, impl=impl, **options)
    z, sent, words, mask, noise = inputs
    sent, words = sent.clone().requires_grad_(), words.clone().requires_grad_()
    G.zero_grad()
    images, attns, mu, logvar = G(z, sent, words, mask, ca_noise=noise)
    (images_loss(images) + logvar.sum() + mu.sum()).backward()
    grads = {n: p.grad.clone() for n, p in G.named_parameters()}
    buffers = {n: b.clone() for n, b in G.named_buffers()}
    return [im.detach() for im in images], grads, (sent.grad, words.grad), buffers


def assert_same_step(a, b):
    for x, y in zip(a[0], b[0]):
        torch.testing.assert_close(x, y, **TOL64)
    assert a[1].keys() == b[1].keys()
    for name in a[1]:
        torch.testing.assert_close(a[1][name], b[1][name], **TOL64, msg=name)
    for x, y in zip(a[2], b[2]):
        torch.testing.assert_close(x, y, **TOL64)
    for name in a[3]:
        torch.testing.assert_close(a[3][name], b[3][name], **TOL64, msg=name)


MEMORY_SCHEDULE = (StageSpec("sentence"), StageSpec("word", True, 2))   # up and same blocks


@pytest.mark.parametrize("policy", ["lean", "max"])
@pytest.mark.parametrize("attention", ["memory", "attention"])
@pytest.mark.parametrize("r_num", [0, 2])
def test_memory_policy_equals_eager_float64(policy, attention, r_num):
    cfg = get_config("tiny", attention=attention, r_num=r_num, schedule=MEMORY_SCHEDULE)
    torch.manual_seed(0)
    G = G_NET.from_config(cfg).double()
    start = copy.deepcopy(G.state_dict())
    inputs = text_inputs(cfg, seed=5, dtype=torch.float64)
    eager = run_step(G, inputs, "reference", memory="eager")
    G.load_state_dict(start)
    other = run_step(G, inputs, None, memory=policy)
    assert_same_step(eager, other)
    # BN running statistics moved once: backward never runs a training-mode BatchNorm
    assert all(int(b) == 1 for n, b in G.named_buffers() if n.endswith("num_batches_tracked"))
    # eval mode (BatchNorm on running statistics) with autograd on
    G.eval()
    assert_same_step(run_step(G, inputs, "reference", memory="eager"),
                     run_step(G, inputs, None, memory=policy))


def discriminator_step(D, x, cond, memory):
    """Features, and the gradients of a fixed random loss on both heads' logits."""
    x = x.clone().requires_grad_()
    D.zero_grad()
    feat = D(x, memory=memory)
    loss = images_loss([feat]) + D.COND_DNET.logits(feat, cond).sum()
    if D.UNCOND_DNET is not None:
        loss = loss + D.UNCOND_DNET.logits(feat).sum()
    loss.backward()
    return ([feat.detach()], {n: p.grad.clone() for n, p in D.named_parameters()}, (x.grad,),
            {n: b.clone() for n, b in D.named_buffers()})


@pytest.mark.parametrize("policy", ["lean", "max"])
@pytest.mark.parametrize("norm", ["spectral", "batch"])
@pytest.mark.parametrize("size", [32, 128])          # 128: down blocks and reductions too
def test_discriminator_memory_policy_equals_eager_float64(policy, norm, size):
    torch.manual_seed(0)
    D = D_NET(size, ndf=4, nef=8, norm=norm).double()
    start = copy.deepcopy(D.state_dict())
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(3, 3, size, size, generator=gen, dtype=torch.float64)
    cond = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    eager = discriminator_step(D, x, cond, "eager")
    D.load_state_dict(start)
    assert_same_step(eager, discriminator_step(D, x, cond, policy))


def eager_step(x, weight, bias, bn, act, *, stride=1, padding=1, upsample=False, fold=False,
               view=None):
    """What a memory Step computes, with autograd's own ops."""
    if fold:
        x = torch.cat([x, x], dim=1)
    if weight.dim() == 2:
        t = F.linear(x, weight, bias)
    else:
        if upsample:
            x = F.interpolate(x, scale_factor=2, mode="nearest")
        t = F.conv2d(x, weight, bias, stride, padding)
    t = t if bn is None else bn(t)
    y = {"glu": lambda: F.glu(t, dim=1), "lrelu": lambda: F.leaky_relu(t, 0.2),
         None: lambda: t}[act]()
    return y if view is None else y.reshape(y.shape[0], *view)


STEPS = {   # input shape, weight shape, options
    "upsample-bn-glu": ((3, 5, 4, 6), (8, 5, 3, 3), dict(bn=True, act="glu", upsample=True)),
    "upsample-bias": ((2, 3, 5, 3), (4, 3, 3, 3), dict(bias=True, upsample=True)),
    "fold-bn-glu": ((3, 3, 5, 5), (6, 6, 3, 3), dict(bn=True, act="glu", fold=True)),
    "stride2-bias-lrelu": ((3, 3, 8, 6), (5, 3, 4, 4), dict(bias=True, act="lrelu", stride=2)),
    "linear-bn-glu-view": ((4, 7), (24, 7), dict(bn=True, act="glu", view=(3, 2, 2))),
}


@pytest.mark.parametrize("policy", ["lean", "max"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("case", list(STEPS))
def test_memory_step_matches_autograd_float64(case, training, policy):
    """One Step under lean/max against the same function through autograd: output, input,
    weight, bias and BatchNorm gradients, running statistics (the parity kernels of nearest x2
    + conv3x3, the folded [x; x], stride and padding, linear + view)."""
    shape, wshape, options = STEPS[case]
    options = dict(options)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    weight = torch.randn(wshape, generator=gen, dtype=torch.float64).requires_grad_()
    bias = (torch.randn(wshape[0], generator=gen, dtype=torch.float64).requires_grad_()
            if options.pop("bias", False) else None)
    bn = None
    if options.pop("bn", False):
        bn = torch.nn.BatchNorm1d(wshape[0]) if len(wshape) == 2 else \
            torch.nn.BatchNorm2d(wshape[0])
        bn = bn.double().train(training)
        with torch.no_grad():
            bn.weight.normal_(generator=gen), bn.bias.normal_(generator=gen)
            bn.running_mean.normal_(generator=gen), bn.running_var.uniform_(0.5, 2, generator=gen)
    act = options.pop("act", None)
    if "stride" in options:
        options["padding"] = 1
    start = None if bn is None else copy.deepcopy(bn.state_dict())
    results = []
    for memory in ("eager", policy):
        if bn is not None:
            bn.load_state_dict(start)
        leaves = [x.clone().requires_grad_(), weight, bias] + \
            ([] if bn is None else [bn.weight, bn.bias])
        for t in leaves[1:]:
            if t is not None:
                t.grad = None
        y = run_block(memory, lambda: [Step(weight, bias, bn, act, **options)], leaves[0],
                      lambda v: eager_step(v, weight, bias, bn, act, **options))
        images_loss([y]).backward()
        if memory != "eager":   # the graph node outlives its backward; what it replayed must not
            assert y.grad_fn.units[0].t is None
        results.append(([y.detach()], {str(i): t.grad.clone() for i, t in enumerate(leaves)
                                       if t is not None},
                         (), {} if bn is None else {n: b.clone() for n, b in bn.named_buffers()}))
    assert_same_step(*results)


def test_memory_policy_under_autocast_is_as_close_to_float32_as_eager():
    """bf16 autocast: a chain's output and weight gradient are no further from float32 than
    the eager modules' (the parity kernels and the folded weights are summed in float32)."""
    torch.manual_seed(0)
    block = NEXT_STAGE_G(8, 12, r_num=1)
    gen = torch.Generator().manual_seed(8)
    h = torch.randn(4, 8, 8, 8, generator=gen)
    words = torch.randn(4, 12, 5, generator=gen)

    def step(memory, autocast):
        block.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out, _ = block(h, None, words, memory=memory)
        images_loss([out.float()]).backward()
        return out.float().detach(), block.upsample[1].weight.grad.clone()

    start = copy.deepcopy(block.state_dict())
    results = {}
    for memory, autocast in (("eager", False), ("eager", True), ("lean", True), ("max", True)):
        block.load_state_dict(start)
        results[memory, autocast] = step(memory, autocast)
    ref = results["eager", False]
    err = {key: [(a - b).norm() / b.norm() for a, b in zip(value, ref)]
           for key, value in results.items()}
    assert 0 < err["eager", True][0] < 0.05
    for memory in ("lean", "max"):
        assert err[memory, True][0] <= 2 * err["eager", True][0], (memory, err)
        assert err[memory, True][1] <= 2 * err["eager", True][1], (memory, err)


def test_memory_policy_refuses_double_backward():
    cfg = get_config("tiny", memory="lean")
    G = G_NET.from_config(cfg).double()
    z, sent, words, mask, noise = text_inputs(cfg, dtype=torch.float64)
    sent = sent.requires_grad_()
    image = G(z, sent, words, mask, ca_noise=noise)[0][-1]
    (grad,) = torch.autograd.grad(image.pow(2).sum(), sent, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiate twice"):
        grad.sum().backward()


# --------------------------------------------------------------------------------------------
# the byte estimates and the budget
# --------------------------------------------------------------------------------------------

def saved_activations(fn, batch, params):
    """Bytes of the tensors autograd saves during fn() that are activations: batch first,
    at least 2-d, not a parameter."""
    owned = {p.data_ptr() for p in params}
    total = 0

    def pack(t):
        nonlocal total
        if t.dim() >= 2 and t.shape[0] == batch and t.data_ptr() not in owned:
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return total


@pytest.mark.parametrize("attention", ["memory", "attention"])
def test_memory_estimates_equal_saved_tensors(attention):
    cfg = get_config("tiny", attention=attention, r_num=2, schedule=MEMORY_SCHEDULE)
    torch.manual_seed(0)
    G = G_NET.from_config(cfg).double()
    batch = 5
    gen = torch.Generator().manual_seed(9)
    for block, shape in G.memory_blocks():
        x = torch.randn((batch, *shape[1:]), generator=gen, dtype=torch.float64,
                        requires_grad=True)
        estimate = memory_estimate(block.chain_units(), x.shape, x.element_size())
        for policy in POLICIES:
            measured = saved_activations(
                lambda: run_block(policy, block.chain_units, x, block.eager_chain), batch,
                list(block.parameters()))
            assert measured == estimate[policy], (type(block).__name__, policy)
        assert estimate["max"] < estimate["lean"] < estimate["eager"]


def test_memory_plan_picks_the_fastest_policy_that_fits():
    blocks = [dict(eager=100, lean=40, max=10, macs=1000), dict(eager=60, lean=30, max=5, macs=10)]
    assert memory_plan(blocks, 160) == ["eager", "eager"]
    assert memory_plan(blocks, 130) == ["lean", "eager"]          # the larger saving first
    assert memory_plan(blocks, 70) == ["lean", "lean"]
    assert memory_plan(blocks, 69) == ["lean", "max"]             # most bytes per recomputed MAC
    assert memory_plan(blocks, 15) == ["max", "max"]
    with pytest.raises(MemoryBudgetError, match="at least 15 bytes"):
        memory_plan(blocks, 14)


def test_generator_memory_budget():
    cfg = get_config("tiny", r_num=2, schedule=MEMORY_SCHEDULE)
    torch.manual_seed(0)
    G = G_NET.from_config(cfg).double()
    start = copy.deepcopy(G.state_dict())
    inputs = text_inputs(cfg, seed=10, dtype=torch.float64)
    batch = inputs[0].shape[0]
    estimates = [memory_estimate(block.chain_units(), (batch, *shape[1:]), 8)
                 for block, shape in G.memory_blocks()]
    total = {p: sum(e[p] for e in estimates) for p in POLICIES}
    for budget, expected in ((total["eager"], {"eager"}), (total["lean"], {"lean"}),
                             (total["lean"] - 1, {"lean", "max"}), (total["max"], {"max"})):
        configure(G, memory_budget=budget)
        assert set(G.memory_plan(batch, 8)) == expected, budget
    # a mixed plan computes the same step as eager
    configure(G, memory_budget=total["lean"] - 1)
    G.load_state_dict(start)
    mixed = run_step(G, inputs, None)
    G.load_state_dict(start)
    assert_same_step(run_step(G, inputs, "reference", memory_budget=None), mixed)
    configure(G, memory_budget=total["max"] - 1)
    with pytest.raises(MemoryBudgetError, match=f"at least {total['max']} bytes .* at batch 3"):
        G(*inputs[:4], ca_noise=inputs[4])
    with torch.no_grad():                      # no autograd, no budget to keep
        G(*inputs[:4], ca_noise=inputs[4])


def test_memory_options_are_checked():
    with pytest.raises(ValueError, match="memory must be one of"):
        get_config("tiny", memory="lazy")
    G = G_NET.from_config(get_config("tiny"))
    for budget in (0, -5, True, 1.5):
        with pytest.raises(ValueError, match="memory_budget"):
            get_config("tiny", memory_budget=budget)
        with pytest.raises(ValueError, match="memory_budget must be a positive"):
            configure(G, memory_budget=budget)
    with pytest.raises(ValueError, match="memory must be one of"):
        configure(G, memory="lean ")
    with pytest.raises(ValueError, match="memory must be one of"):
        D_NET(32, memory="none")


@pytest.mark.parametrize("mask_compat", [False, True])
def test_sentence_shortcut_equals_general_path(mask_compat):
    cfg = get_config("tiny", schedule=(StageSpec("sentence"), StageSpec("sentence", False, 1),
                                       StageSpec("word")),
                     d_heads=("uncond", "cond", "cond", "cond"),
                     d_conditions=("sentence",) * 3 + ("word_mean",))
    torch.manual_seed(0)
    G = G_NET.from_config(cfg).double()
    start = copy.deepcopy(G.state_dict())
    inputs = text_inputs(cfg, batch=4, dtype=torch.float64)   # lengths 1..T, one with 1 word
    general = run_step(G, inputs, None, sentence_shortcut=False, mask_compat=mask_compat)
    G.load_state_dict(start)
    shortcut = run_step(G, inputs, None, sentence_shortcut=True, mask_compat=mask_compat)
    assert_same_step(general, shortcut)
    # all slots hold one key, so the key projection gets no gradient on either path
    assert general[1]["h_net2.key.0.weight"].abs().max() < 1e-12
