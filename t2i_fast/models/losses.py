"""GAN, KL and matching losses of DM-GAN / AttnGAN (reference §1.7) and GR-GAN (§3.3, §3.4).

The heads return logits and the adversarial terms use BCE with logits; upstream applies a
sigmoid and BCELoss, which agrees except where BCELoss clamps log at -100 (saturation). The
matching terms call `t2i_fast.ops.damsm_word_loss` / `damsm_sentence_loss`.

Which head each D uses ('uncond', 'cond' or 'both'), which condition it gets ('sentence' or
'word_mean') and the matching terms (image index, 'sentence' | 'word', weight) come from the
Config; the presets hold the upstream choices:
    DM-GAN / AttnGAN: every D 'both' with the sentence; LAMBDA * (words + sentence) on the last
        image through the DAMSM image encoder.
    GR-GAN: D1 'uncond', D2 'cond' on the sentence, D3 'cond' on the mean word feature;
        1 * sentence on image 2, 1 * words and 4 * sentence on image 3, through the ITM.
"""
import torch
import torch.nn.functional as F

from t2i_fast import ops


def KL_loss(mu, logvar):  # noqa: N802 (upstream name)
    """-1/2 mean(1 + logvar - mu^2 - exp(logvar)): a mean over all elements, as upstream."""
    return -0.5 * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())


def _bce(logits, real):
    target = torch.ones_like(logits) if real else torch.zeros_like(logits)
    return F.binary_cross_entropy_with_logits(logits, target)


ADVERSARIAL_LOSSES = ("bce", "hinge")


def _check_adversarial(kind):
    if kind not in ADVERSARIAL_LOSSES:
        raise ValueError(f"adversarial loss must be one of {ADVERSARIAL_LOSSES}, got {kind!r}")


def adversarial_term(logits, real, kind="bce"):
    """The D-side term that pushes `logits` towards real (True) or fake: BCE with logits
    (upstream) or the hinge max(0, 1 -+ logits) (DF-GAN)."""
    _check_adversarial(kind)
    if kind == "bce":
        return _bce(logits, real)
    return F.relu(1 - logits).mean() if real else F.relu(1 + logits).mean()


def matching_aware_penalty(logits, images, cond, power=6.0):
    """DF-GAN's matching-aware gradient penalty: mean over the batch of
    ||(d logits / d image, d logits / d condition)||^power at real, matching pairs. `images`
    and `cond` must require grad and be the inputs `logits` was computed from; the result is
    differentiable (double backward)."""
    inputs = (images, cond) if cond is not None else (images,)
    grads = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    norm = torch.cat([g.reshape(g.shape[0], -1) for g in grads], dim=1).norm(dim=1)
    return norm.pow(power).mean()


def d_condition(kind, sent_emb, words, mask, mask_compat=False):
    """The condition (B, D) of a conditional head.

    'word_mean': GR-GAN's D3 condition, the mean of the word slots (B, D, T). Upstream averages
    every slot, padding included (mask_compat=True); by default padded slots are left out.
    """
    if kind == "sentence":
        return sent_emb
    if mask is None or mask_compat:
        return words.mean(dim=2)
    keep = (~mask).to(words.dtype)[:, None, :]
    return (words * keep).sum(dim=2) / keep.sum(dim=2).clamp(min=1)


