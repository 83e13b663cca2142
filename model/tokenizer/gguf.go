package tokenizer

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"slices"

	"github.com/moegrid/moegrid/model/gguf"
)

// The GGUF metadata keys of a tokenizer, as llama.cpp writes them.
const (
	KeyGGUFModel     = "tokenizer.ggml.model"
	KeyGGUFTokens    = "tokenizer.ggml.tokens"
	KeyGGUFScores    = "tokenizer.ggml.scores"
	KeyGGUFTokenType = "tokenizer.ggml.token_type"
	KeyGGUFBOS       = "tokenizer.ggml.bos_token_id"
	KeyGGUFEOS       = "tokenizer.ggml.eos_token_id"
)

// GGUF token types (llama.cpp's llama_token_type).
const (
	ggufNormal      = 1
	ggufUnknown     = 2
	ggufControl     = 3
	ggufUserDefined = 4
	ggufUnused      = 5
	ggufByte        = 6
)

// maxGGUFPieceLen bounds the pieces whose splits become merges: a piece
// longer than any real vocabulary's cannot be reached by merging, and
// splitting it would only cost time.
const maxGGUFPieceLen = 256

// FromGGUF builds the tokenizer a GGUF file describes in its
// tokenizer.ggml.* metadata: the "llama" model, SentencePiece BPE with byte
// fallback, as llama.cpp converts Llama, Mistral and Mixtral vocabularies.
//
// SentencePiece merges by score: of the adjacent pairs whose concatenation
// is a piece, the one making the piece of highest score merges first, the
// leftmost among equals. FromGGUF turns that into the ranked merges the
// encoder runs: every split of every normal or user-defined piece into two
// pieces is a merge, ranked by the merged piece's score (higher first, the
// lower id first among equal scores). Control, unknown and unused pieces
// are special: never produced by merges, dropped by Decode.
func FromGGUF(md *gguf.Metadata) (*Tokenizer, error) {
	model, err := md.String(KeyGGUFModel)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if model != "llama" {
		return nil, fmt.Errorf("%w: %s is %q, want \"llama\" (SentencePiece BPE)", ErrUnsupported, KeyGGUFModel, model)
	}
	tokens, err := md.Strings(KeyGGUFTokens)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(tokens) == 0 || len(tokens) > math.MaxInt32 {
		return nil, fmt.Errorf("%w: %s has %d pieces", ErrInvalid, KeyGGUFTokens, len(tokens))
	}
	scores, err := md.Float32s(KeyGGUFScores)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	if len(scores) != len(tokens) {
		return nil, fmt.Errorf("%w: %d scores for %d pieces", ErrInvalid, len(scores), len(tokens))
	}
	types, err := md.Int32s(KeyGGUFTokenType)
	switch {
	case errors.Is(err, gguf.ErrNotFound):
		types = nil
	case err != nil:
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	case len(types) != len(tokens):
		return nil, fmt.Errorf("%w: %d token types for %d pieces", ErrInvalid, len(types), len(tokens))
	}
	typeOf := func(id int) int32 {
		if types == nil {
			return ggufNormal
		}
		return types[id]
	}

	t := &Tokenizer{pieces: slices.Clone(tokens), vocab: make(map[string]int32, len(tokens))}
	for id, p := range tokens {
		if _, dup := t.vocab[p]; dup {
			return nil, fmt.Errorf("%w: %s: piece %q appears twice", ErrInvalid, KeyGGUFTokens, p)
		}
		t.vocab[p] = int32(id)
	}
	t.merges = ggufMerges(tokens, scores, typeOf, t.vocab)
	if err := t.buildTables(); err != nil {
		return nil, err
	}
	for id := range tokens {
		switch typeOf(id) {
		case ggufUnknown, ggufControl, ggufUnused:
			t.special[id] = true
		}
	}
	for _, s := range []struct {
		key string
		dst *int
	}{{KeyGGUFBOS, &t.bos}, {KeyGGUFEOS, &t.eos}} {
		id, err := md.Uint(s.key)
		if err != nil {
			return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
		}
		if id >= uint64(len(tokens)) {
			return nil, fmt.Errorf("%w: %s %d is not below the %d pieces", ErrInvalid, s.key, id, len(tokens))
		}
		*s.dst = int(id)
		t.special[id] = true
	}
	return t, nil
}

