"""Encoders, discriminators and losses of t2i_fast.models: ITM (CLIP naming), DAMSM encoders
(upstream keys), spectral norm, the loss formulas, and the max memory policy's figure."""
import pytest
import torch
import torch.nn.functional as F

import upstream
from clip_keys import resblock_shapes
from t2i_fast import backends
from t2i_fast.models import (CNN_ENCODER, D_NET64, D_NET128, D_NET256, G_NET, ITM, RNN_ENCODER,
                             KL_loss, SpectralNorm, StageSpec, d_condition, discriminator_loss,
                             get_config, matching_loss, matching_terms)
from t2i_fast.profiling import saved_bytes

TINY_CLIP = dict(nef=16, embed_dim=24, image_resolution=64, vision_layers=(1, 2, 1, 1),
                 vision_width=8, context_length=10, vocab_size=50, transformer_width=16,
                 transformer_heads=2, transformer_layers=2)


def tokens_for(batch, context=10, vocab=50, lengths=(2, 5, 8)):
    tokens = torch.zeros(batch, context, dtype=torch.long)
    for i, n in enumerate(lengths[:batch]):
        tokens[i, 0] = vocab - 2
        tokens[i, 1:n + 1] = torch.arange(1, n + 1)
        tokens[i, n + 1] = vocab - 1
    return tokens


# --------------------------------------------------------------------------------------------
# ITM
# --------------------------------------------------------------------------------------------

