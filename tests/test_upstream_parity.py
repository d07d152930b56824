"""Published upstream weights (t2i_fast.models.upstream): files in the upstream key names and
layout (random values) load with load_upstream, and the loaded models compute what the upstream
code computes under its conventions.

The expected values are computed here from the state dicts alone, written from the upstream
semantics (reference §1-§3): G_NET with the tiled word mask (tests/upstream.py memory_tiled),
GR-GAN's sentence stage over T copies of the sentence, attention maps (B, T, H, W) for every
stage, spectral norm's power iteration on every call, the DAMSM BiLSTM as torch's LSTM over a
length-sorted packed batch. Scaled-down sizes keep the forward passes fast; the key names and
shapes are also checked at the real sizes of DM-GAN CUB and against torchvision's Inception-v3.
"""
import dataclasses
import math

import pytest
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from upstream import memory_tiled
from t2i_fast.errors import WeightsError
from t2i_fast.models import (UPSTREAM_PRESETS, build_models, get_config, load_upstream,
                             scaled_down, text_features, upstream_config)
from t2i_fast.models.upstream import identify, sort_files

EXACT = dict(rtol=0, atol=1e-10)      # the float64 target, on values of order 1


# --------------------------------------------------------------------------------------------
# Upstream key names and shapes, written out from the upstream module definitions
# --------------------------------------------------------------------------------------------

def bn_shapes(prefix, n):
    return {f"{prefix}.{k}": (n,) for k in ("weight", "bias", "running_mean", "running_var")} \
        | {f"{prefix}.num_batches_tracked": ()}


def g_shapes(cfg):
    """G_NET's state dict: CA, INIT_STAGE_G (16*ngf channels at 4x4 for the 64-pixel stage),
    two NEXT_STAGE_G (memory: A, B, M_r, M_w, key, value, response_gate; attention:
    att.conv_context), their ResBlocks and upBlocks, three GET_IMAGE_G."""
    ngf, nef, ncf, n_up = cfg.gf_dim, cfg.text_dim, cfg.condition_dim, _n_up(cfg)
    c0 = ngf << n_up
    keys = {"ca_net.fc.weight": (4 * ncf, nef), "ca_net.fc.bias": (4 * ncf,),
            "h_net1.fc.0.weight": (c0 * 32, ncf + cfg.z_dim)} | bn_shapes("h_net1.fc.1", c0 * 32)
    for i in range(1, n_up + 1):
        cin, cout = c0 >> (i - 1), c0 >> i
        keys[f"h_net1.upsample{i}.1.weight"] = (2 * cout, cin, 3, 3)
        keys |= bn_shapes(f"h_net1.upsample{i}.2", 2 * cout)
    for s in (1, 2, 3):
        keys[f"img_net{s}.img.0.weight"] = (3, ngf, 3, 3)
    for s in (2, 3):
        p = f"h_net{s}"
        if cfg.attention == "attention":
            keys[f"{p}.att.conv_context.weight"] = (ngf, nef, 1, 1)
        else:
            keys |= {f"{p}.A.weight": (1, nef), f"{p}.B.weight": (1, ngf),
                     f"{p}.response_gate.0.weight": (1, 2 * ngf, 1, 1),
                     f"{p}.response_gate.0.bias": (1,)}
            for name, cin, cout in (("M_r", ngf, 2 * ngf), ("M_w", nef, 2 * ngf),
                                    ("key", 2 * ngf, ngf), ("value", 2 * ngf, ngf)):
                keys |= {f"{p}.{name}.0.weight": (cout, cin, 1), f"{p}.{name}.0.bias": (cout,)}
        for i in range(cfg.r_num):
            keys[f"{p}.residual.{i}.block.0.weight"] = (4 * ngf, 2 * ngf, 3, 3)
            keys[f"{p}.residual.{i}.block.3.weight"] = (2 * ngf, 2 * ngf, 3, 3)
            keys |= bn_shapes(f"{p}.residual.{i}.block.1", 4 * ngf)
            keys |= bn_shapes(f"{p}.residual.{i}.block.4", 2 * ngf)
        keys[f"{p}.upsample.1.weight"] = (2 * ngf, 2 * ngf, 3, 3)
        keys |= bn_shapes(f"{p}.upsample.2", 2 * ngf)
    return keys


