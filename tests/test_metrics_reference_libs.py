"""t2i_fast's metrics against the reference libraries of the `eval-ref` extra (pytorch-fid,
torch-fidelity, open_clip), each given random weights saved in its own key names and loaded
through t2i_fast's loaders. Everything runs offline: a download attempt fails the test.

Documented differences, each tested as such:
  * torch-fidelity resizes with TF1's bilinear rule; compared at 299x299, where it does not
    resize. Its Inception Score shuffles the rows first (seed 2020) by default.
  * pytorch-fid maps [0, 1] to [-1, 1] after its resize, t2i_fast takes [-1, 1] before it:
    equal at 299x299, rounding apart elsewhere.
  * The Fréchet distance: the libraries square small eigenvalues (sqrtm / eigvals of S1 S2), so
    on ill-conditioned or singular covariances they are off the exact value by up to 2e-7,
    where t2i_fast is exact to 6e-12 (test_metrics.py); pytorch-fid also adds 1e-6 to the
    diagonals when its sqrtm of a singular product fails.
  * The CLIP tokenizer's special-token text is OpenAI's by default; special_tokens="open_clip"
    reads open_clip's spelling. The ids are the same.
"""
import socket

import numpy as np
import pytest
import torch

from conftest import rel_err
from t2i_fast.metrics import InceptionFID, frechet_distance, gaussian_stats, inception_score
from t2i_fast.metrics.clip_tokenizer import ClipTokenizer
from t2i_fast.metrics.clip_vit import ClipViT
from test_metrics import exact_commuting_pair, randomize

REASON = "needs the eval-ref extra: pip install 't2i_fast[eval-ref]' (make setup installs it)"
pytorch_fid_inception = pytest.importorskip("pytorch_fid.inception", reason=REASON)
pytorch_fid_score = pytest.importorskip("pytorch_fid.fid_score", reason=REASON)
fidelity_inception = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3",
                                         reason=REASON)
fidelity_fid = pytest.importorskip("torch_fidelity.metric_fid", reason=REASON)
fidelity_isc = pytest.importorskip("torch_fidelity.metric_isc", reason=REASON)
open_clip = pytest.importorskip("open_clip", reason=REASON)
# pytorch-fid passes scipy's deprecated sqrtm(disp=False)
pytestmark = pytest.mark.filterwarnings("ignore:The `disp` argument:DeprecationWarning")

# Relative-norm error where both sides compute the same thing in float32. Measured: 0 (bitwise)
# for the Inception at 299 px and for the CLIP towers; 1.7e-7 for pytorch-fid at 64 px, where
# it scales after its resize and t2i_fast before.
REL = 1e-6
# float64 scores computed the same way (FD of well-conditioned covariances, IS): rounding only.
REL64 = 1e-10


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Any network connection raises: every library here must work from local files."""
    def refuse(*args, **kwargs):
        raise OSError("network access in a reference-library test")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def weights_path(tmp_path_factory, name, state):
    path = tmp_path_factory.mktemp("weights") / name
    torch.save(state, path)
    return path


def uniform_images(shape, seed):
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------------------------
# FID Inception: pool3 and logits
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def pytorch_fid_nets(tmp_path_factory):
    """pytorch-fid's FID Inception (torchvision's Inception3 with its FIDInceptionA/C/E blocks)
    with random weights, its state dict saved under pytorch-fid's file name, pytorch-fid's
    InceptionV3 feature wrapper and t2i_fast's network built from that file."""
    with pytest.MonkeyPatch.context() as patch:
        # the constructor loads published weights from a URL: hand it placeholder weights
        patch.setattr(pytorch_fid_inception, "load_state_dict_from_url",
                      lambda *args, **kwargs: InceptionFID().state_dict())
        full = randomize(pytorch_fid_inception.fid_inception_v3(), seed=1)
        path = weights_path(tmp_path_factory, "pt_inception-2015-12-05-6726825d.pth",
                            full.state_dict())
        patch.setattr(pytorch_fid_inception, "load_state_dict_from_url",
                      lambda *args, **kwargs: torch.load(path, weights_only=True))
        wrapper = pytorch_fid_inception.InceptionV3([3]).eval()
    return full, wrapper, InceptionFID.from_file(path)


@pytest.mark.parametrize("size", [299, 64])
def test_inception_equals_pytorch_fid(pytorch_fid_nets, size):
    """pool3 from pytorch-fid's InceptionV3 (images in [0, 1], its bilinear resize and 2x - 1)
    and logits (fc with bias) from its full network on the same 299 px input."""
    full, wrapper, ours = pytorch_fid_nets
    images = uniform_images((1, 3, size, size), seed=size)
    with torch.no_grad():
        pool3, logits = ours(2 * images - 1, logits_bias=True)
        assert rel_err(pool3, wrapper(images)[0].flatten(1)) <= REL
        if size == 299:
            assert rel_err(logits, full(2 * images - 1)) <= REL
    assert pool3.std() > 0


