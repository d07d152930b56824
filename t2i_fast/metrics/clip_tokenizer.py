"""CLIP's byte-level BPE tokenizer, reading OpenAI's merges from a local file.

    tok = ClipTokenizer("bpe_simple_vocab_16e6.txt.gz")      # path argument; nothing downloaded
    tok.encode("a photo of a cat")                           # [320, 1125, 539, 320, 2368]
    tok.tokenize(["a photo of a cat"])       # LongTensor (1, 77): 49406, ..., 49407, 0, ...

The file (clip/bpe_simple_vocab_16e6.txt.gz in OpenAI's CLIP repository, also shipped inside
open_clip) is a gzip text file: one header line, then one merge "left right" per line, best
first. The vocabulary is built as CLIP builds it: the 256 byte characters of `bytes_to_unicode`
in its order (ids 0-255), the same with "</w>" appended (256-511), the concatenation of each of
the first 48,894 merges (512-49405), then the start token (49406) and the end token (49407):
49,408 ids.

Special tokens. The ids are OpenAI's in both spellings below; what differs is the text that
stands for them inside a caption, which is read as the special id rather than as characters:
  * special_tokens="openai" (default; OpenAI's `clip.tokenize`, which GR-GAN's CMD uses):
    "<|startoftext|>" and "<|endoftext|>";
  * special_tokens="open_clip" (open_clip's SimpleTokenizer): "<start_of_text>" and
    "<end_of_text>".
The other spelling is ordinary text ("<", "end", "_", ... ). Rows are [start, ids..., end]
padded with 0; a row longer than the context is cut and its last id set to the end token.

Text cleanup and splitting follow CLIP exactly when the optional packages of the `eval` extra
are installed (as open_clip requires them):
  * ftfy: `ftfy.fix_text`, then a double html.unescape, whitespace runs to one space,
    lower-casing. Without ftfy only its most common effects are reproduced (Unicode NFC,
    curly quotes U+2018-U+201B -> ', U+201C-U+201F -> "); mojibake repair, full-width
    folding, ligature splitting and control-character removal are skipped.
  * regex: CLIP's pattern with \\p{L} (letters) and \\p{N} (numbers). Without it the two
    classes are built from Python's unicodedata categories L* and N*, whose Unicode version
    (14.0 in Python 3.11) lacks the letters added since.
Whitespace is Python's str.isspace, as open_clip's `" ".join(text.split())`; OpenAI's
regex \\s differs only on U+001C-U+001F, which ftfy removes.
"""
import functools
import gzip
import html
import os
import re
import sys
import unicodedata
import warnings

import torch

try:
    import ftfy
except ImportError:   # optional: see the module docstring for what is lost without it
    ftfy = None
try:
    import regex
except ImportError:   # optional: see the module docstring
    regex = None

# the text standing for the start and end tokens, per tokenizer being followed
SPECIAL_TOKENS = {"openai": ("<|startoftext|>", "<|endoftext|>"),
                  "open_clip": ("<start_of_text>", "<end_of_text>")}
N_MERGES = 49152 - 256 - 2     # the merges CLIP reads: 48,894
_AFTER_SPECIALS = r"|'s|'t|'re|'ve|'m|'ll|'d|[{L}]+|[{N}]|[^\s{L}{N}]+"


@functools.lru_cache(maxsize=None)
def bytes_to_unicode():
    """{byte: printable character}, a bijection on 0..255 in CLIP's (= GPT-2's) order.

    Printable Latin-1 bytes map to themselves; the other 68 bytes map, in increasing order,
    to chr(256), chr(257), ... so that no byte becomes whitespace or a control character.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
                 *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=None)
def _category_classes():
    """(letters, numbers): \\p{L} and \\p{N} spelled out as `re` character-class ranges."""
    ranges = {"L": [], "N": []}
    for cp in range(sys.maxunicode + 1):
        major = unicodedata.category(chr(cp))[0]
        if major in ranges:
            spans = ranges[major]
            if spans and spans[-1][1] == cp - 1:
                spans[-1][1] = cp
            else:
                spans.append([cp, cp])

    def klass(spans):
        return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in spans)
    return klass(ranges["L"]), klass(ranges["N"])


@functools.lru_cache(maxsize=None)
def _split_pattern(specials):
    """CLIP's pre-tokenisation regex: the special-token texts `specials`, then CLIP's rules."""
    alternatives = "|".join(re.escape(t) for t in specials)
    if regex is not None:
        return regex.compile(alternatives + _AFTER_SPECIALS.format(L=r"\p{L}", N=r"\p{N}"),
                             regex.IGNORECASE)
    letters, numbers = _category_classes()
    return re.compile(alternatives + _AFTER_SPECIALS.format(L=letters, N=numbers),
                      re.IGNORECASE)


def clean_text(text):
    """CLIP's basic_clean + whitespace_clean + lower(): see the module docstring."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    else:
        text = unicodedata.normalize("NFC", text)
        text = re.sub("[\u2018-\u201b]", "'", re.sub("[\u201c-\u201f]", '"', text))
    text = html.unescape(html.unescape(text))
    return " ".join(text.split()).lower()


