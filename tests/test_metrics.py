"""Metrics: Fréchet distance (vs scipy's sqrtm and closed forms), the FID Inception (weight-file
naming, graph variants), Inception Score, DM-GAN's R-precision, GR-GAN's CMD."""
import math
import os

import numpy as np
import pytest
import torch

from t2i_fast.metrics import inception as inception_module
from t2i_fast.metrics import (InceptionFID, cmd_score, fid_from_features, fold_scores,
                              frechet_distance, gaussian_stats, image_stats, inception_score,
                              load_stats, r_precision, retrieval_hits, sample_mismatched,
                              save_stats, sentence_stats)

scipy_linalg = pytest.importorskip("scipy.linalg")

# Tolerances, all float64: closed forms and identical formulas agree to rounding; the scipy
# comparison goes through a Schur-based sqrtm of a non-symmetric product (error ~1e-12 here).
RTOL_EXACT = 1e-12
RTOL_SCIPY = 1e-9
# Fréchet distance of ill-conditioned or singular covariances against exact answers: t2i_fast is
# within 6e-12 on these cases, pytorch-fid's sqrtm and torch-fidelity's eigvals within 2e-7.
RTOL_ILL = 1e-10


def scipy_fd(mu1, s1, mu2, s2):
    """The pytorch-fid formula: Tr sqrtm(S1 S2) by scipy, imaginary rounding dropped."""
    covmean = scipy_linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean).real)


def random_cov(rng, d, scale=1.0):
    a = rng.standard_normal((d, d))
    return scale * (a @ a.T / d + 0.1 * np.eye(d))


# --------------------------------------------------------------------------------------------
# Fréchet distance and stats files
# --------------------------------------------------------------------------------------------

def test_gaussian_stats_is_mean_and_np_cov():
    x = np.random.default_rng(0).standard_normal((50, 7))
    mu, sigma = gaussian_stats(torch.from_numpy(x).float())       # tensors accepted
    np.testing.assert_allclose(mu, x.astype(np.float32).astype(np.float64).mean(0),
                               rtol=RTOL_EXACT)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float32), rowvar=False),
                               rtol=RTOL_EXACT, atol=1e-15)
    assert mu.dtype == sigma.dtype == np.float64


@pytest.mark.parametrize("d", [1, 8, 64])
def test_frechet_matches_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    x1 = rng.multivariate_normal(rng.standard_normal(d), random_cov(rng, d), size=400)
    x2 = rng.multivariate_normal(rng.standard_normal(d), random_cov(rng, d, 3.0), size=300)
    s1, s2 = gaussian_stats(x1), gaussian_stats(x2)
    expected = scipy_fd(*s1, *s2)
    assert frechet_distance(*s1, *s2) == pytest.approx(expected, rel=RTOL_SCIPY)
    assert frechet_distance(*s2, *s1) == pytest.approx(expected, rel=RTOL_SCIPY)


