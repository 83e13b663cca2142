package tokenizer

import (
	"errors"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/moegrid/moegrid/model/gguf"
)

// mistralGGUFMeta is the Mistral v1 vocabulary as GGUF metadata.
func mistralGGUFMeta(t testing.TB) []gguf.KV {
	t.Helper()
	kvs, err := mistral(t).GGUFMetadata()
	if err != nil {
		t.Fatal(err)
	}
	return kvs
}

// ggufMistral writes the Mistral v1 vocabulary to a GGUF file, reads it
// back and builds its tokenizer.
func ggufMistral(t *testing.T) *Tokenizer {
	t.Helper()
	path := filepath.Join(t.TempDir(), "vocab.gguf")
	if err := gguf.WriteFile(path, mistralGGUFMeta(t), nil); err != nil {
		t.Fatal(err)
	}
	f, err := gguf.OpenFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tok, err := FromGGUF(f.Metadata())
	if err != nil {
		t.Fatal(err)
	}
	return tok
}

// TestFromGGUFMatchesTokenizerJSON checks that merging by score, from GGUF
// metadata that GGUFMetadata wrote, tokenizes exactly as the ranked merges
// of tokenizer.json do: on the reference examples and on random text made
// of their pieces.
func TestFromGGUFMatchesTokenizerJSON(t *testing.T) {
	g, ref := ggufMistral(t), mistral(t)
	if g.VocabSize() != ref.VocabSize() || g.BOS() != ref.BOS() || g.EOS() != ref.EOS() {
		t.Fatalf("vocab %d bos %d eos %d, want %d %d %d", g.VocabSize(), g.BOS(), g.EOS(), ref.VocabSize(), ref.BOS(), ref.EOS())
	}
	exs := loadExamples(t)
	for _, ex := range exs {
		if got := g.Encode(ex.Text, true); !slices.Equal(got, ex.IDsWithBOS) {
			t.Errorf("Encode(%q) = %v, want %v", ex.Text, got, ex.IDsWithBOS)
		}
		if got := g.EncodeRaw(ex.Text); !slices.Equal(got, ex.IDsNoBOS) {
			t.Errorf("EncodeRaw(%q) = %v, want %v", ex.Text, got, ex.IDsNoBOS)
		}
		if got := g.Decode(ex.IDsWithBOS); got != ex.Decoded {
			t.Errorf("Decode(%v) = %q, want %q", ex.IDsWithBOS, got, ex.Decoded)
		}
	}
	rng := rand.New(rand.NewPCG(3, 4))
	var words []string
	for _, ex := range exs {
		words = append(words, strings.Fields(ex.Text)...)
	}
	for range 500 {
		var b strings.Builder
		for k := range 1 + rng.IntN(12) {
			if k > 0 {
				b.WriteString([]string{" ", "  ", "\n", ""}[rng.IntN(4)])
			}
			w := words[rng.IntN(len(words))]
			if rng.IntN(4) == 0 {
				// A random cut, so that merges meet unusual neighbours.
				i, j := rng.IntN(len(w)+1), rng.IntN(len(w)+1)
				w = w[min(i, j):max(i, j)]
			}
			b.WriteString(w)
		}
		s := b.String()
		if got, want := g.Encode(s, true), ref.Encode(s, true); !slices.Equal(got, want) {
			t.Fatalf("Encode(%q) = %v, tokenizer.json gives %v", s, got, want)
		}
	}
	for _, id := range []int{0, 1, 2} {
		if !g.IsSpecial(id) {
			t.Errorf("id %d is not special", id)
		}
	}
}

func TestFromGGUFErrors(t *testing.T) {
	base := mistralGGUFMeta(t)
	replace := func(key string, v gguf.Value) []gguf.KV {
		out := slices.Clone(base)
		for i := range out {
			if out[i].Key == key {
				out[i].Value = v
			}
		}
		return out
	}
	drop := func(key string) []gguf.KV {
		return slices.DeleteFunc(slices.Clone(base), func(kv gguf.KV) bool { return kv.Key == key })
	}
	short, _ := gguf.ArrayOf([]float32{0, 1})
	dup, _ := gguf.ArrayOf([]string{"a", "a"})
	dupScores, _ := gguf.ArrayOf([]float32{0, 0})
	dupMeta := []gguf.KV{{Key: KeyGGUFModel, Value: gguf.String("llama")}, {Key: KeyGGUFTokens, Value: dup}, {Key: KeyGGUFScores, Value: dupScores}}
	for _, tc := range []struct {
		name string
		meta []gguf.KV
		want error
		text string
	}{
		{"gpt2 model", replace(KeyGGUFModel, gguf.String("gpt2")), ErrUnsupported, `"gpt2"`},
		{"no model", drop(KeyGGUFModel), ErrInvalid, KeyGGUFModel},
		{"no tokens", drop(KeyGGUFTokens), ErrInvalid, KeyGGUFTokens},
		{"tokens of another type", replace(KeyGGUFTokens, gguf.Uint8(1)), ErrInvalid, KeyGGUFTokens},
		{"short scores", replace(KeyGGUFScores, short), ErrInvalid, "2 scores"},
		{"duplicate piece", dupMeta, ErrInvalid, "twice"},
		{"bos out of range", replace(KeyGGUFBOS, gguf.Uint32(1<<20)), ErrInvalid, KeyGGUFBOS},
		{"no eos", drop(KeyGGUFEOS), ErrInvalid, KeyGGUFEOS},
	} {
		md, err := gguf.NewMetadata(tc.meta)
		if err != nil {
			t.Fatal(err)
		}
		_, err = FromGGUF(md)
		if !errors.Is(err, tc.want) || !strings.Contains(err.Error(), tc.text) {
			t.Errorf("%s: got %v, want %v naming %q", tc.name, err, tc.want, tc.text)
		}
	}
}

func TestGGUFMetadata(t *testing.T) {
	md, err := gguf.NewMetadata(mistralGGUFMeta(t))
	if err != nil {
		t.Fatal(err)
	}
	types, err := md.Int32s(KeyGGUFTokenType)
	if err != nil {
		t.Fatal(err)
	}
	scores, err := md.Float32s(KeyGGUFScores)
	if err != nil {
		t.Fatal(err)
	}
	tok := mistral(t)
	for _, tc := range []struct {
		piece string
		typ   int32
	}{{"<unk>", ggufUnknown}, {"<s>", ggufControl}, {"</s>", ggufControl}, {"<0x0A>", ggufByte}, {"▁the", ggufNormal}} {
		id, ok := tok.ID(tc.piece)
		if !ok || types[id] != tc.typ {
			t.Errorf("%q: type %d, want %d", tc.piece, types[id], tc.typ)
		}
	}
	// The first merge of tokenizer.json, ▁ + t, makes the best score.
	if id, _ := tok.ID("▁t"); scores[id] != 0 {
		t.Errorf("score of ▁t = %g, want 0", scores[id])
	}
	if unk, err := md.Uint(KeyGGUFUnknown); err != nil || unk != 0 {
		t.Errorf("unknown id %d, %v", unk, err)
	}
}
