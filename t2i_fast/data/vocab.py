"""Tokenisation and vocabulary of the AttnGAN layout (reference §2.4).

    vocab = Vocabulary.build(["a red circle", "a blue square"])
    ids = vocab.encode("A red square!")       # [1, 3, 5]; unknown words raise
    vocab.decode(ids)                          # 'a red square'

Tokenisation is AttnGAN's: lower case, the regex \\w+, ASCII only. Id 0 is '<end>', which also
pads captions; the words follow from 1.
"""
import re

_WORD = re.compile(r"\w+")
END = "<end>"


def tokenize(text):
    """Lower-cased \\w+ tokens of `text`, non-ASCII characters dropped (AttnGAN)."""
    tokens = (t.encode("ascii", "ignore").decode("ascii") for t in _WORD.findall(text.lower()))
    return [t for t in tokens if t]


class Vocabulary:
    """Word <-> id maps. ixtoword: {id: word} with 0 = '<end>' (the AttnGAN pickle's maps)."""

    def __init__(self, ixtoword):
        ixtoword = {int(k): str(v) for k, v in ixtoword.items()}
        if ixtoword.get(0) != END:
            raise ValueError(f"Vocabulary: id 0 must be {END!r}, got {ixtoword.get(0)!r}")
        if sorted(ixtoword) != list(range(len(ixtoword))):
            raise ValueError("Vocabulary: ids must be 0..N-1 without gaps")
        self.ixtoword = ixtoword
        self.wordtoix = {w: i for i, w in ixtoword.items()}
        if len(self.wordtoix) != len(ixtoword):
            raise ValueError("Vocabulary: a word appears under two ids")

    @classmethod
    def build(cls, texts):
        """Every word of `texts` (strings or token lists), in order of first appearance."""
        words = {}
        for text in texts:
            for w in (tokenize(text) if isinstance(text, str) else text):
                words.setdefault(w, None)
        return cls({0: END, **{i: w for i, w in enumerate(words, start=1)}})

    @classmethod
    def from_words(cls, words):
        return cls({0: END, **{i: w for i, w in enumerate(words, start=1)}})

    def __len__(self):
        return len(self.ixtoword)

    def __contains__(self, word):
        return word in self.wordtoix

    def encode(self, text):
        """Ids of the tokens of `text`; a clear error lists the words not in the vocabulary."""
        tokens = tokenize(text)
        unknown = [t for t in tokens if t not in self.wordtoix]
        if unknown:
            raise KeyError(f"caption {text!r}: words not in the vocabulary: {unknown}")
        if not tokens:
            raise ValueError(f"caption {text!r} has no words")
        return [self.wordtoix[t] for t in tokens]

    def decode(self, ids):
        return " ".join(self.ixtoword[int(i)] for i in ids if int(i) != 0)

    def to_list(self):
        return [self.ixtoword[i] for i in range(1, len(self))]