@pytest.mark.parametrize("case", ["diagonal", "commuting", "rank_deficient_commuting"])
def test_frechet_closed_form(case):
    """Commuting covariances Q diag(a) Q^T and Q diag(b) Q^T:
    FD = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    rng = np.random.default_rng(1)
    d = 12
    a, b = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    q = np.eye(d) if case == "diagonal" else np.linalg.qr(rng.standard_normal((d, d)))[0]
    if case == "rank_deficient_commuting":
        a[:4], b[2:7] = 0.0, 0.0
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10)


def hadamard_basis(d):
    """An orthogonal (d, d) matrix with entries +-1/sqrt(d) (Sylvester's construction)."""
    h = np.ones((1, 1))
    while h.shape[0] < d:
        h = np.block([[h, h], [h, -h]])
    return h / math.sqrt(d)


def exact_commuting_pair(exps1, exps2):
    """Covariances Q diag(2^-e) Q^T with Q = hadamard_basis(64) (entries +-1/8) and even
    exponents e <= 40: every product and partial sum is a multiple of 2^-46 below 2^6, so
    float64 holds the matrices exactly and their eigenvalues are exactly 2^-e."""
    q = hadamard_basis(64)
    a, b = 2.0 ** -np.asarray(exps1), 2.0 ** -np.asarray(exps2)
    return a, b, (q * a) @ q.T, (q * b) @ q.T


SPAN = 2 * (np.arange(64) * 20 // 63)         # even exponents 0 ... 40: 12 orders of magnitude


@pytest.mark.parametrize("case", ["shared", "reversed", "shuffled"])
def test_frechet_ill_conditioned_known_answer(case):
    """Full-rank covariances whose eigenvalues span 1 ... 2^-40 (9e-13), in one orthogonal
    basis: FD = sum (sqrt a - sqrt b)^2 exactly. `shared`: b = a * 4^{-1, 0, 1} (real and
    generated spectra alike, the usual FID case); `reversed`: the small eigenvalues of one
    meet the large of the other; `shuffled`: a random pairing. A cut of eigenvalues of the
    product S1 S2 below D * eps * its largest (the earlier code) is off by 1e-7 to 4e-7 in the
    shared and shuffled cases."""
    rng = np.random.default_rng(12)
    other = {"shared": np.clip(SPAN + 2 * rng.integers(-1, 2, 64), 0, 40),
             "reversed": SPAN[::-1], "shuffled": rng.permutation(SPAN)}[case]
    a, b, s1, s2 = exact_commuting_pair(SPAN, other)
    mu = rng.standard_normal(64)
    expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu, s1, mu, s2) == pytest.approx(expected, rel=RTOL_ILL)
    assert frechet_distance(mu, s2, mu, s1) == pytest.approx(expected, rel=RTOL_ILL)


def mp_frechet(mu1, s1, mu2, s2, digits=40):
    """FD of the float64 inputs as they stand, in `digits`-digit arithmetic (mpmath)."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(digits):
        w, v = mp.eigsy(mp.matrix(s1.tolist()))
        root = v * mp.diag([mp.sqrt(max(x, 0)) for x in w]) * v.T
        inner = mp.eigsy(root * mp.matrix(s2.tolist()) * root, eigvals_only=True)
        tr_sqrt = mp.fsum(mp.sqrt(max(x, 0)) for x in inner)
        means = mp.fsum(mp.mpf(float(x)) ** 2 for x in mu1 - mu2)
        traces = mp.fsum(mp.mpf(float(x)) for x in (*np.diag(s1), *np.diag(s2)))
        return float(means + traces - 2 * tr_sqrt)


def test_frechet_ill_conditioned_non_commuting_against_40_digits():
    """Covariances in two nearby bases (a small rotation apart), eigenvalues over 1 ... 1e-12:
    the small eigen-directions of the two overlap without coinciding, as for real and
    generated features. The earlier code was off by 9e-7 here."""
    rng = np.random.default_rng(13)
    d = 24
    q1 = np.linalg.qr(rng.standard_normal((d, d)))[0]
    turn = np.linalg.qr(np.eye(d) + 0.05 * rng.standard_normal((d, d)))[0]
    q2 = q1 @ turn
    a = np.logspace(0, -12, d)
    b = a * rng.uniform(0.5, 2.0, d)
    s1, s2 = ((q * w) @ q.T for q, w in ((q1, a), (q2, b)))
    s1, s2 = 0.5 * (s1 + s1.T), 0.5 * (s2 + s2.T)       # the reference reads one triangle
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    mu2 = mu1 + 1e-3 * (mu2 - mu1)          # a small mean term, so the covariances decide
    expected = mp_frechet(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=RTOL_ILL)


@pytest.mark.parametrize("n1, n2", [(30, 90), (60, 60)])
def test_frechet_singular_covariances_exact(n1, n2):
    """Fewer samples than dimensions (rank n - 1 of 128) with a decaying spectrum: with A the
    centred features, the non-zero eigenvalues of S1 S2 are the squared singular values of
    A1 A2^T / sqrt((n1 - 1)(n2 - 1)), so Tr (S1 S2)^(1/2) is that matrix's nuclear norm."""
    rng = np.random.default_rng(n1)
    scale = np.logspace(0, -3, 128)
    x1 = rng.standard_normal((n1, 128)) * scale
    x2 = 1.2 * rng.standard_normal((n2, 128)) * scale + 0.01
    a1, a2 = x1 - x1.mean(0), x2 - x2.mean(0)
    nuclear = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    expected = (np.sum((x1.mean(0) - x2.mean(0)) ** 2) + np.sum(a1 ** 2) / (n1 - 1)
                + np.sum(a2 ** 2) / (n2 - 1) - 2 * nuclear)
    got = frechet_distance(*gaussian_stats(x1), *gaussian_stats(x2))
    assert got == pytest.approx(expected, rel=RTOL_ILL)


def test_frechet_identical_stats_is_zero():
    rng = np.random.default_rng(2)
    full = gaussian_stats(rng.standard_normal((200, 16)))
    low_rank = gaussian_stats(rng.standard_normal((6, 16)))             # rank 5 of 16
    for mu, sigma in (full, low_rank):
        assert frechet_distance(mu, sigma, mu, sigma) <= 1e-10 * np.trace(sigma)
    # and not zero when they differ
    assert frechet_distance(*full, full[0] + 0.1, full[1]) == pytest.approx(16 * 0.01,
                                                                            rel=1e-9)


def test_frechet_rank_deficient_is_finite_and_nonnegative():
    rng = np.random.default_rng(3)
    for n1, n2 in ((5, 9), (3, 3), (2, 40)):
        s1 = gaussian_stats(rng.standard_normal((n1, 32)))
        s2 = gaussian_stats(2.0 * rng.standard_normal((n2, 32)) + 1.0)
        fd = frechet_distance(*s1, *s2)
        assert math.isfinite(fd) and fd > 0
        # the mean term alone is a lower bound (the covariance term is a squared Bures metric)
        assert fd >= np.sum((s1[0] - s2[0]) ** 2) * (1 - 1e-12)


@pytest.mark.parametrize("bad, match", [
    (lambda mu, s: (mu, s, mu[:-1], s[:-1, :-1]), "dimensions differ"),
    (lambda mu, s: (mu, s[:, :-1], mu, s), "expected mu"),
    (lambda mu, s: (mu[None], s, mu, s), "1-D"),
    (lambda mu, s: (mu, s * np.nan, mu, s), "NaN"),
])
def test_frechet_shape_and_value_errors(bad, match):
    mu, sigma = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match=match):
        frechet_distance(*bad(mu, sigma))


