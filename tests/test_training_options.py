"""Training options of the small preset's recipe: phase-1 batch size, the matching-term ramp
and jitter, hinge loss, matching-aware gradient penalty. Each default keeps the upstream
behaviour."""
import pytest
import torch
import torch.nn.functional as F

from t2i_fast.errors import ConfigError
from t2i_fast.models import (D_NET64, adversarial_term, build_discriminators, discriminator_loss,
                             generator_adversarial, get_config, matching_aware_penalty,
                             matching_ramp)
from t2i_fast.models.losses import jittered
from t2i_fast.train import Run, train_config


def spy(run, method, record):
    """Wrap run.<method> so that record(args, result) sees each call."""
    original = getattr(run, method)

    def wrapped(*args):
        out = original(*args)
        record(args, out)
        return out
    setattr(run, method, wrapped)


def test_phase_one_uses_its_own_batch_size(tmp_path):
    cfg = train_config("tiny", itm_steps=3, steps=0, dataset_size=32, batch_size=4,
                       itm_batch_size=8, threads=1, out=str(tmp_path / "run"))
    run = Run(cfg, cfg.out, quiet=True)
    seen = []
    spy(run, "prepare", lambda args, _: seen.append(len(args[0]["image"])))
    run.train()
    assert seen == [8, 8, 8]
    assert len(next(run.batches(0, 0, run.batch))["image"]) == 4     # the GAN keeps its batch
    with pytest.raises(ConfigError, match="itm_batch_size"):
        train_config("tiny", itm_batch_size=1)


def test_matching_ramp():
    assert [matching_ramp(s, 0, 0) for s in (1, 2)] == [1.0, 1.0]             # upstream
    assert [matching_ramp(s, 2, 0) for s in (1, 2, 3)] == [0.0, 0.0, 1.0]
    assert [matching_ramp(s, 2, 4) for s in (2, 3, 4, 6, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    with pytest.raises(ConfigError, match="matching_delay"):
        train_config("tiny", matching_delay=-1)


def test_training_applies_the_ramp(tmp_path):
    """G's logged loss has no matching terms during the delay and all of them after it."""
    cfg = train_config("tiny", itm_steps=0, steps=4, log_every=1, matching_delay=2,
                       dataset_size=16, threads=1, out=str(tmp_path / "run"))
    run = Run(cfg, cfg.out, quiet=True)
    parts = []
    spy(run, "gan_step", lambda _, logged: parts.append(set(logged)))
    run.train()
    matching = {"s_loss1", "w_loss2", "s_loss2"}
    assert [bool(matching & p) for p in parts] == [False, False, True, True]
    assert matching <= parts[-1]


def test_hinge_terms():
    logits = torch.tensor([-2.0, -0.5, 0.5, 2.0])
    torch.testing.assert_close(adversarial_term(logits, True, "hinge"),
                               torch.tensor([3.0, 1.5, 0.5, 0.0]).mean())
    torch.testing.assert_close(adversarial_term(logits, False, "hinge"),
                               torch.tensor([0.0, 0.5, 1.5, 3.0]).mean())
    torch.testing.assert_close(adversarial_term(logits, True, "bce"),
                               F.binary_cross_entropy_with_logits(logits, torch.ones(4)))
    with pytest.raises(ValueError, match="hinge"):
        adversarial_term(logits, True, "wgan")
    with pytest.raises(ValueError, match="adv_loss"):
        get_config("small", adv_loss="wgan")


def _net():
    torch.manual_seed(0)
    net = D_NET64(4, 8)
    return net.eval()                              # fixed u, v: one weight per call


def test_hinge_discriminator_and_generator_losses():
    net = _net()
    real, fake, cond = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64), torch.randn(3, 8)
    loss, p = discriminator_loss(net, real, fake, cond, "both", loss="hinge")
    rf, ff = net(real), net(fake)
    u, c = net.UNCOND_DNET.logits, net.COND_DNET.logits
    expected = (F.relu(1 - u(rf)).mean() + F.relu(1 - c(rf, cond)).mean()) / 2 + \
        (F.relu(1 + u(ff)).mean() + F.relu(1 + c(ff, cond)).mean()
         + F.relu(1 + c(rf[:2], cond[1:])).mean()) / 3
    torch.testing.assert_close(loss, expected)
    assert "ma_gp" not in p
    with pytest.raises(ValueError, match="adversarial loss"):
        generator_adversarial(net, fake, cond, "both", loss="wgan")
    g = generator_adversarial(net, fake, cond, "both", loss="hinge")
    torch.testing.assert_close(g, -u(ff).mean() - c(ff, cond).mean())


def test_matching_aware_penalty_is_the_gradient_norm_power():
    # logits = <w, x> + <v, s> per sample: the gradient is (w, v) for every sample.
    w, v = torch.randn(3, 4, 4), torch.randn(5)
    images = torch.randn(2, 3, 4, 4, requires_grad=True)
    cond = torch.randn(2, 5, requires_grad=True)
    logits = (images * w).sum(dim=(1, 2, 3)) + (cond * v).sum(dim=1) ** 2 / 2
    # second term: d/ds (s.v)^2 / 2 = (s.v) v, different per sample
    got = matching_aware_penalty(logits, images, cond, power=6.0)
    sv = (cond * v).sum(dim=1).detach()
    norms = (w.pow(2).sum() + (sv[:, None] * v).pow(2).sum(dim=1)).sqrt()
    torch.testing.assert_close(got, norms.pow(6).mean())
    got.backward()                                  # differentiable: reaches the inputs
    assert cond.grad is not None and torch.isfinite(cond.grad).all()


def test_discriminator_loss_adds_the_penalty_and_trains_through_it():
    net = _net()
    real, fake, cond = torch.rand(3, 3, 64, 64), torch.rand(3, 3, 64, 64), torch.randn(3, 8)
    plain, _ = discriminator_loss(net, real, fake, cond, "cond", loss="hinge")
    loss, p = discriminator_loss(net, real, fake, cond, "cond", loss="hinge", gp_weight=2.0)
    x, s = real.clone().requires_grad_(True), cond.clone().requires_grad_(True)
    gx, gs = torch.autograd.grad(net.COND_DNET.logits(net(x), s).sum(), (x, s))
    norm = torch.cat([gx.flatten(1), gs.flatten(1)], dim=1).norm(dim=1)
    torch.testing.assert_close(p["ma_gp"], norm.pow(6).mean())
    torch.testing.assert_close(loss, plain + 2.0 * p["ma_gp"])
    grads = torch.autograd.grad(p["ma_gp"], [q for q in net.parameters() if q.requires_grad],
                                allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)   # D learns from it
    _, p_uncond = discriminator_loss(net, real, fake, cond, "uncond", gp_weight=1.0)
    x = real.clone().requires_grad_(True)
    gx, = torch.autograd.grad(net.UNCOND_DNET.logits(net(x)).sum(), x)
    torch.testing.assert_close(p_uncond["ma_gp"], gx.flatten(1).norm(dim=1).pow(6).mean())


def test_jitter_shifts_each_image_by_its_draw(monkeypatch):
    """amount 1/8 of an 8-pixel side with the largest draw moves every image by exactly one
    pixel on each axis, repeating the border; no jitter returns the images themselves."""
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert jittered(x, 0.0) is x
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.ones(*shape, **kw))
    y = jittered(x, 1 / 8)
    expected = torch.cat([x[:, :, 1:], x[:, :, -1:]], dim=2)
    expected = torch.cat([expected[..., 1:], expected[..., -1:]], dim=3)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    y.sum().backward()                                   # G's gradient goes through it
    assert x.grad[:, :, 0, 0].abs().max() == 0 and x.grad[:, :, -1, -1].min() == 4
    with pytest.raises(ConfigError, match="matching_jitter"):
        get_config("small", matching_jitter=0.5)