def read_merges(path):
    """The first N_MERGES merge pairs of a CLIP BPE file (gzip, one header line)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"CLIP BPE merges file not found: {path} (expected OpenAI's "
            "bpe_simple_vocab_16e6.txt.gz, from clip/ in the CLIP repository; nothing is "
            "downloaded)")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"cannot read CLIP BPE merges file {path} (expected gzip-compressed "
                         f"UTF-8 text): {err}") from err
    merges = []
    for number, line in enumerate(lines[1:N_MERGES + 1], start=2):
        if not line.strip():
            continue          # a trailing newline in short files; the real file has none inside
        pair = tuple(line.split())
        if len(pair) != 2:
            raise ValueError(f"{path}, line {number}: expected a merge 'left right', "
                             f"got {line!r}")
        merges.append(pair)
    return merges


class ClipTokenizer:
    """CLIP's tokenizer over the merges of `bpe_path`; special_tokens: "openai" or
    "open_clip", the text read as the start / end token (see the module docstring)."""

    def __init__(self, bpe_path, special_tokens="openai"):
        if special_tokens not in SPECIAL_TOKENS:
            raise ValueError(f"ClipTokenizer special_tokens: expected one of "
                             f"{sorted(SPECIAL_TOKENS)}, got {special_tokens!r}")
        if ftfy is None:
            warnings.warn("ftfy is not installed: CLIP text cleanup is approximated and differs "
                          "from CLIP's on rare characters (pip install 't2i_fast[eval]')",
                          stacklevel=2)
        self.merges = read_merges(os.fspath(bpe_path))
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in self.merges]
        specials = SPECIAL_TOKENS[special_tokens]
        vocab += specials
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.sot_id, self.eot_id = (self.encoder[t] for t in specials)
        self.vocab_size = len(vocab)
        self._cache = {t: (t,) for t in specials}
        self._pattern = _split_pattern(specials)

    def pre_tokenize(self, text):
        """The cleaned text split into CLIP's word pieces (before BPE)."""
        return self._pattern.findall(clean_text(text))

    def bpe(self, word):
        """One pre-token (byte characters) -> its BPE symbols; the last one ends in "</w>".

        Repeatedly merges every occurrence (left to right, not overlapping) of the adjacent
        pair with the lowest merge rank until no adjacent pair is a merge.
        """
        if word in self._cache:
            return self._cache[word]
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        while len(symbols) > 1:
            pairs = set(zip(symbols, symbols[1:]))
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(symbols):
                if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                    merged.append(symbols[i] + symbols[i + 1])
                    i += 2
                else:
                    merged.append(symbols[i])
                    i += 1
            symbols = merged
        self._cache[word] = tuple(symbols)
        return self._cache[word]

    def encode(self, text):
        """text -> BPE ids, without start/end tokens."""
        ids = []
        for piece in self.pre_tokenize(text):
            word = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self.bpe(word))
        return ids

    def decode(self, ids):
        """BPE ids -> text, word ends ("</w>") becoming spaces, as CLIP's decode. Every vocab
        entry, the special tokens included, is spelled in byte characters."""
        text = "".join(self.decoder[int(i)] for i in ids)
        raw = bytearray(self.byte_decoder[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ")

    def tokenize(self, texts, context_length=77, truncate=True):
        """texts (str or list of B str) -> LongTensor (B, context_length):
        [sot_id, ids..., eot_id, 0, ...].

        truncate: cut a row that is too long to context_length and end it with eot_id (as
        clip.tokenize(..., truncate=True)); False raises ValueError instead (CLIP's default).
        """
        if isinstance(texts, str):
            texts = [texts]
        if context_length < 2:
            raise ValueError(f"ClipTokenizer.tokenize: context_length must be >= 2, got "
                             f"{context_length}")
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > context_length:
                if not truncate:
                    raise ValueError(f"ClipTokenizer.tokenize: text {row} ({text[:60]!r}...) "
                                     f"has {len(ids)} tokens, more than context_length "
                                     f"{context_length}; pass truncate=True to cut it")
                ids = ids[:context_length - 1] + [self.eot_id]
            out[row, :len(ids)] = torch.tensor(ids)
        return out