@pytest.mark.parametrize("features", [np.zeros((0, 4)), np.zeros((1, 4)), np.zeros(4)])
def test_gaussian_stats_needs_two_rows(features):
    with pytest.raises(ValueError, match="gaussian_stats features"):
        gaussian_stats(features)


def test_stats_file_roundtrip_and_errors(tmp_path):
    rng = np.random.default_rng(4)
    mu, sigma = gaussian_stats(rng.standard_normal((10, 3)))
    path = tmp_path / "sub" / "real.npz"
    save_stats(path, mu, sigma)
    assert os.listdir(path.parent) == ["real.npz"]                      # no temporaries left
    got_mu, got_sigma = load_stats(path)
    assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma)

    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_stats(tmp_path / "nope.npz")
    (tmp_path / "corrupt.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="corrupt.npz.*not a readable"):
        load_stats(tmp_path / "corrupt.npz")
    np.savez(tmp_path / "keys.npz", mean=mu, sigma=sigma)
    with pytest.raises(ValueError, match=r"keys.npz.*missing key\(s\) \['mu'\]"):
        load_stats(tmp_path / "keys.npz")
    np.save(tmp_path / "single.npy", mu)
    with pytest.raises(ValueError, match="single.npy.*single array"):
        load_stats(tmp_path / "single.npy")
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=sigma[:2])
    with pytest.raises(ValueError, match="shape.npz"):
        load_stats(tmp_path / "shape.npz")
    with pytest.raises(ValueError, match="save_stats"):
        save_stats(tmp_path / "bad.npz", mu, sigma[:, :2])