def _n_up(cfg):
    return int(math.log2(cfg.base_size // 4))


def d_layers(size, ndf):
    """The trunk convolutions of D_NET64/128/256 as (key prefix, cin, cout, kernel, stride):
    encode_image_by_16times, then downBlocks to 4x4 and 3x3 Block3x3_leakRelu reductions."""
    layers = [("img_code_s16.0", 3, ndf, 4, 2)]
    for i in range(3):
        layers.append((f"img_code_s16.{2 + 2 * i}", ndf << i, ndf << (i + 1), 4, 2))
    extra = max(int(math.log2(size)) - 6, 0)
    for k in range(extra):
        layers.append((f"img_code_s{32 << k}.0", (8 * ndf) << k, (8 * ndf) << (k + 1), 4, 2))
    last = f"img_code_s{32 << (extra - 1)}" if extra else None
    for k in range(extra):
        layers.append((f"{last}_{k + 1}.0", (8 * ndf) << (extra - k),
                       (8 * ndf) << (extra - k - 1), 3, 1))
    return layers


def batch_norm_prefix(prefix):
    """AttnGAN's BN D: conv, BatchNorm, LeakyReLU, so the first trunk conv of a block is at
    .0 and its BN at .1; encode_image_by_16times has its convs at 0, 2, 5, 8, BNs at 3, 6, 9."""
    head, index = prefix.rsplit(".", 1)
    if head == "img_code_s16" and index != "0":
        index = str({"2": 2, "4": 5, "6": 8}[index])
    return f"{head}.{index}", f"{head}.{int(index) + 1}" if prefix != "img_code_s16.0" else None


def d_shapes(cfg, index):
    size, ndf, nef = cfg.image_sizes[index], cfg.df_dim, cfg.text_dim
    keys = {}

    def conv(prefix, cin, cout, k):
        if cfg.d_norm == "spectral":
            keys.update({f"{prefix}.module.weight_bar": (cout, cin, k, k),
                         f"{prefix}.module.bias": (cout,), f"{prefix}.module.weight_u": (cout,),
                         f"{prefix}.module.weight_v": (cin * k * k,)})
        else:
            conv_p, bn_p = batch_norm_prefix(prefix)
            keys[f"{conv_p}.weight"] = (cout, cin, k, k)
            if bn_p:
                keys.update(bn_shapes(bn_p, cout))
    for prefix, cin, cout, k, _ in d_layers(size, ndf):
        conv(prefix, cin, cout, k)
    spatial = 4 if size >= 64 else size // 16
    conv("COND_DNET.jointConv.0", 8 * ndf + nef, 8 * ndf, 3)
    heads = ["COND_DNET"] + (["UNCOND_DNET"] if cfg.d_heads[index] != "cond" else [])
    for head in heads:
        keys[f"{head}.outlogits.0.weight"] = (1, 8 * ndf, spatial, spatial)
        keys[f"{head}.outlogits.0.bias"] = (1,)
    return keys


def rnn_shapes(cfg):
    h = cfg.text_dim // 2
    keys = {"encoder.weight": (cfg.vocab_size, cfg.rnn_input)}
    for suffix in ("", "_reverse"):
        keys |= {f"rnn.weight_ih_l0{suffix}": (4 * h, cfg.rnn_input),
                 f"rnn.weight_hh_l0{suffix}": (4 * h, h), f"rnn.bias_ih_l0{suffix}": (4 * h,),
                 f"rnn.bias_hh_l0{suffix}": (4 * h,)}
    return keys


def itm_shapes(cfg):
    """GR-GAN's ITM_MODEL: CLIP (OpenAI names) under model.*, the MLP heads under MLP.*."""
    from test_models_encoders import openai_clip_shapes
    clip = openai_clip_shapes(cfg.clip_embed_dim, cfg.clip_resolution, cfg.clip_layers,
                              cfg.clip_width, cfg.clip_context, cfg.vocab_size,
                              cfg.clip_text_width, cfg.clip_text_layers)
    nef = cfg.text_dim
    keys = {f"model.{k}": v for k, v in clip.items()}
    keys |= {"MLP.emb_features.weight": (nef, 16 * cfg.clip_width, 1, 1),
             "MLP.emb_cnn_code.weight": (nef, cfg.clip_embed_dim), "MLP.emb_cnn_code.bias": (nef,),
             "MLP.dense_word.weight": (nef, cfg.clip_text_width), "MLP.dense_word.bias": (nef,),
             "MLP.dense_sent.weight": (nef, cfg.clip_embed_dim), "MLP.dense_sent.bias": (nef,),
             "MLP.LayerNorm.weight": (nef,), "MLP.LayerNorm.bias": (nef,)}
    return keys


def random_state(shapes, seed, scale=None):
    """Random float32 values; BatchNorm statistics and gains near their usual ranges, other
    weights ~ N(0, 1/fan_in) so activations stay O(1) through the stages."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for k, s in shapes.items():
        if k.endswith("num_batches_tracked"):
            out[k] = torch.tensor(7)
        elif not s:
            out[k] = torch.tensor(2.0)
        elif k.endswith("running_var"):
            out[k] = torch.rand(s, generator=gen) + 0.5
        elif k.endswith("running_mean") or k.endswith(".bias") or k.endswith("_bias"):
            out[k] = 0.1 * torch.randn(s, generator=gen)
        elif len(s) == 1 and not k.endswith(("weight_u", "weight_v", "A.weight", "B.weight")):
            out[k] = 1 + 0.1 * torch.randn(s, generator=gen)          # norm gains
        else:
            fan_in = math.prod(s[1:]) if len(s) > 1 else s[0]
            out[k] = torch.randn(s, generator=gen) * (scale or fan_in ** -0.5)
    return out


# --------------------------------------------------------------------------------------------
# The upstream forward passes, from a state dict
# --------------------------------------------------------------------------------------------

def glu(x):
    c = x.shape[1] // 2
    return x[:, :c] * torch.sigmoid(x[:, c:])


def bn(sd, prefix, x):
    return F.batch_norm(x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
                        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], False, 0.0, 1e-5)


def conv(sd, key, x, **kw):
    return F.conv2d(x, sd[key], **kw)


def up_block(sd, p, x):
    x = F.interpolate(x, scale_factor=2, mode="nearest")
    return glu(bn(sd, f"{p}.2", conv(sd, f"{p}.1.weight", x, padding=1)))


def res_block(sd, p, x):
    y = glu(bn(sd, f"{p}.block.1", conv(sd, f"{p}.block.0.weight", x, padding=1)))
    return x + bn(sd, f"{p}.block.4", conv(sd, f"{p}.block.3.weight", y, padding=1))


def conv1d_relu(sd, p, x):
    return F.relu(F.conv1d(x, sd[f"{p}.0.weight"], sd[f"{p}.0.bias"]))


def upstream_g(sd, cfg, z, sent, words, mask, eps):
    """G_NET.forward in eval mode: (images, attention maps, mu, logvar)."""
    ncf = cfg.condition_dim
    x = glu(F.linear(sent, sd["ca_net.fc.weight"], sd["ca_net.fc.bias"]))
    mu, logvar = x[:, :ncf], x[:, ncf:]
    c_code = eps * torch.exp(0.5 * logvar) + mu
    h = glu(bn(sd, "h_net1.fc.1", F.linear(torch.cat([c_code, z], 1), sd["h_net1.fc.0.weight"])))
    h = h.view(z.shape[0], cfg.gf_dim << _n_up(cfg), 4, 4)
    for i in range(1, _n_up(cfg) + 1):
        h = up_block(sd, f"h_net1.upsample{i}", h)
    images, maps = [torch.tanh(conv(sd, "img_net1.img.0.weight", h, padding=1))], []
    for s, spec in enumerate(cfg.schedule, start=2):
        p = f"h_net{s}"
        # GR-GAN's sentence stage: sent_emb repeated over the word slots, the same mask
        text = words if spec.level == "word" else \
            sent.repeat(words.shape[2], 1, 1).permute(1, 2, 0)
        if cfg.attention == "attention":
            proj = F.conv2d(text.unsqueeze(3), sd[f"{p}.att.conv_context.weight"]).squeeze(3)
            context, attn = memory_tiled(h, proj, proj, mask)
            x = torch.cat([h, context], 1)
        else:
            r_mean = F.avg_pool2d(h, h.shape[-1]).squeeze(3)                   # (B, C, 1)
            gate = torch.sigmoid(F.linear(text.transpose(1, 2), sd[f"{p}.A.weight"])
                                 .transpose(1, 2)
                                 + F.linear(r_mean.transpose(1, 2), sd[f"{p}.B.weight"])
                                 .repeat(1, 1, text.shape[2]))
            memory = conv1d_relu(sd, f"{p}.M_w", text) * gate + \
                conv1d_relu(sd, f"{p}.M_r", r_mean.repeat(1, 1, text.shape[2])) * (1 - gate)
            key, value = conv1d_relu(sd, f"{p}.key", memory), conv1d_relu(sd, f"{p}.value",
                                                                          memory)
            out, attn = memory_tiled(h, key, value, mask)
            g = torch.sigmoid(F.conv2d(torch.cat([h, out], 1), sd[f"{p}.response_gate.0.weight"],
                                       sd[f"{p}.response_gate.0.bias"]))
            r = h * (1 - g) + g * out
            x = torch.cat([r, r], 1)
        for i in range(cfg.r_num):
            x = res_block(sd, f"{p}.residual.{i}", x)
        h = up_block(sd, f"{p}.upsample", x)
        images.append(torch.tanh(conv(sd, f"img_net{s}.img.0.weight", h, padding=1)))
        maps.append(attn)
    return images, maps, mu, logvar


def l2(v):
    return v / (v.norm() + 1e-12)


def sn_conv(sd, uv, prefix, x, stride, padding):
    """code/spectral.py: one power iteration on every call, then the conv with W / sigma."""
    w = sd[f"{prefix}.module.weight_bar"]
    mat = w.reshape(w.shape[0], -1)
    u = uv.get(prefix, sd[f"{prefix}.module.weight_u"])
    v = l2(mat.t() @ u)
    u = l2(mat @ v)
    uv[prefix] = u
    return F.conv2d(x, w / (u @ (mat @ v)), sd[f"{prefix}.module.bias"], stride, padding)


def d_conv(sd, uv, cfg, prefix, x, stride, padding):
    if cfg.d_norm == "spectral":
        return F.leaky_relu(sn_conv(sd, uv, prefix, x, stride, padding), 0.2)
    conv_p, bn_p = batch_norm_prefix(prefix)
    x = F.conv2d(x, sd[f"{conv_p}.weight"], None, stride, padding)
    return F.leaky_relu(bn(sd, bn_p, x) if bn_p else x, 0.2)


def upstream_d(sd, uv, cfg, index, image, cond):
    """D_NET forward and its heads' sigmoid outputs: {'features', 'uncond', 'cond'}."""
    x = image
    for prefix, _, _, _, stride in d_layers(cfg.image_sizes[index], cfg.df_dim):
        x = d_conv(sd, uv, cfg, prefix, x, stride, 1)
    out = {"features": x}

    def logits(head, h):
        w = sd[f"{head}.outlogits.0.weight"]
        return torch.sigmoid(F.conv2d(h, w, sd[f"{head}.outlogits.0.bias"],
                                      stride=w.shape[-1])).view(-1)
    if "UNCOND_DNET.outlogits.0.weight" in sd:
        out["uncond"] = logits("UNCOND_DNET", x)
    if cond is not None:
        c = cond[:, :, None, None].repeat(1, 1, x.shape[2], x.shape[3])
        hc = torch.cat([x, c], 1)
        if cfg.d_norm == "spectral":
            hc = F.leaky_relu(sn_conv(sd, uv, "COND_DNET.jointConv.0", hc, 1, 1), 0.2)
        else:
            hc = F.conv2d(hc, sd["COND_DNET.jointConv.0.weight"], padding=1)
            hc = F.leaky_relu(bn(sd, "COND_DNET.jointConv.1", hc), 0.2)
        out["cond"] = logits("COND_DNET", hc)
    return out


def upstream_rnn(sd, cfg, captions, cap_lens):
    """RNN_ENCODER in eval mode: torch's LSTM over the packed, length-sorted batch."""
    lstm = torch.nn.LSTM(cfg.rnn_input, cfg.text_dim // 2, 1, batch_first=True,
                         bidirectional=True).double()
    lstm.load_state_dict({k[len("rnn."):]: v for k, v in sd.items() if k.startswith("rnn.")})
    emb = F.embedding(captions, sd["encoder.weight"])
    out, (h_n, _) = lstm(pack_padded_sequence(emb, cap_lens.tolist(), batch_first=True))
    words = pad_packed_sequence(out, batch_first=True)[0].transpose(1, 2)
    return words, h_n.transpose(0, 1).reshape(captions.shape[0], -1)


# --------------------------------------------------------------------------------------------
# Files as the upstream code writes them
# --------------------------------------------------------------------------------------------

def sizes(preset):
    """The model Config fields scaled_down changes (sizes only; the conventions are kept)."""
    cfg = get_config(preset)
    small = scaled_down(cfg)
    return {f.name: getattr(small, f.name) for f in dataclasses.fields(cfg)
            if f.name != "name" and getattr(small, f.name) != getattr(cfg, f.name)}


def upstream_files(preset, folder, seed=0, overrides=None):
    """Random weights of `preset` at test sizes, saved in the upstream layouts: DM-GAN CUB's
    G in the legacy format without num_batches_tracked, DM-GAN COCO's from DataParallel
    (module.*), GR-GAN's G and Ds in one training checkpoint with Adamax states. Returns
    (files for load_upstream, float64 state dicts, model Config overrides, expected Config)."""
    overrides = {**sizes(preset), **(overrides or {})}
    cfg = upstream_config(preset, **overrides)
    states = {"generator": random_state(g_shapes(cfg), seed),
              "discriminators": [random_state(d_shapes(cfg, i), seed + 1 + i)
                                 for i in range(3)]}
    text = itm_shapes(cfg) if cfg.text_encoder == "clip" else rnn_shapes(cfg)
    states["text_encoder"] = random_state(text, seed + 5, scale=0.2 if
                                          cfg.text_encoder == "rnn" else None)
    files = {}
    g = states["generator"]
    if preset == "dmgan-cub":
        g = {k: v for k, v in g.items() if not k.endswith("num_batches_tracked")}
        torch.save(g, folder / "netG_epoch_800.pth", _use_new_zipfile_serialization=False)
        files["generator"] = folder / "netG_epoch_800.pth"
    elif preset == "grgan-coco":
        adamax = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.zeros(2),
                                "exp_inf": torch.zeros(2)}},
                  "param_groups": [{"lr": 2e-5, "betas": (0.5, 0.999), "eps": 1e-8,
                                    "weight_decay": 0, "params": [0]}]}
        torch.save({"epoch": 300, "netG": g, "optimG": adamax, "netD": states["discriminators"],
                    "optimD": [adamax] * 3}, folder / "checkpoint_0300.pth")
        files["generator"] = files["discriminators"] = folder / "checkpoint_0300.pth"
    else:
        if preset == "dmgan-coco":
            g = {f"module.{k}": v for k, v in g.items()}
        torch.save(g, folder / "netG.pth")
        files["generator"] = folder / "netG.pth"
    if "discriminators" not in files:
        files["discriminators"] = []
        for i, d in enumerate(states["discriminators"]):
            torch.save(d, folder / f"netD{i}.pth")
            files["discriminators"].append(folder / f"netD{i}.pth")
    name = "ITM_model149.pth" if cfg.text_encoder == "clip" else "text_encoder200.pth"
    torch.save(states["text_encoder"], folder / name, _use_new_zipfile_serialization=False)
    files["text_encoder"] = folder / name
    as64 = {k: ([{n: t.double() for n, t in d.items()} for d in v] if isinstance(v, list) else
                {n: t.double() for n, t in v.items()}) for k, v in states.items()}
    return files, as64, overrides, cfg


