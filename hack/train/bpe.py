"""A byte-fallback BPE trainer that writes Hugging Face tokenizer.json files
laid out like Mistral v1's (SentencePiece-style: "▁" for spaces and as a
dummy prefix, <unk>/<s>/</s>, the 256 <0xNN> byte pieces, then the pieces).

Merges are learned inside words ("▁" plus the characters up to the next
space), so no piece holds a "▁" after its first character, and applying the
merges to a whole text by rank gives the same pieces as applying them word by
word. Ties between equally frequent pairs go to the lexicographically smaller
pair, so training is deterministic.
"""

import collections
import json

SPACE = "\u2581"
SPECIALS = ["<unk>", "<s>", "</s>"]


def words(text):
    """The words of text after the normalizer: a dummy prefix and "▁" for " "."""
    return [SPACE + w for w in text.split(" ")]


def train(texts, vocab_size):
    """Returns (pieces, merges) learned from texts.

    pieces are the non-special, non-byte pieces in id order (characters
    first, then merge results); merges are (left, right) pairs by rank.
    """
    freq = collections.Counter()
    for t in texts:
        freq.update(words(t))
    chars = sorted({c for w in freq for c in w})
    budget = vocab_size - len(SPECIALS) - 256 - len(chars)
    if budget < 0:
        raise ValueError(f"vocab_size {vocab_size} is below the {len(chars)} characters plus bytes and specials")

    seqs = [list(w) for w in freq]
    counts = [freq[w] for w in freq]
    pair_count = collections.Counter()
    where = collections.defaultdict(set)
    for i, s in enumerate(seqs):
        for a, b in zip(s, s[1:]):
            pair_count[a, b] += counts[i]
            where[a, b].add(i)

    merges, pieces = [], list(chars)
    for _ in range(budget):
        if not pair_count:
            break
        best = min(pair_count.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if pair_count[best] < 2:
            break
        a, b = best
        merged = a + b
        merges.append(best)
        pieces.append(merged)
        for i in sorted(where.pop(best, ())):
            s, c = seqs[i], counts[i]
            for x, y in zip(s, s[1:]):
                pair_count[x, y] -= c
                if pair_count[x, y] <= 0:
                    del pair_count[x, y]
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and s[j] == a and s[j + 1] == b:
                    out.append(merged)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
            for x, y in zip(out, out[1:]):
                pair_count[x, y] += c
                where[x, y].add(i)
        pair_count.pop(best, None)
    return pieces, merges


def tokenizer_json(pieces, merges):
    """The tokenizer.json document (a dict) for the learned pieces and merges."""
    vocab = {}
    for p in SPECIALS:
        vocab[p] = len(vocab)
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for p in pieces:
        if p in vocab:
            raise ValueError(f"duplicate piece {p!r}")
        vocab[p] = len(vocab)
    added = [
        {"id": i, "content": p, "single_word": False, "lstrip": False, "rstrip": False,
         "normalized": False, "special": True}
        for i, p in enumerate(SPECIALS)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": SPACE},
            {"type": "Replace", "pattern": {"String": " "}, "content": SPACE},
        ]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}},
        },
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": SPACE}, "content": " "},
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0},
        ]},
        "model": {
            "type": "BPE", "dropout": None, "unk_token": "<unk>",
            "continuing_subword_prefix": None, "end_of_word_suffix": None,
            "fuse_unk": True, "byte_fallback": True,
            "vocab": vocab,
            "merges": [f"{a} {b}" for a, b in merges],
        },
    }


class Encoder:
    """Encodes text with learned merges, word by word, memoised."""

    def __init__(self, doc):
        self.vocab = doc["model"]["vocab"]
        self.rank = {tuple(m.split(" ")): r for r, m in enumerate(doc["model"]["merges"])}
        self.cache = {}

    def word(self, w):
        ids = self.cache.get(w)
        if ids is not None:
            return ids
        s = []
        for ch in w:
            if ch in self.vocab:
                s.append(ch)
            else:
                s.extend(f"<0x{b:02X}>" for b in ch.encode("utf-8"))
        while len(s) > 1:
            ranks = [(self.rank.get((x, y), 1 << 30), j) for j, (x, y) in enumerate(zip(s, s[1:]))]
            r, j = min(ranks)
            if r == 1 << 30:
                break
            s[j:j + 2] = [s[j] + s[j + 1]]
        ids = [self.vocab[p] for p in s]
        self.cache[w] = ids
        return ids

    def encode(self, text):
        out = []
        for w in words(text):
            out.extend(self.word(w))
        return out