def test_fid_from_features_with_pair_and_file(tmp_path):
    rng = np.random.default_rng(5)
    real, fake = rng.standard_normal((60, 5)), 0.5 * rng.standard_normal((40, 5)) + 0.3
    stats = gaussian_stats(real)
    save_stats(tmp_path / "real.npz", *stats)
    expected = scipy_fd(real.mean(0), np.cov(real, rowvar=False),
                        fake.mean(0), np.cov(fake, rowvar=False))
    assert fid_from_features(stats, fake) == pytest.approx(expected, rel=RTOL_SCIPY)
    assert fid_from_features(str(tmp_path / "real.npz"), fake) == \
        pytest.approx(expected, rel=RTOL_SCIPY)
    with pytest.raises(ValueError, match="gaussian_stats"):
        fid_from_features(stats, np.zeros((0, 5)))


# --------------------------------------------------------------------------------------------
# FID Inception
# --------------------------------------------------------------------------------------------

def randomize(net, seed):
    """Weights and BatchNorm statistics that keep activations O(1) through the deep stack."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    * math.sqrt(2.0 / fan_in))
            elif isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(0.5 + torch.rand(c, generator=gen))
                module.bias.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
        net.fc.weight.copy_(0.02 * torch.randn(net.fc.weight.shape, generator=gen))
        net.fc.bias.copy_(torch.randn(net.fc.bias.shape, generator=gen))
    return net.eval()


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    """A random-weight InceptionFID and its state dict saved as pytorch-fid's file name."""
    net = randomize(InceptionFID(), seed=0)
    path = tmp_path_factory.mktemp("fid") / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return net, path


def test_inception_architecture_size_and_key_names():
    """torchvision's inception_v3 has 27,161,264 parameters; without the aux head (3,326,696)
    and with a 1008-way fc (+16,392) that is 23,850,960, pytorch-fid's FID network."""
    net = InceptionFID()
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    keys = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
    assert len(keys) == 94 * 5 + 2
    for key, shape in (("Conv2d_1a_3x3.conv.weight", (32, 3, 3, 3)),
                       ("Mixed_5b.branch5x5_2.conv.weight", (64, 48, 5, 5)),
                       ("Mixed_6e.branch7x7dbl_5.conv.weight", (192, 192, 1, 7)),
                       ("Mixed_7a.branch7x7x3_4.bn.running_var", (192,)),
                       ("Mixed_7c.branch3x3dbl_3b.conv.weight", (384, 384, 3, 1)),
                       ("fc.weight", (1008, 2048)), ("fc.bias", (1008,))):
        assert tuple(net.state_dict()[key].shape) == shape, key