@pytest.fixture(scope="module")
def fidelity_nets(tmp_path_factory):
    """torch-fidelity's InceptionV3 feature extractor, random weights saved in its key names
    (its file name), and t2i_fast's network from that file."""
    placeholder = weights_path(tmp_path_factory, "placeholder.pth", InceptionFID().state_dict())
    lib = fidelity_inception.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased", "logits"],
        feature_extractor_weights_path=str(placeholder))
    randomize(lib, seed=2)
    path = weights_path(tmp_path_factory, "weights-inception-2015-12-05-6726825d.pth",
                        lib.state_dict())
    return lib, InceptionFID.from_file(path)


def test_inception_equals_torch_fidelity(fidelity_nets):
    """uint8 images at 299 px: torch-fidelity scales them (x - 128) / 128; t2i_fast gets the
    same scale directly, or the [-1, 1] images with the clean resize (a copy at 299 px)."""
    lib, ours = fidelity_nets
    pixels = (uniform_images((1, 3, 299, 299), seed=3) * 256).clamp(max=255).to(torch.uint8)
    with torch.no_grad():
        pool3, unbiased, biased = lib(pixels)
        got_pool3, got_unbiased = ours((pixels.float() - 128) / 128)
        _, got_biased = ours(pixels.float() / 127.5 - 1, logits_bias=True, resize="clean")
    for got, want in ((got_pool3, pool3), (got_unbiased, unbiased), (got_biased, biased)):
        assert rel_err(got, want) <= REL
    assert pool3.std() > 0 and not torch.equal(unbiased, biased)


# --------------------------------------------------------------------------------------------
# Fréchet distance and Inception Score
# --------------------------------------------------------------------------------------------

def library_fds(mu1, sigma1, mu2, sigma2):
    pytorch_fid = pytorch_fid_score.calculate_frechet_distance(mu1, sigma1, mu2, sigma2)
    fidelity = fidelity_fid.fid_statistics_to_metric(
        {"mu": mu1, "sigma": sigma1}, {"mu": mu2, "sigma": sigma2}, verbose=False)
    return {"pytorch-fid": pytorch_fid, "torch-fidelity": fidelity[fidelity_fid.KEY_METRIC_FID]}


def covariance_features(rng, n, d, scale):
    mix = rng.standard_normal((d, d)) / np.sqrt(d) + 0.5 * np.eye(d)
    return scale * rng.standard_normal((n, d)) @ mix + rng.standard_normal(d)


def test_frechet_distance_equals_libraries_well_conditioned():
    rng = np.random.default_rng(4)
    stats = [gaussian_stats(covariance_features(rng, n, 64, s)) for n, s in ((500, 1), (400, 2))]
    ours = frechet_distance(*stats[0], *stats[1])
    for name, value in library_fds(*stats[0], *stats[1]).items():
        assert ours == pytest.approx(value, rel=REL64), name