def caption_batch(cfg, batch=3, seed=0):
    """Word ids sorted by length (upstream's prepare_data order), one caption of one word;
    CLIP tokens [start, ids, end, 0...] for the ITM."""
    gen = torch.Generator().manual_seed(seed)
    lens = torch.tensor([cfg.words_num, 2, 1][:batch])
    if cfg.text_encoder == "clip":
        tokens = torch.zeros(batch, cfg.clip_context, dtype=torch.long)
        for i, n in enumerate(lens.tolist()):
            tokens[i, 0] = cfg.vocab_size - 2
            tokens[i, 1:n + 1] = torch.randint(1, cfg.vocab_size - 2, (n,), generator=gen)
            tokens[i, n + 1] = cfg.vocab_size - 1
        return tokens, lens
    caps = torch.randint(1, cfg.vocab_size, (batch, cfg.words_num), generator=gen)
    caps[torch.arange(cfg.words_num)[None] >= lens[:, None]] = 0
    return caps, lens


# --------------------------------------------------------------------------------------------
# Load + forward of every preset
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset", UPSTREAM_PRESETS)
def test_load_and_forward_equal_upstream(preset, tmp_path):
    files, sd, overrides, cfg = upstream_files(preset, tmp_path)
    models = load_upstream(preset, **files, **overrides)
    assert models.config == cfg and cfg.mask_compat and not cfg.sentence_shortcut
    models.to(torch.float64)
    for net in (models.generator, models.discriminators, models.text_encoder,
                models.image_encoder):
        net.eval()
    captions, lens = caption_batch(cfg)
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3, cfg.z_dim, generator=gen, dtype=torch.float64)
    eps = torch.randn(3, cfg.condition_dim, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        words, sent, mask, _ = text_features(models, captions, lens)
        if cfg.text_encoder == "rnn":
            exp_words, exp_sent = upstream_rnn(sd["text_encoder"], cfg, captions, lens)
            torch.testing.assert_close(words, exp_words, **EXACT)
            torch.testing.assert_close(sent, exp_sent, **EXACT)
            assert torch.equal(mask, captions == 0)
        else:
            # GR-GAN: word slots are tokens 1..T, the mask is read from tokens 0..T-1
            tokens_out, clip_sent = models.text_encoder.model.encode_text_tokens(captions)
            mlp = {k[4:]: v for k, v in sd["text_encoder"].items() if k.startswith("MLP.")}
            exp_words = F.layer_norm(F.linear(tokens_out, mlp["dense_word.weight"],
                                              mlp["dense_word.bias"]), (cfg.text_dim,),
                                     mlp["LayerNorm.weight"], mlp["LayerNorm.bias"], 1e-12)
            torch.testing.assert_close(words, exp_words.transpose(1, 2)[:, :, 1:cfg.words_num + 1],
                                       **EXACT)
            torch.testing.assert_close(sent, F.linear(clip_sent, mlp["dense_sent.weight"],
                                                      mlp["dense_sent.bias"]), **EXACT)
            assert torch.equal(mask, (captions == 0)[:, :cfg.words_num])
        images, maps, mu, logvar = models.generator(z, sent, words, mask, ca_noise=eps)
        exp = upstream_g(sd["generator"], cfg, z, sent, words, mask, eps)
    # images, then the maps G returns without being asked, in upstream shapes (B, T, H, W)
    for got, want in zip((images, maps, [mu], [logvar]), exp[:2] + ([exp[2]], [exp[3]])):
        assert [tuple(t.shape) for t in got] == [tuple(t.shape) for t in want]
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, **EXACT)
    assert [tuple(m.shape) for m in maps] == [(3, words.shape[2], 16, 16),
                                              (3, words.shape[2], 32, 32)]
    assert all(im.std() > 0.05 for im in images)        # not saturated, not constant
    # the Ds in eval mode, called twice: spectral norm's u moves on every call as upstream's
    conds = [sent if c == "sentence" else words.mean(dim=2) for c in cfg.d_conditions]
    uv = [{} for _ in range(3)]
    with torch.no_grad():
        for _ in range(2):
            for i, net in enumerate(models.discriminators):
                feat = net(images[i])
                cond = conds[i] if cfg.d_heads[i] != "uncond" else None
                want = upstream_d(sd["discriminators"][i], uv[i], cfg, i, images[i], cond)
                torch.testing.assert_close(feat, want["features"], **EXACT)
                if "uncond" in want:
                    torch.testing.assert_close(net.UNCOND_DNET(feat), want["uncond"], **EXACT)
                if cond is not None:
                    torch.testing.assert_close(net.COND_DNET(feat, cond), want["cond"], **EXACT)
    if cfg.d_norm == "spectral":
        u = models.discriminators[1].img_code_s16[0].module.weight_u
        torch.testing.assert_close(u, uv[1]["img_code_s16.0"], **EXACT)
        assert not torch.allclose(u, sd["discriminators"][1]["img_code_s16.0.module.weight_u"])