def test_inception_from_file_reproduces_outputs(weights_file):
    """The loaded network equals the saved one. Inputs of any size are resized bilinearly
    (align_corners=False) to 299, so a small batch matches its resized copy; logits_bias adds
    fc.bias to the bias-free logits. (Two full forwards: this is the CPU-costly test.)"""
    net, path = weights_file
    loaded = InceptionFID.from_file(path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    fresh = InceptionFID().state_dict()
    for key, value in net.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
        assert key.endswith("num_batches_tracked") or not torch.equal(fresh[key], value), key
    small = torch.rand(2, 3, 37, 53, generator=torch.Generator().manual_seed(1)) * 2 - 1
    big = torch.nn.functional.interpolate(small, size=(299, 299), mode="bilinear",
                                          align_corners=False)
    with torch.no_grad():
        pool3, logits = net(big)
        got_pool3, got_biased = loaded(small, logits_bias=True)
    assert pool3.shape == (2, 2048) and logits.shape == (2, 1008)
    assert torch.isfinite(pool3).all() and pool3.std() > 0
    torch.testing.assert_close(logits, pool3 @ net.fc.weight.t(), rtol=0, atol=0)
    torch.testing.assert_close(got_pool3, pool3, rtol=0, atol=0)
    torch.testing.assert_close(got_biased, logits + net.fc.bias, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        net(small[:, :2])


def pil_clean_resize(images, size):
    """clean-fid's resize written out with numpy and PIL: [-1, 1] -> uint8 by rounding in
    float32 (as images are saved), each channel a float32 ('F') PIL image resized bicubically,
    clipped, scaled (x - 128) / 128."""
    from PIL import Image
    x = images.numpy().astype(np.float32).clip(-1, 1)
    pixels = np.rint((x + np.float32(1)) * np.float32(127.5)).astype(np.uint8)
    out = np.stack([np.stack([np.asarray(Image.fromarray(channel.astype(np.float32), "F")
                                         .resize((size, size), Image.BICUBIC))
                              for channel in image]) for image in pixels])
    return torch.from_numpy((out.clip(0, 255) - 128) / 128).float()


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (1, 3, 37, 53), (1, 3, 400, 320)])
def test_clean_resize_equals_pil_computation(shape):
    """Up- and downsampling, non-square; values outside [-1, 1] clamp as saving does, and
    bicubic overshoot past [0, 255] is clipped."""
    gen = torch.Generator().manual_seed(sum(shape))
    images = (torch.rand(shape, generator=gen) * 2.2 - 1.1).round(decimals=1)
    got = inception_module.clean_resize(images, 299)
    assert got.shape == (shape[0], 3, 299, 299) and got.dtype == torch.float32
    assert torch.equal(got, pil_clean_resize(images, 299))
    assert got.min() == -1.0 and got.max() == 127 / 128         # the overshoot was clipped
    same = inception_module.clean_resize(images[:, :, :20, :20], 20)
    assert torch.equal(same, pil_clean_resize(images[:, :, :20, :20], 20))
    with pytest.raises(ValueError, match="FID resize: expected one of"):
        inception_module.preprocess(images, "bilinear")


