"""CLIP ViT of t2i_fast.metrics.clip_vit (OpenAI / open_clip naming, CMD preprocessing) and the
BPE tokenizer of t2i_fast.metrics.clip_tokenizer, on tiny random models and a tiny merges file."""
import gzip
import math
import zipfile

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from clip_keys import resblock_shapes
from conftest import assert_close
from t2i_fast.metrics.clip_tokenizer import N_MERGES, ClipTokenizer, bytes_to_unicode
from t2i_fast.metrics.clip_vit import ClipViT, infer_sizes

TINY = dict(embed_dim=24, image_resolution=32, vision_layers=2, vision_width=32,
            vision_patch_size=8, vision_heads=2, context_length=12, vocab_size=64,
            transformer_width=32, transformer_heads=2, transformer_layers=2)
HEADS = dict(vision_heads=2, transformer_heads=2)
TEXT_NAMES = ("token_embedding", "positional_embedding", "transformer", "ln_final",
              "text_projection")


def tiny_model(seed=0, **over):
    torch.manual_seed(seed)
    return ClipViT(**{**TINY, **over}).requires_grad_(False).eval()


def tokens_for(batch=3, context=12, vocab=64, lengths=(2, 5, 9)):
    """SOT = vocab-2, words 1..n, EOT = vocab-1 (the largest id), 0-padded."""
    tokens = torch.zeros(batch, context, dtype=torch.long)
    for i, n in enumerate(lengths[:batch]):
        tokens[i, 0], tokens[i, n + 1] = vocab - 2, vocab - 1
        tokens[i, 1:n + 1] = torch.randint(1, vocab - 2, (n,))
    return tokens


# --------------------------------------------------------------------------------------------
# An independent description of OpenAI's ViT CLIP: key shapes and a functional forward
# --------------------------------------------------------------------------------------------