def discriminator_loss(netD, real_imgs, fake_imgs, cond, heads="both", loss="bce",
                       gp_weight=0.0, gp_power=6.0):
    """One D's loss (reference §1.7). fake_imgs are detached here.

    heads 'both': 1/2 [U(x), C(x,s) real] + 1/3 [U(x^), C(x^,s), C(x_{:-1}, s_{1:})] fake;
    'cond': C real + 1/2 (C fake + C mismatched); 'uncond': 1/2 (U real + U fake).
    loss: 'bce' (upstream) or 'hinge' for every term. gp_weight > 0 adds the matching-aware
    gradient penalty (`matching_aware_penalty`) of the head that judges the real pair: the
    conditional one (gradients to image and condition), else the unconditional one (image).
    Returns (loss, parts dict of floats-as-tensors).
    """
    if heads not in ("uncond", "cond", "both"):
        raise ValueError(f"discriminator_loss: heads must be 'uncond', 'cond' or 'both', "
                         f"got {heads!r}")
    penalised = gp_weight > 0
    if penalised:
        real_imgs = real_imgs.detach().requires_grad_(True)
        cond = cond.detach().requires_grad_(True) if heads != "uncond" else None
    real_feat = netD(real_imgs)
    fake_feat = netD(fake_imgs.detach())
    parts, logits = {}, {}
    if heads in ("uncond", "both"):
        logits["uncond_real"] = netD.UNCOND_DNET.logits(real_feat)
        logits["uncond_fake"] = netD.UNCOND_DNET.logits(fake_feat)
    if heads in ("cond", "both"):
        logits["cond_real"] = netD.COND_DNET.logits(real_feat, cond)
        logits["cond_fake"] = netD.COND_DNET.logits(fake_feat, cond)
        if real_feat.shape[0] > 1:   # real image i paired with caption i + 1
            logits["cond_wrong"] = netD.COND_DNET.logits(real_feat[:-1], cond[1:])
    for name, value in logits.items():
        parts[name] = adversarial_term(value, name.endswith("_real"), loss)
    if heads != "uncond" and "cond_wrong" not in parts:
        parts["cond_wrong"] = torch.zeros_like(parts["cond_fake"])
    if heads == "both":
        total = (parts["uncond_real"] + parts["cond_real"]) / 2 + \
            (parts["uncond_fake"] + parts["cond_fake"] + parts["cond_wrong"]) / 3
    elif heads == "cond":
        total = parts["cond_real"] + (parts["cond_fake"] + parts["cond_wrong"]) / 2
    else:
        total = (parts["uncond_real"] + parts["uncond_fake"]) / 2
    if penalised:
        judged = logits["cond_real"] if heads != "uncond" else logits["uncond_real"]
        parts["ma_gp"] = matching_aware_penalty(judged, real_imgs, cond, gp_power)
        total = total + gp_weight * parts["ma_gp"]
    return total, parts


def generator_adversarial(netD, fake_imgs, cond, heads="both", loss="bce"):
    """The G-side adversarial terms of the heads in use: -log D(x^) (bce: real labels on the
    fakes) or -logit (hinge)."""
    _check_adversarial(loss)
    feat = netD(fake_imgs)
    logits = []
    if heads in ("uncond", "both"):
        logits.append(netD.UNCOND_DNET.logits(feat))
    if heads in ("cond", "both"):
        logits.append(netD.COND_DNET.logits(feat, cond))
    total = fake_imgs.new_zeros(())
    for value in logits:
        total = total + (_bce(value, True) if loss == "bce" else -value.mean())
    return total


def matching_terms(regions, code, words, sent_emb, cap_lens, kind, class_ids=None, *,
                   gamma1=4.0, gamma2=5.0, gamma3=10.0, impl=None):
    """(image->text, text->image) DAMSM/ITM losses of one kind ('word' or 'sentence').

    regions (B, D, h, w) and code (B, D) from the image encoder; words (B, D, T),
    sent_emb (B, D), cap_lens (B,) in 1..T from the text encoder.
    """
    if kind == "word":
        return ops.damsm_word_loss(regions, words, cap_lens, class_ids, gamma1=gamma1,
                                   gamma2=gamma2, gamma3=gamma3, impl=impl)
    if kind == "sentence":
        return ops.damsm_sentence_loss(code, sent_emb, class_ids, gamma3=gamma3)
    raise ValueError(f"matching_terms: kind must be 'word' or 'sentence', got {kind!r}")