def test_inception_loads_torch_fidelity_naming(weights_file, tmp_path):
    """torch-fidelity's converted file has the same keys without num_batches_tracked."""
    net, _ = weights_file
    state = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(state, path)
    loaded = InceptionFID.from_file(path)
    for key, value in state.items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_inception_file_errors(weights_file, tmp_path):
    net, _ = weights_file
    with pytest.raises(FileNotFoundError, match="missing.pth.*pt_inception-2015-12-05"):
        InceptionFID.from_file(tmp_path / "missing.pth")
    (tmp_path / "corrupt.pth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(ValueError, match="corrupt.pth.*not a readable"):
        InceptionFID.from_file(tmp_path / "corrupt.pth")
    torch.save([1, 2], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth.*expected a state dict"):
        InceptionFID.from_file(tmp_path / "list.pth")
    # torchvision naming (no FID variant) differs: an aux head and a 1000-way fc
    state = dict(net.state_dict())
    state["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    state["fc.weight"] = torch.zeros(1000, 2048)
    del state["Mixed_7c.branch_pool.bn.running_var"]
    torch.save(state, tmp_path / "torchvision.pth")
    with pytest.raises(ValueError) as err:
        InceptionFID.from_file(tmp_path / "torchvision.pth")
    message = str(err.value)
    for part in ("torchvision.pth", "missing keys: Mixed_7c.branch_pool.bn.running_var",
                 "unexpected keys: AuxLogits.fc.weight", "fc.weight (1000, 2048)"):
        assert part in message


def _pool_branch_probe(block, x, channel):
    """The block's pool-branch output channel `channel` with that branch set to the identity
    on input channel 0 (conv weight e_0, BatchNorm at mean 0, var + eps = 1)."""
    branch = block.branch_pool
    with torch.no_grad():
        branch.conv.weight.zero_()
        branch.conv.weight[0, 0] = 1.0
        branch.bn.weight.fill_(1.0), branch.bn.bias.zero_(), branch.bn.running_mean.zero_()
        branch.bn.running_var.fill_(1.0 - branch.bn.eps)
        return block.eval()(x)[0, channel]


def test_inception_pool_variants_of_the_tf_graph():
    """A/C/E(7b) average pools exclude the padding; Mixed_7c max-pools its pool branch."""
    net = InceptionFID()
    for name, in_ch, out_ch in (("Mixed_5b", 192, 224), ("Mixed_6b", 768, 576),
                                ("Mixed_7b", 1280, 1856)):
        ones = torch.ones(1, in_ch, 5, 5)
        got = _pool_branch_probe(getattr(net, name), ones, out_ch)
        torch.testing.assert_close(got, torch.ones(5, 5), rtol=0, atol=1e-6)
    spike = torch.zeros(1, 2048, 5, 5)
    spike[0, 0, 2, 2] = 9.0
    expected = torch.zeros(5, 5)
    expected[1:4, 1:4] = 9.0                                 # a 3x3 max spreads the spike
    torch.testing.assert_close(_pool_branch_probe(net.Mixed_7c, spike, 1856), expected,
                               rtol=0, atol=1e-5)
    spike = spike[:, :1280]
    expected[1:4, 1:4] = 1.0                                 # a 3x3 average divides it by 9
    torch.testing.assert_close(_pool_branch_probe(net.Mixed_7b, spike, 1856), expected,
                               rtol=0, atol=1e-6)


# --------------------------------------------------------------------------------------------
# Inception Score
# --------------------------------------------------------------------------------------------

def improved_gan_is(preds, splits):
    """The improved-GAN loop, verbatim in its arithmetic."""
    scores = []
    for i in range(splits):
        part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
        kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
        scores.append(np.exp(np.mean(np.sum(kl, 1))))
    return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("n, splits", [(103, 10), (40, 1), (12, 12)])
def test_inception_score_matches_improved_gan(n, splits):
    rng = np.random.default_rng(n)
    logits = 3.0 * rng.standard_normal((n, 17))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    expected = improved_gan_is(probs, splits)
    np.testing.assert_allclose(inception_score(probs, splits, are_probs=True), expected,
                               rtol=RTOL_EXACT, atol=1e-14)
    np.testing.assert_allclose(inception_score(torch.from_numpy(logits), splits), expected,
                               rtol=1e-10, atol=1e-13)


def test_inception_score_extremes():
    uniform = np.zeros((30, 1008))                                       # logits
    assert inception_score(uniform, splits=3) == pytest.approx((1.0, 0.0), abs=1e-12)
    k = 7
    onehot = np.tile(np.eye(k), (4, 1))                                  # each split: k classes
    mean, std = inception_score(onehot, splits=4, are_probs=True)
    assert mean == pytest.approx(k, rel=RTOL_EXACT) and std == pytest.approx(0, abs=1e-12)


@pytest.mark.parametrize("values, kwargs, match", [
    (np.zeros((0, 5)), {}, "empty"),
    (np.zeros((5, 0)), {}, "empty"),
    (np.zeros((5, 3)), {"splits": 6}, "splits"),
    (np.full((4, 2), 0.7), {"splits": 2, "are_probs": True}, "sum to 1"),
])
def test_inception_score_errors(values, kwargs, match):
    with pytest.raises(ValueError, match=match):
        inception_score(values, **kwargs)


# --------------------------------------------------------------------------------------------
# R-precision
# --------------------------------------------------------------------------------------------

def loop_hits(codes, sents, mis):
    """One trial at a time, DM-GAN's arithmetic: cosine, argmax == 0 (first max)."""
    hits = []
    for c, s, m in zip(codes, sents, mis):
        cands = [s] + list(m)
        cos = [float(c @ t) / max(float(np.linalg.norm(c) * np.linalg.norm(t)), 1e-8)
               for t in cands]
        hits.append(int(cos.index(max(cos)) == 0))
    return np.array(hits, dtype=float)


def loop_folds(hits, folds):
    size = len(hits) // folds
    sums = [np.average(hits[i * size:(i + 1) * size - 1]) for i in range(folds)]
    return np.average(sums), np.std(sums)


def test_r_precision_matches_loop():
    rng = np.random.default_rng(6)
    n, m, d = 47, 99, 4
    codes = rng.standard_normal((n, d))
    sents = codes + 1.2 * rng.standard_normal((n, d))                    # partly aligned
    mis = rng.standard_normal((n, m, d))
    hits = loop_hits(codes, sents, mis)
    assert 0 < hits.sum() < n                                            # a mixed case
    np.testing.assert_array_equal(retrieval_hits(codes, sents, mis), hits.astype(bool))
    got = r_precision(torch.from_numpy(codes), sents, mis, folds=5, shuffle=False)
    np.testing.assert_allclose(got, loop_folds(hits, 5), rtol=RTOL_EXACT)
    shuffled = np.random.default_rng(11).permutation(hits)
    np.testing.assert_allclose(r_precision(codes, sents, mis, folds=5, generator=11),
                               loop_folds(shuffled, 5), rtol=RTOL_EXACT)


def test_r_precision_perfect_adversarial_and_ties():
    rng = np.random.default_rng(7)
    n, d = 20, 6
    codes = rng.standard_normal((n, d))
    sents = codes + 0.1 * rng.standard_normal((n, d))
    opposite = -np.repeat(sents[:, None], 99, axis=1) + 0.01 * rng.standard_normal((n, 99, d))
    assert r_precision(codes, sents, opposite, folds=2) == (1.0, 0.0)
    beaten = opposite.copy()
    beaten[:, 42] = 3.0 * codes                                          # cosine exactly 1
    assert r_precision(codes, sents, beaten, folds=2) == (0.0, 0.0)
    tied = opposite.copy()
    tied[:, 0] = sents                                                   # tie: own caption wins
    assert retrieval_hits(codes, sents, tied).all()


def test_r_precision_fold_slicing_drops_last_of_each_fold():
    hits = np.ones(30)
    hits[9::10] = 0.0                                                    # last of each fold
    assert fold_scores(hits, folds=3, shuffle=False) == (1.0, 0.0)
    hits[0] = 0.0
    mean, std = fold_scores(hits, folds=3, shuffle=False)
    assert mean == pytest.approx((8 / 9 + 1 + 1) / 3, rel=RTOL_EXACT) and std > 0


def test_r_precision_errors():
    codes = np.ones((4, 3))
    with pytest.raises(ValueError, match="no trials"):
        r_precision(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros((0, 99, 3)))
    with pytest.raises(ValueError, match="same number of rows"):
        r_precision(codes, codes[:3], np.ones((4, 99, 3)))
    with pytest.raises(ValueError, match="same D"):
        r_precision(codes, codes, np.ones((4, 99, 2)))
    with pytest.raises(ValueError, match="folds"):
        r_precision(codes, codes, np.ones((4, 99, 3)), folds=3)


def test_sample_mismatched_other_classes_only():
    class_ids = np.repeat(np.arange(5), 6)                               # 30 images, 5 classes
    picks = sample_mismatched(class_ids, num=99, generator=0, captions_per_image=10)
    assert picks.shape == (30, 99) and picks.dtype == np.int64
    images = picks // 10
    assert (class_ids[images] != class_ids[:, None]).all()
    assert picks.min() >= 0 and picks.max() < 300
    assert len(np.unique(picks % 10)) == 10                              # all captions drawn
    assert np.array_equal(picks, sample_mismatched(class_ids, 99, np.random.default_rng(0),
                                                   captions_per_image=10))
    coco = sample_mismatched(np.arange(120), num=99, generator=1, replace=False)
    assert (coco != np.arange(120)[:, None]).all()
    assert all(len(set(row)) == 99 for row in coco)
    queries = sample_mismatched(class_ids, num=5, generator=2, query_class_ids=[4, 0])
    assert (class_ids[queries[0]] != 4).all() and (class_ids[queries[1]] != 0).all()


def test_sample_mismatched_errors():
    with pytest.raises(ValueError, match="class id 3 has only 0"):
        sample_mismatched([3, 3, 3], num=2)
    with pytest.raises(ValueError, match="only 24 .* 99 needed"):
        sample_mismatched(np.repeat(np.arange(5), 6), num=99, replace=False)
    with pytest.raises(ValueError, match="non-empty"):
        sample_mismatched([], num=2)


# --------------------------------------------------------------------------------------------
# CMD
# --------------------------------------------------------------------------------------------

def test_cmd_matches_direct_computation(tmp_path):
    rng = np.random.default_rng(8)
    d = 6
    real = rng.standard_normal((80, d)) + 1.0
    fake = 2.0 * rng.standard_normal((70, d)) + 0.5
    sent = rng.standard_normal((90, d)) - 0.5

    def stats(x, scale):
        x = scale * x / np.linalg.norm(x, axis=1, keepdims=True)
        return x.mean(0), np.cov(x, rowvar=False)

    fd1 = scipy_fd(*stats(real, 10), *stats(sent, 1))
    fd2 = scipy_fd(*stats(fake, 10), *stats(sent, 1))
    fd3 = scipy_fd(*stats(real, 10), *stats(fake, 10))
    expected = dict(cmd=fd3 + fd2 - fd1, fd_real_fake=fd3, itdis=fd2, fd_real_sent=fd1)

    got = cmd_score(image_stats(real), torch.from_numpy(fake), sentence_stats(sent))
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], rel=RTOL_SCIPY), key
    save_stats(tmp_path / "image_feature.npz", *image_stats(real))
    save_stats(tmp_path / "sent_feature.npz", *sentence_stats(sent))
    cached = cmd_score(tmp_path / "image_feature.npz", fake, tmp_path / "sent_feature.npz")
    raw = cmd_score(real, fake, sent)
    for key in expected:
        assert cached[key] == pytest.approx(got[key], rel=RTOL_EXACT), key
        assert raw[key] == pytest.approx(got[key], rel=RTOL_EXACT), key


def test_cmd_stats_drop_partial_batch_and_errors():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((150, 4))
    mu, sigma = image_stats(x, batch_size=64)                            # keeps 128 rows
    kept = 10 * x[:128] / np.linalg.norm(x[:128], axis=1, keepdims=True)
    np.testing.assert_allclose(mu, kept.mean(0), rtol=RTOL_EXACT)
    np.testing.assert_allclose(sigma, np.cov(kept, rowvar=False), rtol=RTOL_EXACT, atol=1e-15)
    good = image_stats(x)
    with pytest.raises(ValueError, match="fake_img_feats"):
        cmd_score(good, np.zeros((0, 4)), good)
    with pytest.raises(ValueError, match="row 1 has norm 0"):
        sentence_stats(np.array([[1.0, 0, 0, 0], [0, 0, 0, 0], [0, 1.0, 0, 0]]))
    with pytest.raises(ValueError, match="no rows left"):
        image_stats(x[:50], batch_size=64)
    with pytest.raises(ValueError, match="dimensions differ"):
        cmd_score(good, rng.standard_normal((10, 5)), good)