def openai_vit_shapes(embed, res, patch, v_width, v_layers, context, vocab, t_width, t_layers):
    keys = {"visual.conv1.weight": (v_width, 3, patch, patch),
            "visual.class_embedding": (v_width,),
            "visual.positional_embedding": ((res // patch) ** 2 + 1, v_width),
            "visual.ln_pre.weight": (v_width,), "visual.ln_pre.bias": (v_width,),
            "visual.ln_post.weight": (v_width,), "visual.ln_post.bias": (v_width,),
            "visual.proj": (v_width, embed),
            "token_embedding.weight": (vocab, t_width), "positional_embedding": (context, t_width),
            "ln_final.weight": (t_width,), "ln_final.bias": (t_width,),
            "text_projection": (t_width, embed), "logit_scale": ()}
    keys.update(resblock_shapes("visual.transformer", v_width, v_layers))
    keys.update(resblock_shapes("transformer", t_width, t_layers))
    return keys


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"])


def _blocks(x, sd, prefix, heads, mask, act):
    """OpenAI's residual blocks on x (L, N, W), sequence first as in OpenAI's code."""
    length, batch, width = x.shape
    d = width // heads
    i = 0
    while f"{prefix}.resblocks.{i}.ln_1.weight" in sd:
        p = f"{prefix}.resblocks.{i}"
        qkv = _ln(x, sd, p + ".ln_1") @ sd[p + ".attn.in_proj_weight"].T \
            + sd[p + ".attn.in_proj_bias"]
        q, k, v = (t.reshape(length, batch * heads, d).transpose(0, 1)
                   for t in qkv.chunk(3, dim=-1))                           # (N*h, L, d)
        scores = q @ k.transpose(1, 2) / math.sqrt(d) + mask
        out = (scores.softmax(-1) @ v).transpose(0, 1).reshape(length, batch, width)
        x = x + out @ sd[p + ".attn.out_proj.weight"].T + sd[p + ".attn.out_proj.bias"]
        hidden = act(_ln(x, sd, p + ".ln_2") @ sd[p + ".mlp.c_fc.weight"].T
                     + sd[p + ".mlp.c_fc.bias"])
        x = x + hidden @ sd[p + ".mlp.c_proj.weight"].T + sd[p + ".mlp.c_proj.bias"]
        i += 1
    return x


def quick_gelu(x):
    return x * torch.sigmoid(1.702 * x)


def reference_image(sd, images, heads, act=quick_gelu):
    """images (B, 3, S, S), already preprocessed -> (B, E)."""
    conv = sd["visual.conv1.weight"]
    x = F.conv2d(images, conv, stride=conv.shape[-1])                     # (B, W, g, g)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(2, 0, 1)            # (g*g, B, W)
    cls = sd["visual.class_embedding"].expand(1, x.shape[1], -1)
    x = torch.cat([cls, x]) + sd["visual.positional_embedding"][:, None]
    x = _blocks(_ln(x, sd, "visual.ln_pre"), sd, "visual.transformer", heads, 0.0, act)
    return _ln(x[0], sd, "visual.ln_post") @ sd["visual.proj"]


def reference_text(sd, tokens, heads, act=quick_gelu):
    """tokens (B, context) -> (B, E): ln_final at the EOT (argmax) token, projected."""
    x = (sd["token_embedding.weight"][tokens] + sd["positional_embedding"]).transpose(0, 1)
    length = x.shape[0]
    mask = torch.full((length, length), float("-inf"), dtype=x.dtype).triu(1)
    x = _ln(_blocks(x, sd, "transformer", heads, mask, act), sd, "ln_final").transpose(0, 1)
    return x[torch.arange(x.shape[0]), tokens.argmax(-1)] @ sd["text_projection"]


def as_dtype(state, dtype):
    return {k: v.to(dtype) for k, v in state.items()}


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------

def test_keys_follow_openai_naming_and_vit_b32_defaults():
    own = {k: tuple(v.shape) for k, v in tiny_model().state_dict().items()}
    assert own == openai_vit_shapes(24, 32, 8, 32, 2, 12, 64, 32, 2)
    with torch.device("meta"):                       # ViT-B/32 sizes without allocating them
        full = ClipViT()
    assert {k: tuple(v.shape) for k, v in full.state_dict().items()} == \
        openai_vit_shapes(512, 224, 32, 768, 12, 77, 49408, 512, 12)
    assert full.visual.transformer.resblocks[0].attn.num_heads == 12
    assert full.transformer.resblocks[0].attn.num_heads == 8


@pytest.mark.parametrize("activation, act", [("quick_gelu", quick_gelu), ("gelu", F.gelu)])
def test_encoders_match_functional_reference(activation, act):
    model = tiny_model(activation=activation)
    sd = model.state_dict()
    images, tokens = torch.rand(3, 3, 32, 32), tokens_for()
    for got, ref in ((model.encode_image(images), reference_image),
                     (model.encode_text(tokens), reference_text)):
        x = images if ref is reference_image else tokens
        x64 = x.double() if x.is_floating_point() else x
        assert got.shape == (3, 24)
        assert_close(got, ref(as_dtype(sd, torch.float64), x64, 2, act), torch.float32,
                     same_dtype_ref=ref(sd, x, 2, act), what=f"{ref.__name__} {activation}")


def test_preprocess_maps_range_and_resizes_without_normalisation():
    model = tiny_model()
    x = torch.rand(2, 3, 48, 40) * 2 - 1                       # generator range [-1, 1]
    expected = F.interpolate((x + 1) / 2, size=(32, 32), mode="bilinear",
                             align_corners=False, antialias=True)
    got = model.preprocess(x, input_range=(-1, 1))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert got.min() >= 0 and got.max() <= 1                   # no CLIP mean/std applied
    same = torch.rand(2, 3, 32, 32)
    assert torch.equal(model.preprocess(same), same)           # [0, 1] at size: untouched
    torch.testing.assert_close(model.encode_image(x, input_range=(-1, 1)),
                               reference_image(model.state_dict(), expected, 2),
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="input_range"):
        model.preprocess(x, input_range=(1, -1))
    with pytest.raises(ValueError, match=r"expected shape \(\*, 3, \*, \*\)"):
        model.encode_image(torch.rand(2, 1, 32, 32))


def test_preprocess_resize_matches_pil_bilinear():
    """Upstream resizes PIL images (torchvision Resize, bilinear): within one uint8 level."""
    from PIL import Image
    model = tiny_model(image_resolution=64, vision_patch_size=16)
    gen = torch.Generator().manual_seed(1)
    small = torch.rand(1, 3, 24, 24, generator=gen)
    img = (F.interpolate(small, size=(80, 80), mode="bilinear") * 255).round().to(torch.uint8)
    pil = Image.fromarray(img[0].permute(1, 2, 0).numpy()).resize((64, 64), Image.BILINEAR)
    expected = torch.from_numpy(np.array(pil)).permute(2, 0, 1).float() / 255
    got = model.preprocess(img.float(), input_range=(0, 255))[0]
    assert (got - expected).abs().max() <= 1.01 / 255


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def save_torchscript_archive(model, path):
    """An archive shaped like OpenAI's ViT-B-32.pt: the parameters under OpenAI names plus the
    integer attributes input_resolution, context_length and vocab_size."""
    class Archive(nn.Module):
        def forward(self, tokens):
            return self.ln_final(self.token_embedding(tokens)) @ self.text_projection
    archive = Archive()
    for name, child in model.named_children():
        archive.add_module(name, child)
    for name, param in model.named_parameters(recurse=False):
        archive.register_parameter(name, param)
    for name, value in (("input_resolution", 32), ("context_length", 12), ("vocab_size", 64)):
        archive.register_buffer(name, torch.tensor(value))
    torch.jit.save(torch.jit.trace(archive, tokens_for()), str(path))


def open_clip_custom_text(state):
    """open_clip's CustomTextCLIP layout: the text tower under text., logit_scale on top."""
    return {("text." + k if k.startswith(TEXT_NAMES) else k): v for k, v in state.items()}


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_from_file_loads_openai_and_open_clip_namings(tmp_path):
    model = tiny_model(seed=3)
    state = model.state_dict()
    files = {
        "openai_state.pt": state,
        "openai_fp16.pt": {k: v.half() for k, v in state.items()},       # read as float32
        "open_clip_pretrained.bin": state,                        # same keys as OpenAI
        "open_clip_train.pt": {"epoch": 5, "state_dict": {"module." + k: v
                                                          for k, v in state.items()}},
        "open_clip_custom_text.pt": open_clip_custom_text(state),
        "compiled_ddp.pt": {"state_dict": {"module._orig_mod." + k: v
                                           for k, v in open_clip_custom_text(state).items()}},
    }
    images, tokens = torch.rand(2, 3, 40, 40), tokens_for()
    for name, content in files.items():
        torch.save(content, tmp_path / name)
    save_torchscript_archive(model, tmp_path / "ViT-B-32.pt")
    with zipfile.ZipFile(tmp_path / "ViT-B-32.pt") as archive:
        assert any(n.endswith("constants.pkl") for n in archive.namelist())
    for name in [*files, "ViT-B-32.pt"]:
        loaded = ClipViT.from_file(str(tmp_path / name), **HEADS)
        assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
        reference = model if name != "openai_fp16.pt" else ClipViT.from_state_dict(
            {k: v.float() for k, v in files[name].items()}, **HEADS)
        assert torch.equal(loaded.encode_image(images), reference.encode_image(images)), name
        assert torch.equal(loaded.encode_text(tokens), reference.encode_text(tokens)), name


def test_sizes_are_inferred_from_the_state_dict():
    sizes = dict(embed_dim=16, image_resolution=48, vision_layers=3, vision_width=128,
                 vision_patch_size=16, context_length=9, vocab_size=40, transformer_width=64,
                 transformer_layers=1)
    state = ClipViT(**sizes).state_dict()
    assert infer_sizes(state) == sizes
    model = ClipViT.from_state_dict(state)                      # heads: width // 64
    assert model.visual.transformer.resblocks[0].attn.num_heads == 2
    assert model.transformer.resblocks[0].attn.num_heads == 1
    assert model.visual.input_resolution == 48 and model.context_length == 9


@pytest.mark.filterwarnings("ignore:`torch.jit:FutureWarning")
def test_load_errors_name_file_and_keys(tmp_path):
    with pytest.raises(FileNotFoundError, match="not_there.pt"):
        ClipViT.from_file(str(tmp_path / "not_there.pt"))
    (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read CLIP checkpoint .*broken.pt"):
        ClipViT.from_file(str(tmp_path / "broken.pt"))
    with zipfile.ZipFile(tmp_path / "bad_archive.pt", "w") as archive:
        archive.writestr("bad_archive/constants.pkl", b"garbage")
    with pytest.raises(ValueError, match="TorchScript archive"):
        ClipViT.from_file(str(tmp_path / "bad_archive.pt"))

    state = tiny_model().state_dict()
    wrong = {**state, "text_projection": torch.zeros(32, 99)}
    with pytest.raises(ValueError, match=r"shape text_projection: file \(32, 99\) vs model "
                                         r"\(32, 24\)"):
        ClipViT.from_state_dict(wrong, **HEADS)
    gone = {k: v for k, v in state.items() if k != "visual.ln_post.bias"}
    with pytest.raises(ValueError, match="missing visual.ln_post.bias"):
        ClipViT.from_state_dict(gone, **HEADS)
    extra = {**state, "visual.transformer.resblocks.0.ls_1.gamma": torch.ones(32),
             "logit_bias": torch.zeros(())}
    with pytest.raises(ValueError, match=r"unexpected visual\.transformer\.resblocks\.0\.ls_1"
                                         r"\.gamma\n  unexpected logit_bias"):
        ClipViT.from_state_dict(extra, **HEADS)
    torch.save({k: v for k, v in state.items() if k != "visual.proj"}, tmp_path / "no_proj.pt")
    with pytest.raises(ValueError, match=r"no_proj.pt is not a CLIP ViT .*missing visual.proj"):
        ClipViT.from_file(str(tmp_path / "no_proj.pt"), **HEADS)
    resnet = {"visual.attnpool.c_proj.weight": torch.zeros(4, 4), **{
        k: v for k, v in state.items() if not k.startswith("visual.")}}
    with pytest.raises(ValueError, match="ResNet CLIP"):
        ClipViT.from_state_dict(resnet)
    with pytest.raises(ValueError, match="Hugging Face"):
        ClipViT.from_state_dict({"vision_model.embeddings.class_embedding": torch.zeros(4)})
    with pytest.raises(ValueError, match="vision_heads=0 does not divide width 32"):
        ClipViT.from_state_dict(state)                           # 32 // 64 == 0: pass heads
    with pytest.raises(ValueError, match="activation"):
        ClipViT(**TINY, activation="relu")


# --------------------------------------------------------------------------------------------
# Tokenizer
# --------------------------------------------------------------------------------------------

MERGES = ["h e", "l l", "l o</w>", "he ll", "hell o</w>", "c a", "ca t</w>", "' s</w>"]


def write_merges(path, merges, header="#version: 0.2"):
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("\n".join([header, *merges]) + "\n")
    return str(path)


@pytest.fixture
def tok(tmp_path):
    return ClipTokenizer(write_merges(tmp_path / "bpe.txt.gz", MERGES))


def test_bytes_to_unicode_table():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert all(not c.isspace() and c.isprintable() for c in table.values())
    assert table[ord("a")] == "a" and table[ord("!")] == "!" and table[0xE9] == "é"
    # the 68 unprintable bytes take chr(256), chr(257), ... in byte order: space -> "Ġ"
    assert [table[b] for b in range(33)] == [chr(256 + b) for b in range(33)]
    assert table[ord(" ")] == "\u0120" and table[0xAD] == chr(256 + 67)


def test_vocab_follows_clip_construction(tok):
    symbols = list(bytes_to_unicode().values())
    n = len(MERGES)
    assert tok.vocab_size == 512 + n + 2
    assert [tok.encoder[s] for s in symbols] == list(range(256))
    assert [tok.encoder[s + "</w>"] for s in symbols] == list(range(256, 512))
    assert [tok.encoder["".join(m.split())] for m in MERGES] == list(range(512, 512 + n))
    assert (tok.sot_id, tok.eot_id) == (512 + n, 513 + n)
    # "a</w>" is 256 + 64 = 320 under this rule, CLIP's id for the word "a"
    assert tok.encode("a") == [320]


def test_full_size_merges_file_gives_clip_ids(tmp_path):
    merges = [f"q{i} z" for i in range(N_MERGES + 5)]       # lines past 48,894 are ignored
    big = ClipTokenizer(write_merges(tmp_path / "big.txt.gz", merges))
    assert (big.vocab_size, big.sot_id, big.eot_id) == (49408, 49406, 49407)
    assert big.encoder[f"q{N_MERGES - 1}z"] == 49405 and f"q{N_MERGES}z" not in big.encoder


def test_bpe_applies_merges_by_rank(tok):
    assert tok.bpe("hello") == ("hello</w>",)
    assert tok.bpe("llo") == ("ll", "o</w>")            # "l l" (rank 1) before "l o</w>" (2)
    assert tok.bpe("lo") == ("lo</w>",)
    assert tok.bpe("x") == ("x</w>",)
    e = tok.encoder
    # "ca t</w>" needs a word-final t: inside "cats" only "c a" applies
    assert tok.encode("hello cats") == [e["hello</w>"], e["ca"], e["t"], e["s</w>"]]
    assert tok.encode("cat's") == [e["cat</w>"], e["'s</w>"]]


def test_cleanup_and_split(tok):
    assert tok.pre_tokenize("  A\tMAN's  dog,\n 2 cats!! ") == \
        ["a", "man", "'s", "dog", ",", "2", "cats", "!!"]
    assert tok.pre_tokenize("Café x² 123 ok_go") == \
        ["café", "x", "²", "1", "2", "3", "ok", "_", "go"]
    assert tok.pre_tokenize("man\u2019s \u201cdog\u201d &amp;amp;") == \
        ["man", "'s", '"', "dog", '"', "&"]
    assert tok.encode("<|endoftext|>") == [tok.eot_id]
    word = "é"                                   # two UTF-8 bytes -> two byte characters
    assert tok.encode(word) == [tok.encoder["Ã"], tok.encoder["©</w>"]]
    assert tok.decode(tok.encode("hello café")) == "hello café "


def test_special_token_spellings(tmp_path):
    """The start / end ids are OpenAI's either way; the text read as them is OpenAI's
    "<|startoftext|>" / "<|endoftext|>" or open_clip's "<start_of_text>" / "<end_of_text>", the
    other spelling being ordinary characters."""
    path = write_merges(tmp_path / "bpe.txt.gz", MERGES)
    openai, open_clip = ClipTokenizer(path), ClipTokenizer(path, special_tokens="open_clip")
    assert (openai.sot_id, openai.eot_id) == (open_clip.sot_id, open_clip.eot_id)
    pieces = openai.encode("< end _ of _ text >")                # the same pre-tokens, spaced
    assert openai.eot_id not in pieces and len(pieces) >= 7
    assert openai.encode("cat <|endoftext|><END_OF_TEXT>") == \
        [openai.encoder["cat</w>"], openai.eot_id, *pieces]
    assert open_clip.encode("<START_OF_TEXT>cat <end_of_text>") == \
        [open_clip.sot_id, open_clip.encoder["cat</w>"], open_clip.eot_id]
    assert open_clip.encode("<|endoftext|>") == open_clip.encode("<| endoftext |>")
    assert open_clip.decode([open_clip.sot_id]) == "<start_of_text>"
    assert openai.decode([openai.eot_id]) == "<|endoftext|>"
    with pytest.raises(ValueError, match="special_tokens: expected one of"):
        ClipTokenizer(path, special_tokens="hf")


def test_cleanup_without_the_optional_packages(tmp_path, monkeypatch):
    """Without ftfy and regex: Python's Unicode categories for letters and numbers, NFC and
    curly quotes only from ftfy's fixes, and a warning saying so."""
    from t2i_fast.metrics import clip_tokenizer
    monkeypatch.setattr(clip_tokenizer, "ftfy", None)
    monkeypatch.setattr(clip_tokenizer, "regex", None)
    clip_tokenizer._split_pattern.cache_clear()
    try:
        with pytest.warns(UserWarning, match="ftfy is not installed"):
            bare = ClipTokenizer(write_merges(tmp_path / "bpe.txt.gz", MERGES))
        assert bare.pre_tokenize("  Cafe\u0301 x² 12 \u2018it\u2019s\u201d &amp;amp; ﬁ\t") == \
            ["café", "x", "²", "1", "2", "'", "it", "'s", '"', "&", "ﬁ"]
    finally:
        clip_tokenizer._split_pattern.cache_clear()


def test_tokenize_rows(tok):
    out = tok.tokenize(["hello", "a cat's hello"], context_length=8)
    e = tok.encoder
    assert out.dtype == torch.long and out.shape == (2, 8)
    assert out[0].tolist() == [tok.sot_id, e["hello</w>"], tok.eot_id, 0, 0, 0, 0, 0]
    assert out[1].tolist() == [tok.sot_id, 320, e["cat</w>"], e["'s</w>"], e["hello</w>"],
                               tok.eot_id, 0, 0]
    long = tok.tokenize("a a a a a a a a a a", context_length=6)
    assert long.tolist() == [[tok.sot_id, 320, 320, 320, 320, tok.eot_id]]
    assert tok.tokenize("hello").shape == (1, 77)
    with pytest.raises(ValueError, match="more than context_length 6"):
        tok.tokenize("a a a a a a a a a a", context_length=6, truncate=False)


def test_tokenizer_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="bpe_simple_vocab_16e6.txt.gz"):
        ClipTokenizer(tmp_path / "bpe_simple_vocab_16e6.txt.gz")
    (tmp_path / "plain.txt.gz").write_text("#version: 0.2\nh e\n")
    with pytest.raises(ValueError, match="cannot read CLIP BPE merges file .*plain.txt.gz"):
        ClipTokenizer(tmp_path / "plain.txt.gz")
    bad = write_merges(tmp_path / "bad.txt.gz", ["h e", "a b c"])
    with pytest.raises(ValueError, match="line 3: expected a merge"):
        ClipTokenizer(bad)