def test_the_conventions_are_what_changes_the_images(tmp_path):
    """The same files built without the conventions (build_models, correct mask): other
    images and maps; with them (the GR-GAN sentence stage included) upstream's."""
    files, sd, overrides, cfg = upstream_files("grgan-coco", tmp_path)
    loaded = load_upstream("grgan-coco", **files, **overrides).to(torch.float64)
    plain = build_models(get_config("grgan-coco", **overrides)).to(torch.float64)
    plain.generator.load_state_dict(loaded.generator.state_dict())
    plain.text_encoder.load_state_dict(loaded.text_encoder.state_dict())
    captions, lens = caption_batch(cfg)
    z = torch.randn(3, cfg.z_dim, dtype=torch.float64)
    eps = torch.randn(3, cfg.condition_dim, dtype=torch.float64)
    out = {}
    with torch.no_grad():
        for name, models in (("loaded", loaded), ("plain", plain)):
            models.generator.eval()
            models.text_encoder.eval()
            words, sent, mask, _ = text_features(models, captions, lens)
            out[name] = models.generator(z, sent, words, mask, ca_noise=eps)
    assert out["plain"][1] == []                                 # no maps unless asked
    assert not torch.allclose(out["plain"][0][-1], out["loaded"][0][-1], atol=1e-6)


