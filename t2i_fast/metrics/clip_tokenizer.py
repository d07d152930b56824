"""CLIP's byte-level BPE tokenizer, reading OpenAI's merges from a local file.

    tok = ClipTokenizer("bpe_simple_vocab_16e6.txt.gz")      # path argument; nothing downloaded
    tok.encode("a photo of a cat")                           # [320, 1125, 539, 320, 2368]
    tok.tokenize(["a photo of a cat"])       # LongTensor (1, 77): 49406, ..., 49407, 0, ...

The file (clip/bpe_simple_vocab_16e6.txt.gz in OpenAI's CLIP repository) is a gzip text file:
one header line, then one merge "left right" per line, best first. The vocabulary is built as
CLIP builds it: the 256 byte characters of `bytes_to_unicode` in its order (ids 0-255), the
same with "</w>" appended (256-511), the concatenation of each of the first 48,894 merges
(512-49405), then <|startoftext|> (49406) and <|endoftext|> (49407): 49,408 ids.

Differences from OpenAI's SimpleTokenizer, all in rare characters:
  * Text cleanup: ftfy.fix_text runs when ftfy is installed. Without it only its most common
    effects are reproduced (Unicode NFC, curly quotes U+2018-U+201B -> ', U+201C-U+201F -> ");
    mojibake repair, full-width folding, ligature splitting and control-character removal are
    skipped. The double html.unescape, whitespace collapsing and lower-casing are as CLIP's.
  * Splitting: CLIP's pattern uses the `regex` module's \\p{L} (letters) and \\p{N} (numbers).
    Python's `re` lacks them, so the two classes are built from unicodedata's categories
    L* and N* (Python's Unicode version, which may differ from the `regex` module's), and \\s
    is `re`'s whitespace rather than the Unicode White_Space property.
"""
import functools
import gzip
import html
import os
import re
import sys
import unicodedata

import torch

try:
    import ftfy
except ImportError:   # optional: see the module docstring for what is lost without it
    ftfy = None

SOT, EOT = "<|startoftext|>", "<|endoftext|>"
N_MERGES = 49152 - 256 - 2     # the merges CLIP reads: 48,894


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
def _split_pattern():
    """CLIP's pre-tokenisation regex with \\p{L} and \\p{N} spelled out as character classes."""
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
    letters, numbers = klass(ranges["L"]), klass(ranges["N"])
    return re.compile(r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d"
                      rf"|[{letters}]+|[{numbers}]|[^\s{letters}{numbers}]+", re.IGNORECASE)


def clean_text(text):
    """CLIP's basic_clean + whitespace_clean + lower(): see the module docstring."""
    if ftfy is not None:
        text = ftfy.fix_text(text)
    else:
        text = unicodedata.normalize("NFC", text)
        text = re.sub("[\u2018-\u201b]", "'", re.sub("[\u201c-\u201f]", '"', text))
    text = html.unescape(html.unescape(text))
    return re.sub(r"\s+", " ", text).strip().lower()


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
    """CLIP's tokenizer over the merges of `bpe_path` (see the module docstring)."""

    def __init__(self, bpe_path):
        self.merges = read_merges(os.fspath(bpe_path))
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in self.merges]
        vocab += [SOT, EOT]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.decoder = dict(enumerate(vocab))
        self.ranks = {pair: rank for rank, pair in enumerate(self.merges)}
        self.sot_id, self.eot_id = self.encoder[SOT], self.encoder[EOT]
        self.vocab_size = len(vocab)
        self._cache = {SOT: (SOT,), EOT: (EOT,)}
        self._pattern = _split_pattern()

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
        [SOT, ids..., EOT, 0, ...].

        truncate: cut a row that is too long to context_length and end it with EOT (as
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
