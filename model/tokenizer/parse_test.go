package tokenizer

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
)

// smallPieces are the normal pieces of the small test vocabulary, ids 259
// onwards.
var smallPieces = []string{"▁", "a", "b", "c", "ab", "bc", "abc", "aa", "▁a", "▁▁"}

// smallFile returns a minimal valid tokenizer.json in the supported layout,
// as a JSON tree that tests can alter before marshaling it.
func smallFile() map[string]any {
	vocab := map[string]any{"<unk>": 0, "<s>": 1, "</s>": 2}
	for b := range 256 {
		vocab[fmt.Sprintf("<0x%02X>", b)] = 3 + b
	}
	for i, p := range smallPieces {
		vocab[p] = 259 + i
	}
	added := func(id int, content string) map[string]any {
		return map[string]any{
			"id": id, "content": content, "single_word": false, "lstrip": false,
			"rstrip": false, "normalized": false, "special": true,
		}
	}
	return map[string]any{
		"version":      "1.0",
		"truncation":   nil,
		"padding":      nil,
		"added_tokens": []any{added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")},
		"normalizer": map[string]any{
			"type": "Sequence",
			"normalizers": []any{
				map[string]any{"type": "Prepend", "prepend": "▁"},
				map[string]any{"type": "Replace", "pattern": map[string]any{"String": " "}, "content": "▁"},
			},
		},
		"pre_tokenizer":  nil,
		"post_processor": nil,
		"decoder": map[string]any{
			"type": "Sequence",
			"decoders": []any{
				map[string]any{"type": "Replace", "pattern": map[string]any{"String": "▁"}, "content": " "},
				map[string]any{"type": "ByteFallback"},
				map[string]any{"type": "Fuse"},
				map[string]any{"type": "Strip", "content": " ", "start": 1, "stop": 0},
			},
		},
		"model": map[string]any{
			"type":                      "BPE",
			"dropout":                   nil,
			"unk_token":                 "<unk>",
			"continuing_subword_prefix": nil,
			"end_of_word_suffix":        nil,
			"fuse_unk":                  true,
			"byte_fallback":             true,
			"vocab":                     vocab,
			// Highest priority first: "b c" before "a b", so "abc" becomes
			// a+bc, then abc.
			"merges": []any{"b c", "a b", "a bc", "ab c", "a a", "▁ a", "▁ ▁"},
		},
	}
}

func marshal(tb testing.TB, v any) []byte {
	tb.Helper()
	data, err := json.Marshal(v)
	if err != nil {
		tb.Fatal(err)
	}
	return data
}

func model(f map[string]any) map[string]any { return f["model"].(map[string]any) }
func vocab(f map[string]any) map[string]any { return model(f)["vocab"].(map[string]any) }

func TestSmallTokenizer(t *testing.T) {
	arrays := smallFile()
	model(arrays)["merges"] = []any{
		[]any{"b", "c"}, []any{"a", "b"}, []any{"a", "bc"}, []any{"ab", "c"},
		[]any{"a", "a"}, []any{"▁", "a"}, []any{"▁", "▁"},
	}
	for _, file := range []struct {
		name string
		data map[string]any
	}{
		{"string merges", smallFile()},
		{"array merges", arrays},
	} {
		t.Run(file.name, func(t *testing.T) {
			tok, err := Parse(marshal(t, file.data))
			if err != nil {
				t.Fatal(err)
			}
			if got := tok.VocabSize(); got != 259+len(smallPieces) {
				t.Errorf("VocabSize() = %d, want %d", got, 259+len(smallPieces))
			}
			for _, tc := range []struct {
				text string
				raw  bool
				want []string
			}{
				{"abc", true, []string{"abc"}},       // b+c ranks before a+b
				{"aaa", true, []string{"aa", "a"}},   // equal ranks: leftmost first
				{"aaaa", true, []string{"aa", "aa"}}, // the stale candidate between them is skipped
				{"aabc", true, []string{"a", "abc"}}, // b+c, then a+bc beats a+a
				{"cab", true, []string{"c", "ab"}},
				{"a", false, []string{"<s>", "▁a"}},                    // dummy prefix merges
				{" a", false, []string{"<s>", "▁", "▁a"}},              // ▁+a ranks before the leftmost ▁+▁
				{"d", false, []string{"<s>", "▁", "<0x64>"}},           // byte fallback
				{"é", false, []string{"<s>", "▁", "<0xC3>", "<0xA9>"}}, // two byte pieces
			} {
				var ids []int
				if tc.raw {
					ids = tok.EncodeRaw(tc.text)
				} else {
					ids = tok.Encode(tc.text, true)
				}
				if got := pieces(tok, ids); !slices.Equal(got, tc.want) {
					t.Errorf("encode %q (raw %v) = %q, want %q", tc.text, tc.raw, got, tc.want)
				}
				if got, want := ids, naiveEncode(tok, tc.text, !tc.raw); !slices.Equal(got, want) {
					t.Errorf("encode %q (raw %v) = %v, naive = %v", tc.text, tc.raw, got, want)
				}
			}
		})
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct {
		name    string
		data    string                 // used if not empty
		mutate  func(f map[string]any) // applied to smallFile otherwise
		replace [2]string              // then applied to the marshaled file
		wantErr error
		wantMsg string
	}{
		{name: "empty input", data: " ", wantErr: ErrInvalid, wantMsg: "unexpected end of JSON input"},
		{name: "bad JSON", data: `{"model": {"type": "BPE"`, wantErr: ErrInvalid, wantMsg: "unexpected end"},
		{name: "not an object", data: `[1, 2]`, wantErr: ErrInvalid, wantMsg: "cannot unmarshal array"},
		{name: "no model", data: `{}`, wantErr: ErrInvalid, wantMsg: "no model"},
		{
			name:    "non-BPE model",
			mutate:  func(f map[string]any) { model(f)["type"] = "WordPiece" },
			wantErr: ErrUnsupported,
			wantMsg: `model type "WordPiece", want "BPE"`,
		},
		{
			name:    "no byte fallback",
			mutate:  func(f map[string]any) { model(f)["byte_fallback"] = false },
			wantErr: ErrUnsupported,
			wantMsg: "model.byte_fallback is false",
		},
		{
			name:    "dropout",
			mutate:  func(f map[string]any) { model(f)["dropout"] = 0.1 },
			wantErr: ErrUnsupported,
			wantMsg: "model.dropout is 0.1",
		},
		{
			name:    "subword prefix",
			mutate:  func(f map[string]any) { model(f)["continuing_subword_prefix"] = "##" },
			wantErr: ErrUnsupported,
			wantMsg: `model.continuing_subword_prefix is "##"`,
		},
		{
			name:    "ignore merges",
			mutate:  func(f map[string]any) { model(f)["ignore_merges"] = true },
			wantErr: ErrUnsupported,
			wantMsg: "model.ignore_merges is true",
		},
		{
			name:    "no normalizer",
			mutate:  func(f map[string]any) { f["normalizer"] = nil },
			wantErr: ErrUnsupported,
			wantMsg: `normalizer is null, want Sequence[Prepend("▁"), Replace(" " -> "▁")]`,
		},
		{
			name: "pre-tokenizer",
			mutate: func(f map[string]any) {
				f["pre_tokenizer"] = map[string]any{"type": "Metaspace", "replacement": "▁"}
			},
			wantErr: ErrUnsupported,
			wantMsg: "pre_tokenizer is Metaspace, want null",
		},
		{
			name: "decoder without Strip",
			mutate: func(f map[string]any) {
				d := f["decoder"].(map[string]any)
				d["decoders"] = d["decoders"].([]any)[:3]
			},
			wantErr: ErrUnsupported,
			wantMsg: `decoder is Sequence[Replace("▁" -> " "), ByteFallback, Fuse], want`,
		},
		{
			name:    "malformed decoder",
			mutate:  func(f map[string]any) { f["decoder"] = []any{1} },
			wantErr: ErrInvalid,
			wantMsg: "decoder: json: cannot unmarshal",
		},
		{
			name:    "no vocab",
			mutate:  func(f map[string]any) { delete(model(f), "vocab") },
			wantErr: ErrInvalid,
			wantMsg: "model.vocab is missing",
		},
		{
			name:    "vocab not an object",
			mutate:  func(f map[string]any) { model(f)["vocab"] = []any{"a"} },
			wantErr: ErrInvalid,
			wantMsg: "model.vocab is not an object",
		},
		{
			name:    "empty vocab",
			mutate:  func(f map[string]any) { model(f)["vocab"] = map[string]any{} },
			wantErr: ErrInvalid,
			wantMsg: "model.vocab is empty",
		},
		{
			name:    "duplicate ids",
			mutate:  func(f map[string]any) { vocab(f)["c"] = 260 },
			wantErr: ErrInvalid,
			wantMsg: `model.vocab: id 260 is used by both`,
		},
		{
			name:    "ids not dense",
			mutate:  func(f map[string]any) { vocab(f)["c"] = 1000 },
			wantErr: ErrInvalid,
			wantMsg: `model.vocab: id 1000 of "c" is out of range: 269 pieces must have ids 0..268`,
		},
		{
			name:    "negative id",
			mutate:  func(f map[string]any) { vocab(f)["c"] = -1 },
			wantErr: ErrInvalid,
			wantMsg: `model.vocab: id -1 of "c" is not a non-negative integer`,
		},
		{
			name:    "fractional id",
			mutate:  func(f map[string]any) { vocab(f)["c"] = 2.5 },
			wantErr: ErrInvalid,
			wantMsg: `model.vocab: id 2.5 of "c" is not a non-negative integer`,
		},
		{
			name:    "string id",
			mutate:  func(f map[string]any) { vocab(f)["c"] = "262" },
			wantErr: ErrInvalid,
			wantMsg: `model.vocab: id of "c" is not a number`,
		},
		{
			name:    "duplicate piece",
			replace: [2]string{`"abc":265`, `"abc":265,"abc":1000`},
			wantErr: ErrInvalid,
			wantMsg: `model.vocab: piece "abc" appears twice`,
		},
		{
			name: "missing byte piece",
			mutate: func(f map[string]any) {
				delete(vocab(f), "<0x41>")
				vocab(f)["A"] = 3 + 0x41
			},
			wantErr: ErrInvalid,
			wantMsg: `byte-fallback piece "<0x41>" is missing`,
		},
		{
			name:    "merge naming an unknown piece",
			mutate:  func(f map[string]any) { model(f)["merges"] = append(model(f)["merges"].([]any), "a zz") },
			wantErr: ErrInvalid,
			wantMsg: `model.merges[7] ("a", "zz"): piece "zz" is not in model.vocab`,
		},
		{
			name:    "merge result not in vocab",
			mutate:  func(f map[string]any) { model(f)["merges"] = append(model(f)["merges"].([]any), "c a") },
			wantErr: ErrInvalid,
			wantMsg: `model.merges[7] ("c", "a"): piece "ca" is not in model.vocab`,
		},
		{
			name:    "merge without a space",
			mutate:  func(f map[string]any) { model(f)["merges"] = []any{"ab"} },
			wantErr: ErrInvalid,
			wantMsg: `model.merges[0]: "ab" is not two pieces separated by one space`,
		},
		{
			name:    "merge with two spaces",
			mutate:  func(f map[string]any) { model(f)["merges"] = []any{"a b c"} },
			wantErr: ErrInvalid,
			wantMsg: `model.merges[0]: "a b c" is not two pieces`,
		},
		{
			name:    "merge of three",
			mutate:  func(f map[string]any) { model(f)["merges"] = []any{[]any{"a", "b", "c"}} },
			wantErr: ErrInvalid,
			wantMsg: `model.merges[0]: ["a","b","c"] is neither`,
		},
		{
			name:    "merge of numbers",
			mutate:  func(f map[string]any) { model(f)["merges"] = []any{7} },
			wantErr: ErrInvalid,
			wantMsg: `model.merges[0]: 7 is neither`,
		},
		{
			name:    "duplicate merge",
			mutate:  func(f map[string]any) { model(f)["merges"] = []any{"a b", "b c", "a b"} },
			wantErr: ErrInvalid,
			wantMsg: `model.merges[2] ("a", "b") repeats model.merges[0]`,
		},
		{
			name: "no BOS",
			mutate: func(f map[string]any) {
				delete(vocab(f), "<s>")
				vocab(f)["<S>"] = 1
				f["added_tokens"] = nil
			},
			wantErr: ErrInvalid,
			wantMsg: `BOS token "<s>" is not in model.vocab`,
		},
		{
			name: "no EOS",
			mutate: func(f map[string]any) {
				delete(vocab(f), "</s>")
				vocab(f)["<S>"] = 2
				f["added_tokens"] = nil
			},
			wantErr: ErrInvalid,
			wantMsg: `EOS token "</s>" is not in model.vocab`,
		},
		{
			name:    "unknown unk_token",
			mutate:  func(f map[string]any) { model(f)["unk_token"] = "[UNK]" },
			wantErr: ErrInvalid,
			wantMsg: `model.unk_token "[UNK]" is not in model.vocab`,
		},
		{
			name:    "added token with the wrong id",
			mutate:  func(f map[string]any) { f["added_tokens"].([]any)[2].(map[string]any)["id"] = 5 },
			wantErr: ErrInvalid,
			wantMsg: `added_tokens[2] "</s>" has id 5, but model.vocab gives it id 2`,
		},
		{
			name: "added token outside the vocabulary",
			mutate: func(f map[string]any) {
				f["added_tokens"] = append(f["added_tokens"].([]any), map[string]any{"id": 269, "content": "[INST]"})
			},
			wantErr: ErrInvalid,
			wantMsg: `added_tokens[3] "[INST]" is not in model.vocab`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			data := []byte(tc.data)
			if tc.data == "" {
				f := smallFile()
				if tc.mutate != nil {
					tc.mutate(f)
				}
				data = marshal(t, f)
				if tc.replace[0] != "" {
					if !strings.Contains(string(data), tc.replace[0]) {
						t.Fatalf("marshaled file has no %s", tc.replace[0])
					}
					data = []byte(strings.Replace(string(data), tc.replace[0], tc.replace[1], 1))
				}
			}
			tok, err := Parse(data)
			if err == nil {
				t.Fatalf("Parse succeeded with %d pieces, want an error", tok.VocabSize())
			}
			if !errors.Is(err, tc.wantErr) {
				t.Errorf("Parse error %q does not wrap %q", err, tc.wantErr)
			}
			if !strings.Contains(err.Error(), tc.wantMsg) {
				t.Errorf("Parse error %q does not contain %q", err, tc.wantMsg)
			}
		})
	}
}
