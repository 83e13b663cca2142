// Package tokenizer encodes text to token ids and decodes ids back to text
// for Mixtral-style models, reading the Hugging Face tokenizer.json that
// ships with a checkpoint.
//
// It supports the layout that transformers' LlamaConverter produces for
// SentencePiece BPE vocabularies with byte fallback (Llama, Mistral v1,
// Mixtral-8x7B): a BPE model with byte_fallback, the normalizer
// Sequence[Prepend("▁"), Replace(" " -> "▁")], no pre-tokenizer, and the
// decoder Sequence[Replace("▁" -> " "), ByteFallback, Fuse, Strip(" ", 1, 0)].
// [Parse] rejects other layouts with [ErrUnsupported] rather than
// tokenizing them wrongly.
//
// # Encoding
//
// [Tokenizer.Encode] applies the dummy prefix "▁" to non-empty text, replaces
// every U+0020 with "▁" (no other normalization: tabs, NBSP and the like are
// kept), splits the result into code points, maps each code point to its
// vocabulary piece or, when it has none, to one byte piece <0xXX> per UTF-8
// byte, and then applies BPE merges, lowest rank first and leftmost first
// among equal ranks, until none applies. The merge loop keeps the symbols in
// a linked list and the candidate merges in a min-heap keyed by (rank,
// position) with lazy invalidation, as the Hugging Face library does, so
// encoding is O(n log n) in the length of the text.
//
// The result equals the Hugging Face tokenizers library on the same
// tokenizer.json, and the SentencePiece and mistral-tokenizer-js reference
// implementations, with these deliberate choices:
//
//   - Literal "<s>", "</s>" and "<unk>" in the text are tokenized as plain
//     characters ("<s>" becomes "<", "s", ">"), as SentencePiece and the
//     JavaScript reference do. The Hugging Face library instead matches them
//     as added tokens (ids 1, 2, 0) and applies the dummy prefix to each
//     segment between them. Treating them as text means user input can
//     never inject control tokens; callers add BOS and EOS explicitly.
//   - Empty text encodes to no ids at all, even when BOS is requested, as in
//     the reference; the Hugging Face library returns [BOS].
//   - A Go string may hold bytes that are not valid UTF-8. Each such byte is
//     encoded as its own byte piece <0xXX> (it takes no part in merges,
//     unless the file has merges for byte pieces), so the original bytes
//     can be recovered from the ids. Rust and Python strings cannot hold such
//     bytes, so no reference behaviour exists for them.
//
// # Decoding
//
// [Tokenizer.Decode] drops special tokens (the added tokens marked special;
// for Mistral v1 these are <unk>, <s> and </s>) and ids outside the
// vocabulary, turns "▁" into a space, joins consecutive byte pieces into
// UTF-8 text, and removes one leading space (the dummy prefix), as the
// Hugging Face decoder with skip_special_tokens does. A run of byte pieces
// that is not valid UTF-8 decodes character by character: every complete,
// valid character is kept and every byte that does not belong to one
// becomes U+FFFD. The Hugging Face ByteFallback decoder replaces every byte
// of such a run with U+FFFD, valid characters included; the two agree
// whenever each run is valid UTF-8, which is always the case for the ids
// of valid UTF-8 text. The per-character rule lets [StreamDecoder] emit each
// character as soon as its last byte arrives and still produce exactly the
// text that Decode produces.
//
// Decode(Encode(s, true)) == s holds for every valid UTF-8 string s that
// does not contain "▁" (U+2581), which the normalizer makes
// indistinguishable from a space.
//
// A [Tokenizer] is immutable once built and safe for concurrent use. A
// [StreamDecoder] holds the state of one stream and is not.
package tokenizer