def openai_clip_shapes(embed_dim, image_resolution, layers, width, context, vocab, t_width,
                       t_layers):
    """Key names and shapes of an OpenAI CLIP ResNet state dict, written out independently."""
    keys = {}

    def bn(prefix, n):
        keys.update({f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean",
                                                      "running_var")})
    keys["visual.conv1.weight"] = (width // 2, 3, 3, 3)
    bn("visual.bn1", width // 2)
    keys["visual.conv2.weight"] = (width // 2, width // 2, 3, 3)
    bn("visual.bn2", width // 2)
    keys["visual.conv3.weight"] = (width, width // 2, 3, 3)
    bn("visual.bn3", width)
    inplanes = width
    for li, blocks in enumerate(layers, start=1):
        planes = width << (li - 1)
        for b in range(blocks):
            p = f"visual.layer{li}.{b}"
            keys[f"{p}.conv1.weight"] = (planes, inplanes, 1, 1)
            bn(f"{p}.bn1", planes)
            keys[f"{p}.conv2.weight"] = (planes, planes, 3, 3)
            bn(f"{p}.bn2", planes)
            keys[f"{p}.conv3.weight"] = (4 * planes, planes, 1, 1)
            bn(f"{p}.bn3", 4 * planes)
            if b == 0:
                keys[f"{p}.downsample.0.weight"] = (4 * planes, inplanes, 1, 1)
                bn(f"{p}.downsample.1", 4 * planes)
            inplanes = 4 * planes
    dim = 32 * width
    keys["visual.attnpool.positional_embedding"] = ((image_resolution // 32) ** 2 + 1, dim)
    for proj in ("k", "q", "v"):
        keys[f"visual.attnpool.{proj}_proj.weight"] = (dim, dim)
        keys[f"visual.attnpool.{proj}_proj.bias"] = (dim,)
    keys["visual.attnpool.c_proj.weight"] = (embed_dim, dim)
    keys["visual.attnpool.c_proj.bias"] = (embed_dim,)
    keys.update(resblock_shapes("transformer", t_width, t_layers))
    keys.update({"token_embedding.weight": (vocab, t_width), "positional_embedding":
                 (context, t_width), "ln_final.weight": (t_width,), "ln_final.bias": (t_width,),
                 "text_projection": (t_width, embed_dim), "logit_scale": ()})
    return keys


def random_openai_state(shapes, seed=0):
    gen = torch.Generator().manual_seed(seed)
    state = {k: 0.1 * torch.randn(s, generator=gen) for k, s in shapes.items()}
    for k in state:
        if k.endswith("running_var"):
            state[k] = state[k].abs() + 0.5
    # OpenAI's archives also carry these three integers; the loader drops them
    state.update(input_resolution=torch.tensor(64), context_length=torch.tensor(10),
                 vocab_size=torch.tensor(50))
    return state


def test_itm_loads_openai_named_clip_state(tmp_path):
    itm = ITM(**TINY_CLIP)
    shapes = openai_clip_shapes(24, 64, (1, 2, 1, 1), 8, 10, 50, 16, 2)
    own = {k: tuple(v.shape) for k, v in itm.model.state_dict().items()
           if not k.endswith("num_batches_tracked")}
    assert own == shapes
    state = random_openai_state(shapes)
    path = tmp_path / "clip.pt"
    torch.save(state, path)
    loaded = itm.load_clip(str(path))
    assert set(loaded) == set(shapes)
    assert torch.equal(getattr(itm.model.visual.layer2[0].downsample, "0").weight,
                       state["visual.layer2.0.downsample.0.weight"])
    assert torch.equal(itm.model.transformer.resblocks[1].attn.in_proj_weight,
                       state["transformer.resblocks.1.attn.in_proj_weight"])
    assert not any(p.requires_grad for p in itm.model.parameters())
    assert all(p.requires_grad for p in itm.MLP.parameters())
    # a checkpoint of the ITM itself (model.* + MLP.*) round-trips
    torch.save(itm.state_dict(), tmp_path / "itm.pt")
    other = ITM(**TINY_CLIP)
    other.load_clip(str(tmp_path / "itm.pt"))
    images = torch.rand(2, 3, 48, 48) * 2 - 1
    itm.eval(), other.eval()
    for a, b in zip(itm.encode_image(images), other.encode_image(images)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_itm_load_errors_name_the_keys(tmp_path):
    itm = ITM(**TINY_CLIP)
    shapes = openai_clip_shapes(24, 64, (1, 2, 1, 1), 8, 10, 50, 16, 2)
    state = random_openai_state(shapes)
    state["text_projection"] = torch.zeros(16, 99)
    with pytest.raises(ValueError, match=r"shape text_projection: checkpoint \(16, 99\)"):
        itm.load_clip(state)
    del state["text_projection"]
    with pytest.raises(ValueError, match="missing text_projection"):
        itm.load_clip(state)
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read CLIP checkpoint"):
        itm.load_clip(str(tmp_path / "broken.pt"))


def test_itm_shapes_gradients_and_word_slots():
    torch.manual_seed(0)
    itm = ITM(**TINY_CLIP)
    images = (torch.rand(3, 3, 40, 40) * 2 - 1).requires_grad_()
    regions, code = itm.encode_image(images)
    assert regions.shape == (3, 16, 4, 4) and code.shape == (3, 16)       # layer3: stride 16
    tokens = tokens_for(3)
    words, sent = itm.encode_text(tokens)
    assert words.shape == (3, 16, 10) and sent.shape == (3, 16)
    # causal: a token's feature does not depend on later tokens
    changed = tokens.clone()
    changed[:, 6:] = 7
    torch.testing.assert_close(itm.encode_text(changed)[0][:, :, :6], words[:, :, :6])
    slots, mask, lens = ITM.word_slots(words, tokens, 6)
    assert slots.shape == (3, 16, 6) and torch.equal(slots, words[:, :, 1:7])
    # slot t holds token t+1: padded after the caption's words and its end-of-text token
    assert mask.tolist()[0] == [False, False, False, True, True, True]
    assert lens.tolist() == [3, 6, 6]
    compat = ITM.word_slots(words, tokens, 6, mask_compat=True)[1]
    assert compat.tolist()[0] == [False, False, False, False, True, True]   # off by one
    loss, parts = matching_loss(itm, images, slots, sent, lens)
    loss.backward()
    assert images.grad.abs().sum() > 0 and itm.MLP.dense_word.weight.grad is not None
    assert itm.model.visual.conv1.weight.grad is None                      # frozen


def test_itm_rn101_sizes():
    itm = ITM()
    assert sum(p.numel() for p in itm.model.visual.parameters()) == 56_259_936
    with torch.no_grad():
        regions, code = itm.encode_image(torch.zeros(1, 3, 64, 64))
    assert regions.shape == (1, 512, 14, 14) and code.shape == (1, 512)   # reference §3.1
    assert itm.model.visual.layer3[-1].conv3.out_channels == 1024


# --------------------------------------------------------------------------------------------
# DAMSM encoders
# --------------------------------------------------------------------------------------------

def test_rnn_encoder_keys_and_outputs():
    enc = RNN_ENCODER(5450)
    assert {k: tuple(v.shape) for k, v in enc.state_dict().items()} == {
        "encoder.weight": (5450, 300),
        **{f"rnn.{w}_l0{s}": shape for s in ("", "_reverse") for w, shape in
           (("weight_ih", (512, 300)), ("weight_hh", (512, 128)), ("bias_ih", (512,)),
            ("bias_hh", (512,)))}}
    enc = RNN_ENCODER(40, ninput=12, nhidden=16).eval()
    caps = torch.randint(1, 40, (3, 7))
    lens = torch.tensor([4, 7, 2])
    caps[torch.arange(7)[None] >= lens[:, None]] = 0
    words, sent = enc(caps, lens)
    assert words.shape == (3, 16, 7) and sent.shape == (3, 16)
    assert words[2, :, 2:].abs().max() == 0                                 # padded steps are 0
    # unsorted batches give the rows of the sorted one
    order = torch.argsort(lens, descending=True)
    words_s, sent_s = enc(caps[order], lens[order])
    torch.testing.assert_close(sent_s, sent[order])
    torch.testing.assert_close(words_s, words[order])
    # sentence = forward final state || backward final state (h_n at the last valid step)
    torch.testing.assert_close(sent[:, :8], torch.stack(
        [words[i, :8, lens[i] - 1] for i in range(3)]))
    torch.testing.assert_close(sent[:, 8:], words[:, 8:, 0])


def test_cnn_encoder_upstream_keys_and_sizes():
    enc = CNN_ENCODER(256)
    state = enc.state_dict()
    assert len(state) == 567                                                # reference §1.8
    assert sum(p.numel() for p in enc.parameters()) == 22_506_720
    assert sum(p.numel() for p in enc.parameters() if p.requires_grad) == 721_152
    assert state["emb_features.weight"].shape == (256, 768, 1, 1)
    assert state["emb_cnn_code.weight"].shape == (256, 2048)
    assert state["Mixed_6e.branch7x7dbl_5.conv.weight"].shape == (192, 192, 1, 7)
    assert state["Mixed_7c.branch3x3dbl_3b.bn.running_var"].shape == (384,)
    assert enc.Conv2d_1a_3x3.bn.eps == 1e-3
    enc.train()
    assert not enc.Mixed_5b.training                                        # frozen trunk


def test_cnn_encoder_narrow_shapes_and_trunk_sizes():
    enc = CNN_ENCODER(32, width=0.125, image_size=75)
    images = (torch.rand(2, 3, 64, 64) * 2 - 1).requires_grad_()
    regions, code = enc(images)
    assert regions.shape == (2, 32, 3, 3) and code.shape == (2, 32)
    (regions.sum() + code.sum()).backward()
    assert images.grad.abs().sum() > 0
    # the region map is 17 x 17 at the upstream 299 input: check the trunk's arithmetic
    size = 299
    for kernel, stride in ((3, 2), (3, 1), (3, 2), (3, 1), (3, 2), (3, 2)):
        size = (size - kernel) // stride + 1
    assert size == 17


# --------------------------------------------------------------------------------------------
# discriminators and losses
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("net,params", [(D_NET64, 1_878_242), (D_NET128, 5_155_810),
                                        (D_NET256, 18_264_546)])
def test_dmgan_discriminator_keys_and_sizes(net, params):
    netD = net(32, 256, b_jcu=True)                              # reference §1.6, §1.9
    assert sum(p.numel() for p in netD.parameters()) == params
    state = {k: tuple(v.shape) for k, v in netD.state_dict().items()}
    for i in (0, 2, 4, 6):
        assert {f"img_code_s16.{i}.module.{n}" for n in ("bias", "weight_u", "weight_v",
                                                         "weight_bar")} <= set(state)
    assert state["img_code_s16.0.module.weight_bar"] == (32, 3, 4, 4)
    assert state["img_code_s16.0.module.weight_v"] == (48,)
    assert state["COND_DNET.jointConv.0.module.weight_bar"] == (256, 512, 3, 3)
    assert state["UNCOND_DNET.outlogits.0.weight"] == (1, 256, 4, 4)
    assert state["COND_DNET.outlogits.0.bias"] == (1,)
    if net is D_NET256:
        assert state["img_code_s64.0.module.weight_bar"] == (1024, 512, 4, 4)
        assert state["img_code_s64_2.0.module.weight_bar"] == (256, 512, 3, 3)
    assert "UNCOND_DNET.outlogits.0.weight" not in net(32, 256, b_jcu=False).state_dict()


def test_spectral_norm_normalises_and_updates_in_training_only():
    torch.manual_seed(0)
    sn = SpectralNorm(torch.nn.Conv2d(6, 5, 3))
    for _ in range(50):
        weight = sn.normalized_weight()
    sigma = torch.linalg.matrix_norm(weight.detach().reshape(5, -1), ord=2)
    torch.testing.assert_close(sigma, torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    keys = set(sn.state_dict())
    assert keys == {"module.weight_bar", "module.weight_u", "module.weight_v", "module.bias"}
    assert sn.module.weight_v.shape == (54,)
    u = sn.module.weight_u.clone()
    sn.eval()
    sn(torch.randn(1, 6, 4, 4))
    assert torch.equal(u, sn.module.weight_u)


def test_discriminator_loss_formulas():
    torch.manual_seed(0)
    netD = D_NET64(4, 8)
    real, fake = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64)
    cond = torch.randn(3, 8)
    netD.eval()                                    # fixed u, v: the formula sees one weight
    loss, p = discriminator_loss(netD, real, fake, cond, "both")
    rf, ff = netD(real), netD(fake)

    def bce(prob, target):
        return F.binary_cross_entropy(prob, torch.full_like(prob, target))
    expected = (bce(netD.UNCOND_DNET(rf), 1) + bce(netD.COND_DNET(rf, cond), 1)) / 2 + \
        (bce(netD.UNCOND_DNET(ff), 0) + bce(netD.COND_DNET(ff, cond), 0)
         + bce(netD.COND_DNET(rf[:2], cond[1:]), 0)) / 3
    torch.testing.assert_close(loss, expected)
    cond_only, _ = discriminator_loss(netD, real, fake, cond, "cond")
    torch.testing.assert_close(cond_only, p["cond_real"] + (p["cond_fake"] + p["cond_wrong"]) / 2)
    uncond, _ = discriminator_loss(netD, real, fake, cond, "uncond")
    torch.testing.assert_close(uncond, (p["uncond_real"] + p["uncond_fake"]) / 2)


def test_kl_and_word_mean_condition():
    mu, logvar = torch.randn(4, 5), torch.randn(4, 5)
    torch.testing.assert_close(KL_loss(mu, logvar),
                               (-0.5 * (1 + logvar - mu ** 2 - logvar.exp())).mean())
    words = torch.randn(2, 3, 4)
    mask = torch.tensor([[False, False, True, True], [False] * 4])
    torch.testing.assert_close(d_condition("word_mean", None, words, mask)[0],
                               words[0, :, :2].mean(1))
    torch.testing.assert_close(d_condition("word_mean", None, words, mask, mask_compat=True),
                               words.mean(2))


def test_matching_terms_equal_upstream_loop():
    gen = torch.Generator().manual_seed(0)
    regions = torch.randn(4, 8, 3, 3, generator=gen, dtype=torch.float64)
    words = torch.randn(4, 8, 5, generator=gen, dtype=torch.float64)
    code, sent = torch.randn(4, 8, generator=gen, dtype=torch.float64), \
        torch.randn(4, 8, generator=gen, dtype=torch.float64)
    lens = torch.tensor([5, 1, 3, 2])
    for kind, expected in (("word", upstream.words_loss(regions, words, lens, [1, 2, 1, 3])),
                           ("sentence", upstream.sent_loss(code, sent, [1, 2, 1, 3]))):
        got = matching_terms(regions, code, words, sent, lens, kind, [1, 2, 1, 3])
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e)


# --------------------------------------------------------------------------------------------
# the max memory policy's figure at test sizes
# --------------------------------------------------------------------------------------------

def test_max_memory_saves_far_less_per_refinement_iteration():
    """Bytes saved for backward per extra word-level iteration: memory='max' + fused vs eager
    with the reference ops. (The benchmark measures it at 256^2 with the GR-GAN widths.)"""
    def per_iteration(memory, impl):
        sizes = []
        for k in (1, 2):
            cfg = get_config("tiny", gf_dim=16, r_num=2, memory=memory, impl=impl,
                             schedule=(StageSpec("sentence"), StageSpec("word", True, k)))
            torch.manual_seed(0)
            G = G_NET.from_config(cfg)
            z, sent = torch.randn(2, cfg.z_dim), torch.randn(2, cfg.text_dim)
            words = torch.randn(2, cfg.text_dim, cfg.words_num)
            sizes.append(saved_bytes(lambda: G(z, sent, words, None)[0][-1].sum()))
        return sizes[1] - sizes[0]
    reasons = backends.unavailable("cpu", "dynamic_memory", "cpu", torch.float32)
    if reasons:
        pytest.skip("the fused CPU kernels are not built: " + "; ".join(reasons))
    eager, most = per_iteration("eager", "reference"), per_iteration("max", "cpu")
    assert most * 8 <= eager, (most, eager)