def test_spectral_norm_and_damsm_trunk_conventions(tmp_path):
    cfg_sizes = sizes("dmgan-cub")
    models = load_upstream("dmgan-cub", **cfg_sizes)
    plain = build_models(get_config("dmgan-cub", **cfg_sizes))
    sn = models.discriminators[0].img_code_s16[0]
    assert sn.power_iteration_in_eval and not plain.discriminators[0].img_code_s16[0] \
        .power_iteration_in_eval
    for built, follows in ((models, True), (plain, False)):
        enc = built.image_encoder
        enc.train()
        assert enc.Mixed_6e.branch1x1.bn.training is follows
        assert enc.emb_features.training
        assert not any(p.requires_grad for n, p in enc.named_parameters()
                       if not n.startswith("emb_"))
        before = enc.Conv2d_1a_3x3.bn.running_mean.clone()
        enc(torch.rand(2, 3, 32, 32) * 2 - 1)
        moved = not torch.equal(before, enc.Conv2d_1a_3x3.bn.running_mean)
        assert moved is follows          # upstream DAMSM pretraining updates the trunk's BN
        enc.eval()
        assert not enc.Mixed_6e.branch1x1.bn.training


# --------------------------------------------------------------------------------------------
# Real sizes: key and shape parity
# --------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_real_size_dmgan_cub_files_load(tmp_path):
    cfg = get_config("dmgan-cub")
    assert len(g_shapes(cfg)) == 119                          # reference §1.9
    g = {k: torch.full(s, 0.5) if s else torch.tensor(3) for k, s in g_shapes(cfg).items()}
    g["h_net2.M_w.0.weight"] = torch.arange(128 * 256.0).view(128, 256, 1)
    torch.save(g, tmp_path / "netG_epoch_800.pth", _use_new_zipfile_serialization=False)
    ds = []
    for i in range(3):
        ds.append(tmp_path / f"netD{i}.pth")
        torch.save({k: torch.ones(s) for k, s in d_shapes(cfg, i).items()}, ds[-1])
    torch.save({k: torch.zeros(s) for k, s in rnn_shapes(cfg).items()},
               tmp_path / "text_encoder200.pth")
    models = load_upstream("dmgan-cub", generator=tmp_path / "netG_epoch_800.pth",
                           text_encoder=tmp_path / "text_encoder200.pth", discriminators=ds)
    assert models.config.vocab_size == 5450 and models.config.image_sizes == (64, 128, 256)
    assert torch.equal(models.generator.h_net2.M_w[0].weight, g["h_net2.M_w.0.weight"])
    assert models.discriminators[2].img_code_s64_2[0].module.weight_v.shape == (512 * 9,)


