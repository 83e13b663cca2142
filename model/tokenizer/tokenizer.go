package tokenizer

import (
	"errors"
	"fmt"
	"os"
)

// Errors returned by [Parse] and [Load], wrapped with a description of what
// is wrong; test for them with [errors.Is].
var (
	// ErrInvalid reports a tokenizer.json that is malformed or inconsistent:
	// bad JSON, a vocabulary whose ids are not dense and unique, a merge
	// naming an unknown piece, a missing byte-fallback or special piece.
	ErrInvalid = errors.New("tokenizer: invalid tokenizer.json")

	// ErrUnsupported reports a well-formed tokenizer.json of a kind this
	// package does not implement, such as a non-BPE model or a different
	// normalizer, pre-tokenizer or decoder.
	ErrUnsupported = errors.New("tokenizer: unsupported tokenizer.json")
)

// Piece strings with a fixed role in the supported layout.
const (
	bosPiece = "<s>"
	eosPiece = "</s>"
	// metaSpace is what the normalizer turns U+0020 into, and what the
	// dummy prefix consists of.
	metaSpace = '▁'
)

// noID marks the absence of an id in lookup tables.
const noID = -1

// A Tokenizer encodes text to token ids and decodes ids to text. It is
// immutable after [Parse] or [Load] and safe for concurrent use.
type Tokenizer struct {
	pieces []string         // id -> piece, as in tokenizer.json
	vocab  map[string]int32 // piece -> id

	asciiIDs [128]int32       // ASCII code point -> id of its one-character piece, or noID
	runeIDs  map[rune]int32   // other code points with a one-character piece
	byteIDs  [256]int32       // byte -> id of the byte-fallback piece <0xXX>
	merges   map[uint64]merge // pairKey(left, right) -> merge

	// Decoding tables, indexed by id.
	text    []string // piece with "▁" replaced by " "
	byteOf  []int16  // byte value of a byte piece, or -1
	special []bool   // dropped by Decode

	bos, eos int
}

// merge is the result of merging one pair of pieces: the merged piece and
// the merge's rank (its index in the merges list; lower merges first).
type merge struct {
	rank int32
	id   int32
}

// pairKey packs a pair of ids into a map key.
func pairKey(left, right int32) uint64 {
	return uint64(uint32(left))<<32 | uint64(uint32(right))
}

// Load reads and parses the tokenizer.json file at path; see [Parse].
func Load(path string) (*Tokenizer, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("tokenizer: %w", err)
	}
	t, err := Parse(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return t, nil
}

// VocabSize returns the number of pieces in the vocabulary. Valid ids are
// 0 through VocabSize()-1.
func (t *Tokenizer) VocabSize() int { return len(t.pieces) }

// BOS returns the id of the beginning-of-sequence token "<s>".
func (t *Tokenizer) BOS() int { return t.bos }

// EOS returns the id of the end-of-sequence token "</s>".
func (t *Tokenizer) EOS() int { return t.eos }

// Piece returns the vocabulary piece of id as it appears in tokenizer.json
// (for example "▁Hello" or "<0x0A>"), and whether id is in the vocabulary.
func (t *Tokenizer) Piece(id int) (string, bool) {
	if id < 0 || id >= len(t.pieces) {
		return "", false
	}
	return t.pieces[id], true
}

// ID returns the id of a vocabulary piece, and whether the piece exists.
func (t *Tokenizer) ID(piece string) (int, bool) {
	id, ok := t.vocab[piece]
	return int(id), ok
}

// IsSpecial reports whether id is a special token (for Mistral v1: <unk>,
// <s> and </s>), which [Tokenizer.Decode] drops.
func (t *Tokenizer) IsSpecial(id int) bool {
	return id >= 0 && id < len(t.special) && t.special[id]
}