def matching_loss(image_encoder, images, words, sent_emb, cap_lens, class_ids=None, *,
                  gamma1=4.0, gamma2=5.0, gamma3=10.0, impl=None):
    """w0 + w1 + s0 + s1: the DAMSM / ITM pretraining loss. Returns (loss, parts)."""
    regions, code = image_encoder.encode_image(images)
    w0, w1 = matching_terms(regions, code, words, sent_emb, cap_lens, "word", class_ids,
                            gamma1=gamma1, gamma2=gamma2, gamma3=gamma3, impl=impl)
    s0, s1 = matching_terms(regions, code, words, sent_emb, cap_lens, "sentence", class_ids,
                            gamma3=gamma3)
    return w0 + w1 + s0 + s1, {"w_loss0": w0, "w_loss1": w1, "s_loss0": s0, "s_loss1": s1}


def matching_ramp(step, delay, warmup):
    """The factor on G's matching terms at GAN step `step` (1, 2, ...): 0 for the first `delay`
    steps, then rising linearly to 1 over `warmup` steps. Early on G's images are far from any
    real image, and a frozen encoder's gradient paints them with whatever texture it reads as
    the caption; the delay lets the discriminators first set the look of real images."""
    active = step - delay
    if active <= 0:
        return 0.0
    if warmup <= 0:
        return 1.0
    return min(1.0, active / warmup)


def jittered(images, amount):
    """`images` (B, C, S, S) shifted by a random sub-pixel translation per sample, uniform in
    [-amount, amount] of the side on each axis (bilinear, border pixels repeated); unchanged
    when amount is 0. G's matching terms read its images through this, so a pattern that a
    frozen encoder reads as the caption only at one exact pixel alignment stops paying."""
    if amount <= 0:
        return images
    batch = images.shape[0]
    theta = torch.zeros(batch, 2, 3, device=images.device, dtype=images.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1
    theta[:, :, 2] = (torch.rand(batch, 2, device=images.device, dtype=images.dtype) * 2 - 1) \
        * (2 * amount)                     # grid coordinates span 2 per side
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def generator_loss(cfg, netsD, image_encoder, fake_imgs, sent_emb, words, mask, cap_lens, mu,
                   logvar, class_ids=None, matching_scale=1.0):
    """The full G loss for `cfg`: adversarial terms of every D, the weighted matching terms
    (times `matching_scale`, see `matching_ramp`), and KL. fake_imgs: G's images (one per D);
    words (B, D, T), mask (B, T) and cap_lens (B,) as fed to G; image_encoder: an ITM or a
    CNN_ENCODER (frozen by the caller as needed). Returns (loss, parts)."""
    if len(netsD) != len(fake_imgs):
        raise ValueError(f"generator_loss: {len(netsD)} discriminators for {len(fake_imgs)} "
                         f"images")
    parts = {}
    total = fake_imgs[-1].new_zeros(())
    for i, (netD, fake) in enumerate(zip(netsD, fake_imgs)):
        cond = d_condition(cfg.d_conditions[i], sent_emb, words, mask, cfg.mask_compat)
        parts[f"g_adv{i}"] = generator_adversarial(netD, fake, cond, cfg.d_heads[i],
                                                   cfg.adv_loss)
        total = total + parts[f"g_adv{i}"]
    encoded = {}
    for term in (cfg.matching if matching_scale > 0 else ()):
        index = term.image % len(fake_imgs)
        if index not in encoded:       # one encoder pass per image, shared by its terms
            encoded[index] = image_encoder.encode_image(jittered(fake_imgs[index],
                                                                 cfg.matching_jitter))
        regions, code = encoded[index]
        l0, l1 = matching_terms(regions, code, words, sent_emb, cap_lens, term.kind, class_ids,
                                gamma1=cfg.gamma1, gamma2=cfg.gamma2, gamma3=cfg.gamma3,
                                impl=cfg.impl)
        parts[f"{term.kind[0]}_loss{index}"] = l0 + l1
        total = total + matching_scale * term.weight * (l0 + l1)
    parts["kl"] = KL_loss(mu, logvar)
    total = total + cfg.kl_weight * parts["kl"]
    return total, parts