def test_real_size_image_encoder_keys_equal_torchvision_inception(tmp_path):
    """Upstream CNN_ENCODER is made of torchvision inception_v3's modules: its keys are those
    of torchvision's Inception3 without AuxLogits and fc, plus the two emb layers."""
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):
        net = tv.models.inception_v3(weights=None, aux_logits=True, init_weights=False)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()
              if not k.startswith(("AuxLogits.", "fc."))}
    shapes |= {"emb_features.weight": (256, 768, 1, 1), "emb_cnn_code.weight": (256, 2048),
               "emb_cnn_code.bias": (256,)}
    state = random_state(shapes, 3)
    torch.save(state, tmp_path / "image_encoder200.pth", _use_new_zipfile_serialization=False)
    models = load_upstream("dmgan-cub", image_encoder=tmp_path / "image_encoder200.pth")
    own = models.image_encoder.state_dict()
    assert own.keys() == state.keys()
    assert all(torch.equal(own[k], state[k]) for k in state)


@pytest.mark.slow
def test_real_size_dmgan_cub_forward_equals_upstream():
    cfg = get_config("dmgan-cub", mask_compat=True)
    state = random_state(g_shapes(cfg), 11)
    sd = {k: v.double() for k, v in state.items()}
    models = load_upstream("dmgan-cub", generator=state)
    G = models.generator.double().eval()
    gen = torch.Generator().manual_seed(2)
    z = torch.randn(2, 100, generator=gen, dtype=torch.float64)
    sent = torch.randn(2, 256, generator=gen, dtype=torch.float64)
    words = torch.randn(2, 256, 18, generator=gen, dtype=torch.float64)
    mask = torch.arange(18)[None] >= torch.tensor([18, 5])[:, None]
    eps = torch.randn(2, 100, generator=gen, dtype=torch.float64)
    with torch.no_grad():
        images, maps, _, _ = G(z, sent, words, mask, ca_noise=eps)
        exp_images, exp_maps, _, _ = upstream_g(sd, cfg, z, sent, words, mask, eps)
    for a, b in zip(images + maps, exp_images + exp_maps, strict=True):
        torch.testing.assert_close(a, b, **EXACT)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------