// ggufMerges derives ranked merges from SentencePiece scores.
func ggufMerges(tokens []string, scores []float32, typeOf func(int) int32, vocab map[string]int32) map[uint64]merge {
	var order []int32
	for id, p := range tokens {
		if ty := typeOf(id); (ty == ggufNormal || ty == ggufUserDefined) && len(p) > 1 && len(p) <= maxGGUFPieceLen {
			order = append(order, int32(id))
		}
	}
	slices.SortStableFunc(order, func(a, b int32) int { return cmp.Compare(scores[b], scores[a]) })
	merges := make(map[uint64]merge)
	for rank, id := range order {
		p := tokens[id]
		for i := 1; i < len(p); i++ {
			left, okL := vocab[p[:i]]
			right, okR := vocab[p[i:]]
			if !okL || !okR {
				continue
			}
			key := pairKey(left, right)
			if _, taken := merges[key]; !taken {
				merges[key] = merge{rank: int32(rank), id: id}
			}
		}
	}
	return merges
}

// KeyGGUFUnknown is the metadata key of the unknown piece's id.
const KeyGGUFUnknown = "tokenizer.ggml.unknown_token_id"

// unknownScore is the score of pieces that no merge makes (single
// characters, bytes, specials): below every merge's.
const unknownScore = -1e9

// GGUFMetadata returns t as the tokenizer.ggml.* metadata llama.cpp reads,
// for writing a GGUF file: model "llama", the pieces by id, their scores
// and token types, and the BOS, EOS and unknown ids. A piece's score is
// minus the rank of its best merge, so that llama.cpp's merging by score
// (and [FromGGUF]) applies the merges in t's order; a piece no merge makes
// scores -1e9. Special pieces are control tokens, <unk> the unknown one,
// <0xXX> byte tokens.
func (t *Tokenizer) GGUFMetadata() ([]gguf.KV, error) {
	n := len(t.pieces)
	rank := make([]int32, n)
	for i := range rank {
		rank[i] = -1
	}
	for _, m := range t.merges {
		if r := rank[m.id]; r < 0 || m.rank < r {
			rank[m.id] = m.rank
		}
	}
	scores := make([]float32, n)
	types := make([]int32, n)
	unk := -1
	for id, p := range t.pieces {
		scores[id] = unknownScore
		if rank[id] >= 0 {
			scores[id] = -float32(rank[id])
		}
		switch {
		case p == "<unk>":
			types[id] = ggufUnknown
			unk = id
		case t.special[id]:
			types[id] = ggufControl
		case t.byteOf[id] >= 0:
			types[id] = ggufByte
		default:
			types[id] = ggufNormal
		}
	}
	kvs := []gguf.KV{{Key: KeyGGUFModel, Value: gguf.String("llama")}}
	for _, a := range []struct {
		key string
		v   any
	}{{KeyGGUFTokens, t.pieces}, {KeyGGUFScores, scores}, {KeyGGUFTokenType, types}} {
		v, err := gguf.ArrayOf(a.v)
		if err != nil {
			return nil, err
		}
		kvs = append(kvs, gguf.KV{Key: a.key, Value: v})
	}
	kvs = append(kvs,
		gguf.KV{Key: KeyGGUFBOS, Value: gguf.Uint32(uint32(t.bos))},
		gguf.KV{Key: KeyGGUFEOS, Value: gguf.Uint32(uint32(t.eos))})
	if unk >= 0 {
		kvs = append(kvs, gguf.KV{Key: KeyGGUFUnknown, Value: gguf.Uint32(uint32(unk))})
	}
	return kvs, nil
}