@pytest.mark.parametrize("case", ["ill_conditioned", "singular"])
def test_frechet_distance_libraries_within_their_error(case, capsys):
    """The documented difference: where the libraries lose digits (see the module docstring)
    they stay within REL of t2i_fast's exact value."""
    rng = np.random.default_rng(5)
    if case == "ill_conditioned":
        span = 2 * (np.arange(64) * 20 // 63)
        a, b, s1, s2 = exact_commuting_pair(span, np.clip(span + 2 * rng.integers(-1, 2, 64),
                                                          0, 40))
        stats = [(np.zeros(64), s1), (np.zeros(64), s2)]
    else:                                              # 40 and 70 samples of 128 dimensions
        scale = np.logspace(0, -3, 128)
        stats = [gaussian_stats(rng.standard_normal((n, 128)) * scale * s)
                 for n, s in ((40, 1.0), (70, 1.3))]
    ours = frechet_distance(*stats[0], *stats[1])
    for name, value in library_fds(*stats[0], *stats[1]).items():
        assert ours == pytest.approx(value, rel=REL), name
    capsys.readouterr()                              # pytorch-fid's note on singular products


def test_inception_score_equals_torch_fidelity():
    logits = 4 * torch.randn(60, 1008, generator=torch.Generator().manual_seed(6))
    want = fidelity_isc.isc_features_to_metric(logits, splits=10, shuffle=False)
    got = inception_score(logits, splits=10)
    assert got == pytest.approx((want[fidelity_isc.KEY_METRIC_ISC_MEAN],
                                 want[fidelity_isc.KEY_METRIC_ISC_STD]), rel=REL64)
    # torch-fidelity's default shuffles the rows with a fixed seed before splitting
    shuffled = fidelity_isc.isc_features_to_metric(logits, splits=10)
    order = np.random.RandomState(2020).permutation(len(logits))
    assert inception_score(logits[order], splits=10) == pytest.approx(
        (shuffled[fidelity_isc.KEY_METRIC_ISC_MEAN], shuffled[fidelity_isc.KEY_METRIC_ISC_STD]),
        rel=REL64)
    assert got[0] > 1


# --------------------------------------------------------------------------------------------
# CLIP: tokenizer and towers
# --------------------------------------------------------------------------------------------

HARD_CAPTIONS = [
    "A bird with RED wings   and\ta\nshort   beak.",
    "  leading and trailing spaces  ",
    "the bird's wing isn't red; it's the male's — they're, we've, I'm, you'll, she'd",
    "curly quotes: \u2018small\u2019 and \u201cbig\u201d, can\u2019t",
    "html: fish &amp; chips &lt;b&gt;bold&lt;/b&gt; &quot;q&quot; &#39;x&#39; &amp;amp;",
    "unicode: café naïve résumé Ünïcödé e\u0301 İstanbul straße ½ x² Ⅻ",
    "scripts: 漢字 ひらがな Ελληνικά русский १२३ ١٢٣ 𝔘𝔫𝔦",
    "emoji: 🐦🐦 😀 👩\u200d👩\u200d👧 🇫🇷 ❤️",
    "ligatures and width: ﬁsh ﬂower ＦＵＬＬ ｗｉｄｔｈ",
    "mojibake: cafÃ© and donâ€™t",
    "controls: a\u200bb soft\u00adhyphen nbsp\u00a0here line\u2028sep \x0b\x1c end",
    "numbers and symbols: $5.99, 100%, #tag @user C++ http://x.y/z?a=1&b=2 ok_go",
    " ".join(["a small yellow bird with black wings and a short pointed beak"] * 8),
]
SPECIAL_SPELLINGS = ["text <|startoftext|> and <|endoftext|> inside",
                     "open_clip's <start_of_text> and <END_OF_TEXT> inside"]


@pytest.fixture(scope="module")
def tokenizers():
    bpe = open_clip.tokenizer.default_bpe()          # the merges file open_clip ships
    return (open_clip.get_tokenizer("ViT-B-32"), ClipTokenizer(bpe),
            ClipTokenizer(bpe, special_tokens="open_clip"))


def test_tokenizer_equals_open_clip_on_hard_captions(tokenizers):
    lib, openai, open_clip_spelling = tokenizers
    want = lib(HARD_CAPTIONS)
    assert torch.equal(openai.tokenize(HARD_CAPTIONS), want)
    assert torch.equal(open_clip_spelling.tokenize(HARD_CAPTIONS), want)
    long = want[-1]                                  # truncated at 77, ending with the end id
    assert long[0] == 49406 and long[-1] == 49407 and (long[1:-1] < 49406).all()
    assert torch.equal(open_clip_spelling.tokenize(SPECIAL_SPELLINGS), lib(SPECIAL_SPELLINGS))


def test_tokenizer_special_token_text_as_openai(tokenizers):
    """OpenAI's tokenizer reads "<|endoftext|>" in a caption as the end id and open_clip's
    spelling as characters; the pieces around it are tokenised as open_clip does."""
    lib, openai, _ = tokenizers
    text = "a <|endoftext|> bird <end_of_text>"
    want = [*lib.encode("a"), 49407, *lib.encode("bird"), *lib.encode("< end _ of _ text >")]
    assert openai.encode(text) == want


@pytest.fixture(scope="module")
def clip_models(tmp_path_factory):
    """open_clip's ViT-B-32 (nn.GELU) with its random initialisation, saved in its key names
    and loaded by ClipViT.from_file."""
    torch.manual_seed(7)
    lib = open_clip.create_model("ViT-B-32", pretrained=None).eval()
    path = weights_path(tmp_path_factory, "open_clip_vit_b_32.pt", lib.state_dict())
    return lib, ClipViT.from_file(path, activation="gelu")


@pytest.mark.slow
def test_clip_towers_equal_open_clip(clip_models, tokenizers):
    lib, ours = clip_models
    images = uniform_images((2, 3, 224, 224), seed=8)     # preprocessed: [0, 1] at 224 px
    tokens = tokenizers[0](HARD_CAPTIONS[:4])
    with torch.no_grad():
        assert rel_err(ours.encode_image(images), lib.encode_image(images)) <= REL
        assert rel_err(ours.encode_text(tokens), lib.encode_text(tokens)) <= REL