class NotWeights:
    pass


def test_unusable_files_are_named(tmp_path):
    with pytest.raises(WeightsError, match=r"generator file .*nope.pth does not exist"):
        load_upstream("dmgan-cub", generator=tmp_path / "nope.pth")
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(WeightsError, match=r"text encoder file .*list.pth holds list, not a "
                                           r"state dict"):
        load_upstream("dmgan-cub", text_encoder=tmp_path / "list.pth")
    torch.save({"a": torch.zeros(1), "b": 3}, tmp_path / "mixed.pth")
    with pytest.raises(WeightsError, match=r"not a state dict: entries \['b'\]"):
        load_upstream("dmgan-cub", generator=tmp_path / "mixed.pth")
    torch.save({"net": NotWeights()}, tmp_path / "object.pth")
    with pytest.raises(WeightsError, match=r"holds Python objects \(test_upstream_parity"
                                           r".NotWeights\) besides tensors.*refused, not run"):
        load_upstream("dmgan-cub", generator=tmp_path / "object.pth")
    (tmp_path / "cut.pth").write_bytes((tmp_path / "list.pth").read_bytes()[:40])
    with pytest.raises(WeightsError, match="cut.pth is not a PyTorch weight file"):
        load_upstream("dmgan-cub", generator=tmp_path / "cut.pth")
    with pytest.raises(ValueError, match="published weights exist for the presets"):
        load_upstream("small")


