package router

import (
	"fmt"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/google/go-cmp/cmp"
)

// textIDs are the ids of text continuing earlier text (no dummy prefix).
func textIDs(t *testing.T, text string) []int {
	t.Helper()
	ids := fx.tok.EncodeRaw(text)
	if got := fx.tok.Decode(ids); strings.TrimPrefix(got, " ") != strings.TrimPrefix(text, " ") {
		t.Fatalf("%q does not round-trip: %q", text, got)
	}
	return ids
}

// byteIDs are the byte-fallback tokens of b, one token per byte.
func byteIDs(t *testing.T, b ...byte) []int {
	t.Helper()
	var ids []int
	for _, c := range b {
		id, ok := fx.tok.ID(fmt.Sprintf("<0x%02X>", c))
		if !ok {
			t.Fatalf("no byte token for %#x", c)
		}
		ids = append(ids, id)
	}
	return ids
}

func TestStopper(t *testing.T) {
	// A piece is the tokens of one text or of raw bytes; want is the text
	// emitted after each piece.
	type piece func(t *testing.T) []int
	text := func(s string) piece { return func(t *testing.T) []int { return textIDs(t, s) } }
	raw := func(b ...byte) piece { return func(t *testing.T) []int { return byteIDs(t, b...) } }
	for _, tc := range []struct {
		name    string
		stops   []string
		pieces  []piece
		want    []string // emitted after each piece
		stopped bool     // the last piece reaches a stop string
		flush   string
	}{
		{
			name:   "no stops",
			pieces: []piece{text("Hello"), text(" world")},
			want:   []string{"Hello", " world"},
		},
		{
			name:    "inside one token",
			stops:   []string{"ll"},
			pieces:  []piece{text("Hello")},
			want:    []string{"He"},
			stopped: true,
		},
		{
			name:    "across tokens",
			stops:   []string{"lo wo"},
			pieces:  []piece{text("Hello"), text(" world")},
			want:    []string{"Hel", ""},
			stopped: true,
		},
		{
			name:   "held prefix that does not complete",
			stops:  []string{"world"},
			pieces: []piece{text("Hello"), text(" wor"), text("m")},
			want:   []string{"Hello", " ", "worm"},
		},
		{
			name:   "held prefix flushed at the end",
			stops:  []string{"world"},
			pieces: []piece{text("Hello"), text(" wor")},
			want:   []string{"Hello", " "},
			flush:  "wor",
		},
		{
			name:    "earliest of several wins",
			stops:   []string{"world", "o w"},
			pieces:  []piece{text("Hello"), text(" world")},
			want:    []string{"Hell", ""},
			stopped: true,
		},
		{
			name:    "earliest wins whatever the order",
			stops:   []string{"o w", "world"},
			pieces:  []piece{text("Hello"), text(" world")},
			want:    []string{"Hell", ""},
			stopped: true,
		},
		{
			name:    "a shorter stop completes inside a longer one's prefix",
			stops:   []string{"abcd", "cx"},
			pieces:  []piece{text("ab"), text("c"), text("x")},
			want:    []string{"", "", "ab"},
			stopped: true,
		},
		{
			name:   "character split over byte tokens",
			pieces: []piece{raw(0xC3), raw(0xA9), text("t"), raw(0xE2), raw(0x82), raw(0xAC)},
			want:   []string{"", "é", "t", "", "", "€"},
		},
		{
			name:    "stop of a character split over byte tokens",
			stops:   []string{"€"},
			pieces:  []piece{text("5"), raw(0xE2), raw(0x82), raw(0xAC)},
			want:    []string{"5", "", "", ""},
			stopped: true,
		},
		{
			name:   "a stop sharing a first byte is not half matched",
			stops:  []string{"é"},
			pieces: []piece{raw(0xC3), raw(0xA8), text("!")},
			want:   []string{"", "è", "!"},
		},
		{
			name:    "held ASCII before a split character",
			stops:   []string{"aé"},
			pieces:  []piece{text("a"), raw(0xC3), raw(0xA9)},
			want:    []string{"", "", ""},
			stopped: true,
		},
		{
			name:   "incomplete character at the end",
			pieces: []piece{text("x"), raw(0xE2), raw(0x82)},
			want:   []string{"x", "", ""},
			flush:  "\uFFFD\uFFFD",
		},
		{
			name:   "special tokens are silent",
			stops:  []string{"</s>"},
			pieces: []piece{text("a"), func(*testing.T) []int { return []int{fx.tok.EOS()} }},
			want:   []string{"a", ""},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st := newStopper(fx.tok, tc.stops)
			var got []string
			stopped := false
			for i, p := range tc.pieces {
				if stopped {
					t.Fatalf("stopped before piece %d", i)
				}
				var emitted strings.Builder
				for _, id := range p(t) {
					if stopped {
						t.Fatalf("stopped inside piece %d", i)
					}
					text, stop := st.next(id)
					if !utf8.ValidString(text) {
						t.Errorf("piece %d: emitted invalid UTF-8 %q", i, text)
					}
					emitted.WriteString(text)
					stopped = stop
				}
				got = append(got, emitted.String())
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("emitted per piece (-want +got):\n%s", diff)
			}
			if stopped != tc.stopped {
				t.Errorf("stopped = %v, want %v", stopped, tc.stopped)
			}
			if !stopped {
				if got := st.flush(); got != tc.flush {
					t.Errorf("flush = %q, want %q", got, tc.flush)
				}
			}
		})
	}
}