def test_jitter_draws_a_shift_per_sample():
    torch.manual_seed(0)
    x = torch.linspace(0, 1, 16).repeat(3, 1, 16, 1)            # a horizontal ramp
    y = jittered(x, 0.1)
    shifts = (y - x)[:, 0, 8, 8]
    assert shifts.abs().max() <= 0.1 * 16 / 15 + 1e-6 and len(set(shifts.tolist())) == 3


def test_projection_head_is_the_logit_conv_plus_an_inner_product():
    torch.manual_seed(0)
    net = D_NET64(4, 8, cond_head="projection").double().eval()
    head = net.COND_DNET
    assert not hasattr(head, "jointConv") and net.UNCOND_DNET.projection is False
    h = torch.randn(3, 32, 4, 4, dtype=torch.float64)
    cond = torch.randn(3, 8, dtype=torch.float64, requires_grad=True)
    conv = head.outlogits[0]
    with torch.no_grad():
        expected = [float((conv.weight[0] * h[i]).sum() + conv.bias[0]
                          + h[i].sum(dim=(1, 2)) @ (head.embed.weight @ cond[i]))
                    for i in range(3)]
    logits = head.logits(h, cond)
    torch.testing.assert_close(logits, torch.tensor(expected, dtype=torch.float64),
                               rtol=1e-12, atol=1e-12)
    logits.sum().backward()                 # the condition's gradient: W^T (sum of features)
    torch.testing.assert_close(cond.grad, h.sum(dim=(2, 3)) @ head.embed.weight)
    keys = [set(d.COND_DNET.state_dict())
            for d in build_discriminators(get_config("small", d_cond_head="projection"))]
    assert keys[2] == {"embed.weight", "outlogits.0.weight", "outlogits.0.bias"}
    with pytest.raises(ConfigError, match="d_cond_head"):
        get_config("small", d_cond_head="bilinear")
    with pytest.raises(ValueError, match="cond_head"):
        D_NET64(4, 8, cond_head="bilinear")