def test_weights_of_another_preset_are_named(tmp_path):
    coco = {k: torch.zeros(s) for k, s in g_shapes(get_config("dmgan-coco")).items()}
    with pytest.raises(WeightsError) as err:
        load_upstream("dmgan-cub", generator=coco)
    text = str(err.value)
    assert "do not fit preset 'dmgan-cub'" in text and "24 unexpected" in text
    assert "h_net2.residual.2.block.0.weight" in text
    assert "looks like the generator of preset 'dmgan-coco'" in text
    grg = {k: torch.zeros(s) for k, s in g_shapes(get_config("grgan-coco")).items()}
    with pytest.raises(WeightsError, match=r"ca_net.fc.weight file \(400, 512\) vs model "
                                           r"\(400, 256\).*'grgan-coco'"):
        load_upstream("dmgan-cub", generator=grg)
    with pytest.raises(WeightsError, match="matches no upstream preset; closest"):
        load_upstream("dmgan-cub", generator={"ca_net.fc.weight": torch.zeros(400, 256)})
    with pytest.raises(WeightsError, match="2 discriminator files for the 3 images"):
        load_upstream("dmgan-cub", discriminators=[coco, coco])


def test_files_are_recognised_by_their_keys(tmp_path):
    files, _, _, cfg = upstream_files("dmgan-coco", tmp_path)
    paths = [files["text_encoder"], *reversed(files["discriminators"]), files["generator"]]
    found = sort_files(paths, cfg.image_sizes)
    assert sorted(found) == ["discriminators", "generator", "text_encoder"]
    # smallest image first: the logit conv covers the S/16 x S/16 trunk output
    assert [d["COND_DNET.outlogits.0.weight"].shape[-1] for d in found["discriminators"]] == \
        [1, 2, 4]
    real = {s: {k: torch.zeros(v) for k, v in d_shapes(get_config("dmgan-cub"), i).items()}
            for i, s in enumerate((64, 128, 256))}
    assert [identify(d) for d in real.values()] == [[("discriminators", s)] for s in real]
    assert identify({"module.ca_net.fc.weight": torch.zeros(1)}) == [("generator", None)]
    with pytest.raises(WeightsError, match="both hold the generator"):
        sort_files([files["generator"], files["generator"]], cfg.image_sizes)
    with pytest.raises(WeightsError, match=r"for images of \[16, 32\] pixels; the model's "
                                           r"are \[16, 32, 64\]"):
        sort_files(files["discriminators"][:2], cfg.image_sizes)
    torch.save({"x": torch.zeros(1)}, tmp_path / "x.pth")
    with pytest.raises(WeightsError, match="x.pth holds none of"):
        sort_files([tmp_path / "x.pth"], cfg.image_sizes)
