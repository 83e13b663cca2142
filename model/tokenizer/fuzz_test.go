package tokenizer

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzEncode checks, for arbitrary byte strings, that Encode does not
// panic, returns only valid ids, agrees with the quadratic definition on
// short inputs, and round trips through Decode.
//
// The round trip holds for every input that does not contain "▁" (U+2581):
// the normalizer turns spaces into "▁", so an input "▁" is encoded exactly
// like a space and decodes as one. Leading spaces are no exception, because
// Decode strips exactly one space, the dummy prefix. Invalid UTF-8 bytes are
// encoded as byte pieces and decode as U+FFFD each, so the invalid input s
// round trips to the per-byte replacement of s.
func FuzzEncode(f *testing.F) {
	tok := mistral(f)
	for _, ex := range loadExamples(f) {
		f.Add(ex.Text)
	}
	for _, s := range []string{"", " ", "  x", "\t\n", "a\xffb", "\xe4\xb8", "▁", "<s>", "\uFFFD", "🦒 🙂"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		ids := tok.Encode(s, true)
		for _, id := range ids {
			if id < 0 || id >= tok.VocabSize() {
				t.Fatalf("Encode(%q) has id %d outside the vocabulary", s, id)
			}
		}
		if s == "" {
			if len(ids) != 0 {
				t.Fatalf("Encode(\"\") = %v, want no ids", ids)
			}
			return
		}
		if ids[0] != tok.BOS() || slices.Contains(ids[1:], tok.BOS()) {
			t.Fatalf("Encode(%q) = %v: BOS must come first and only there", s, ids)
		}
		if got := tok.Encode(s, false); !slices.Equal(got, ids[1:]) {
			t.Fatalf("Encode(%q, false) = %v, want %v", s, got, ids[1:])
		}
		if len(s) <= 64 { // the naive encoder is quadratic
			if want := naiveEncode(tok, s, true); !slices.Equal(ids, want) {
				t.Fatalf("Encode(%q) = %v, naive = %v", s, ids, want)
			}
			if got, want := tok.EncodeRaw(s), naiveEncode(tok, s, false); !slices.Equal(got, want) {
				t.Fatalf("EncodeRaw(%q) = %v, naive = %v", s, got, want)
			}
		}
		if strings.ContainsRune(s, '▁') {
			return
		}
		want := s
		if !utf8.ValidString(s) {
			want = replaceInvalidBytes(s)
		}
		if got := tok.Decode(ids); got != want {
			t.Fatalf("Decode(Encode(%q)) = %q, want %q", s, got, want)
		}
	})
}

// replaceInvalidBytes replaces each byte of s that is not part of a valid
// UTF-8 character with U+FFFD. (strings.ToValidUTF8 replaces whole runs.)
func replaceInvalidBytes(s string) string {
	var b strings.Builder
	for _, r := range s {
		b.WriteRune(r) // range yields RuneError once per invalid byte
	}
	return b.String()
}

// FuzzParse checks that Parse never panics, that its errors wrap ErrInvalid
// or ErrUnsupported, and that any tokenizer it accepts can encode and
// decode.
func FuzzParse(f *testing.F) {
	f.Add(marshal(f, smallFile()))
	arrays := smallFile()
	model(arrays)["merges"] = []any{[]any{"a", "b"}, []any{"▁", "a"}}
	f.Add(marshal(f, arrays))
	f.Add([]byte(`{"model": {"type": "BPE", "byte_fallback": true, "vocab": {"a": 0}, "merges": []}}`))
	f.Add([]byte(`{"model": {"type": "BPE", "vocab": {"a": 0, "a": 1}}}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, data []byte) {
		tok, err := Parse(data)
		if err != nil {
			if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrUnsupported) {
				t.Fatalf("Parse error %q wraps neither ErrInvalid nor ErrUnsupported", err)
			}
			return
		}
		for _, s := range []string{"", "abc aab", "\xff é🦒"} {
			ids := tok.Encode(s, true)
			for _, id := range ids {
				if id < 0 || id >= tok.VocabSize() {
					t.Fatalf("Encode(%q) has id %d outside the vocabulary of %d", s, id, tok.VocabSize())
				}
			}
			tok.Decode(ids)
		}
		all := make([]int, tok.VocabSize()+2)
		for i := range all {
			all[i] = i - 1
		}
		tok.Decode(all)
	})
}
