package tokenizer

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"
)

const (
	mistralPath  = "mistralv1/tokenizer.json"
	examplesPath = "testdata/mistral-v1/examples.jsonl"
)

var loadMistral = sync.OnceValues(func() (*Tokenizer, error) { return Load(mistralPath) })

// mistral returns the Mistral v1 tokenizer from testdata, loaded once.
func mistral(tb testing.TB) *Tokenizer {
	tb.Helper()
	tok, err := loadMistral()
	if err != nil {
		tb.Fatal(err)
	}
	return tok
}

// example is one line of examples.jsonl; see testdata/mistral-v1/README.md.
type example struct {
	Text             string `json:"text"`
	IDsWithBOS       []int  `json:"ids_with_bos"`
	IDsNoBOS         []int  `json:"ids_no_bos"`
	IDsNoBOSPrefixed []int  `json:"ids_no_bos_prefixed"`
	Decoded          string `json:"decoded"`
}

func loadExamples(tb testing.TB) []example {
	tb.Helper()
	f, err := os.Open(examplesPath)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	var exs []example
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		var ex example
		if err := json.Unmarshal(sc.Bytes(), &ex); err != nil {
			tb.Fatalf("%s line %d: %v", examplesPath, len(exs)+1, err)
		}
		exs = append(exs, ex)
	}
	if err := sc.Err(); err != nil {
		tb.Fatal(err)
	}
	if len(exs) != 40 {
		tb.Fatalf("%s has %d examples, want 40", examplesPath, len(exs))
	}
	return exs
}

func TestExamples(t *testing.T) {
	tok := mistral(t)
	for i, ex := range loadExamples(t) {
		t.Run(fmt.Sprintf("line%02d", i+1), func(t *testing.T) {
			t.Logf("text %q", ex.Text)
			if got := tok.Encode(ex.Text, true); !slices.Equal(got, ex.IDsWithBOS) {
				t.Errorf("Encode(text, true)\n got %v\nwant %v", got, ex.IDsWithBOS)
			}
			if got := tok.Encode(ex.Text, false); !slices.Equal(got, ex.IDsNoBOSPrefixed) {
				t.Errorf("Encode(text, false)\n got %v\nwant %v", got, ex.IDsNoBOSPrefixed)
			}
			if got := tok.EncodeRaw(ex.Text); !slices.Equal(got, ex.IDsNoBOS) {
				t.Errorf("EncodeRaw(text)\n got %v\nwant %v", got, ex.IDsNoBOS)
			}
			if got := tok.Decode(ex.IDsWithBOS); got != ex.Decoded {
				t.Errorf("Decode(ids_with_bos) = %q, want %q", got, ex.Decoded)
			}
			if got := tok.Decode(tok.Encode(ex.Text, true)); got != ex.Text {
				t.Errorf("Decode(Encode(text, true)) = %q, want %q", got, ex.Text)
			}
		})
	}
}

func TestAccessors(t *testing.T) {
	tok := mistral(t)
	if got := tok.VocabSize(); got != 32000 {
		t.Errorf("VocabSize() = %d, want 32000", got)
	}
	if tok.BOS() != 1 || tok.EOS() != 2 {
		t.Errorf("BOS(), EOS() = %d, %d, want 1, 2", tok.BOS(), tok.EOS())
	}
	for _, tc := range []struct {
		id      int
		piece   string
		ok      bool
		special bool
	}{
		{0, "<unk>", true, true},
		{1, "<s>", true, true},
		{2, "</s>", true, true},
		{3, "<0x00>", true, false},
		{258, "<0xFF>", true, false},
		{22557, "▁Hello", true, false},
		{-1, "", false, false},
		{32000, "", false, false},
	} {
		piece, ok := tok.Piece(tc.id)
		if piece != tc.piece || ok != tc.ok {
			t.Errorf("Piece(%d) = %q, %v, want %q, %v", tc.id, piece, ok, tc.piece, tc.ok)
		}
		if got := tok.IsSpecial(tc.id); got != tc.special {
			t.Errorf("IsSpecial(%d) = %v, want %v", tc.id, got, tc.special)
		}
		if tc.ok {
			if id, ok := tok.ID(tc.piece); id != tc.id || !ok {
				t.Errorf("ID(%q) = %d, %v, want %d, true", tc.piece, id, ok, tc.id)
			}
		}
	}
	if _, ok := tok.ID("no such piece"); ok {
		t.Error(`ID("no such piece") reports ok`)
	}
}

// pieces returns the vocabulary pieces of ids, for readable test failures.
func pieces(tok *Tokenizer, ids []int) []string {
	ps := make([]string, len(ids))
	for i, id := range ids {
		p, ok := tok.Piece(id)
		if !ok {
			p = "<bad id>"
		}
		ps[i] = p
	}
	return ps
}

func TestEncodeEdgeCases(t *testing.T) {
	tok := mistral(t)
	for _, tc := range []struct {
		name string
		text string
		want []string // pieces of Encode(text, true)
		// decoded is Decode of the ids where it is not text.
		decoded string
	}{
		{name: "empty", text: "", want: nil},
		{name: "single space", text: " ", want: []string{"<s>", "▁▁"}},
		{name: "two spaces", text: "  ", want: []string{"<s>", "▁▁▁"}},
		{name: "four spaces", text: "    ", want: []string{"<s>", "▁▁▁▁▁"}},
		{name: "two spaces inside", text: "a  b", want: []string{"<s>", "▁a", "▁", "▁b"}},
		{name: "tab", text: "\t", want: []string{"<s>", "▁", "<0x09>"}},
		{name: "newline", text: "\n", want: []string{"<s>", "▁", "<0x0A>"}},
		{name: "CR LF", text: "a\r\nb", want: []string{"<s>", "▁a", "\r", "<0x0A>", "b"}},
		{name: "emoji in vocab", text: "🙂", want: []string{"<s>", "▁", "🙂"}},
		{name: "emoji by bytes", text: "🦒", want: []string{"<s>", "▁", "<0xF0>", "<0x9F>", "<0xA6>", "<0x92>"}},
		{name: "CJK in vocab", text: "中文", want: []string{"<s>", "▁", "中", "文"}},
		{name: "CJK by bytes", text: "龘", want: []string{"<s>", "▁", "<0xE9>", "<0xBE>", "<0x98>"}},
		{name: "NBSP is not a space", text: "a\u00a0b", want: []string{"<s>", "▁a", "\u00a0", "b"}},
		{
			name: "literal BOS is text",
			text: "<s>",
			want: []string{"<s>", "▁<", "s", ">"},
		},
		{
			name: "literal specials are text",
			text: "</s><unk>",
			want: []string{"<s>", "▁</", "s", "><", "unk", ">"},
		},
		{
			name: "literal byte piece is text",
			text: "<0x41>",
			want: []string{"<s>", "▁<", "0", "x", "4", "1", ">"},
		},
		{
			name:    "invalid UTF-8 byte",
			text:    "a\xffb",
			want:    []string{"<s>", "▁a", "<0xFF>", "b"},
			decoded: "a\uFFFDb",
		},
		{
			name:    "truncated character",
			text:    "\xe4\xb8",
			want:    []string{"<s>", "▁", "<0xE4>", "<0xB8>"},
			decoded: "\uFFFD\uFFFD",
		},
		{
			name:    "invalid byte before byte-fallback character",
			text:    "\xff龘",
			want:    []string{"<s>", "▁", "<0xFF>", "<0xE9>", "<0xBE>", "<0x98>"},
			decoded: "\uFFFD龘",
		},
		{
			name: "U+FFFD itself",
			text: "\uFFFD",
			want: []string{"<s>", "▁", "\uFFFD"},
		},
		{
			name:    "meta space in input reads as a space",
			text:    "a▁b",
			want:    []string{"<s>", "▁a", "▁b"},
			decoded: "a b",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ids := tok.Encode(tc.text, true)
			if got := pieces(tok, ids); !slices.Equal(got, tc.want) {
				t.Errorf("Encode(%q, true) = %q, want %q", tc.text, got, tc.want)
			}
			if len(ids) > 0 {
				if got, want := tok.Encode(tc.text, false), ids[1:]; !slices.Equal(got, want) {
					t.Errorf("Encode(%q, false) = %v, want %v", tc.text, got, want)
				}
			}
			want := tc.text
			if tc.decoded != "" {
				want = tc.decoded
			}
			if got := tok.Decode(ids); got != want {
				t.Errorf("Decode(Encode(%q, true)) = %q, want %q", tc.text, got, want)
			}
			if got := naiveEncode(tok, tc.text, true); !slices.Equal(got, ids) {
				t.Errorf("naiveEncode(%q) = %v, Encode = %v", tc.text, got, ids)
			}
		})
	}
}

func TestEncodeRaw(t *testing.T) {
	tok := mistral(t)
	for _, tc := range []struct {
		text string
		want []string
	}{
		{"", nil},
		{" ", []string{"▁"}},
		{"Hello", []string{"Hello"}},
		{" Hello", []string{"▁Hello"}},
		{"<s>", []string{"<", "s", ">"}},
	} {
		if got := pieces(tok, tok.EncodeRaw(tc.text)); !slices.Equal(got, tc.want) {
			t.Errorf("EncodeRaw(%q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}

func TestDecode(t *testing.T) {
	tok := mistral(t)
	id := func(piece string) int {
		id, ok := tok.ID(piece)
		if !ok {
			t.Fatalf("no piece %q", piece)
		}
		return id
	}
	e4, b8, ad, ff := id("<0xE4>"), id("<0xB8>"), id("<0xAD>"), id("<0xFF>")
	for _, tc := range []struct {
		name string
		ids  []int
		want string
	}{
		{"nil", nil, ""},
		{"specials only", []int{1, 0, 2}, ""},
		{"ids outside the vocabulary", []int{-1, 32000, 1 << 40}, ""},
		{"leading space stripped once", []int{1, id("▁▁"), id("▁Hello")}, "  Hello"},
		{"no leading space", []int{id("Hello"), id("▁world")}, "Hello world"},
		{"space byte is stripped like a space", []int{id("<0x20>"), id("▁Hello")}, " Hello"},
		{"bytes fuse", []int{e4, b8, ad}, "中"},
		{"bytes fuse across a special token", []int{e4, 2, b8, 0, ad}, "中"},
		{"invalid byte", []int{ff}, "\uFFFD"},
		{"truncated character", []int{e4, b8}, "\uFFFD\uFFFD"},
		{"truncated character before text", []int{e4, b8, id("▁a")}, "\uFFFD\uFFFD a"},
		// Hugging Face gives "\uFFFD\uFFFD\uFFFD\uFFFD": it replaces the
		// whole run once any of it is invalid. See the package doc.
		{"invalid byte before a character", []int{ff, e4, b8, ad}, "\uFFFD中"},
		{"lone continuation byte", []int{b8, id("a")}, "\uFFFDa"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := tok.Decode(tc.ids); got != tc.want {
				t.Errorf("Decode(%v) = %q, want %q", tc.ids, got, tc.want)
			}
			if got := refDecode(tok, tc.ids); got != tc.want {
				t.Errorf("refDecode(%v) = %q, want %q", tc.ids, got, tc.want)
			}
			if got := streamDecode(tok, tc.ids, nil); got != tc.want {
				t.Errorf("stream decode of %v = %q, want %q", tc.ids, got, tc.want)
			}
		})
	}
}

// refDecode is a plain restatement of Decode's contract, to check Decode
// and StreamDecoder against: drop specials and unknown ids, collect runs of
// byte pieces and decode each run as a whole, replace "▁" by " ", and strip
// one leading space.
func refDecode(tok *Tokenizer, ids []int) string {
	var b strings.Builder
	var run []byte
	endRun := func() {
		for len(run) > 0 {
			r, size := utf8.DecodeRune(run)
			if r == utf8.RuneError && size == 1 {
				b.WriteRune(utf8.RuneError)
			} else {
				b.Write(run[:size])
			}
			run = run[size:]
		}
	}
	for _, id := range ids {
		p, ok := tok.Piece(id)
		if !ok || tok.IsSpecial(id) {
			continue
		}
		if len(p) == 6 && strings.HasPrefix(p, "<0x") && strings.HasSuffix(p, ">") {
			if v, err := strconv.ParseUint(p[3:5], 16, 8); err == nil {
				run = append(run, byte(v))
				continue
			}
		}
		endRun()
		b.WriteString(strings.ReplaceAll(p, "▁", " "))
	}
	endRun()
	s, _ := strings.CutPrefix(b.String(), " ")
	return s
}

// streamDecode decodes ids with a StreamDecoder, failing tb (if not nil)
// when a chunk is not valid UTF-8.
func streamDecode(tok *Tokenizer, ids []int, tb testing.TB) string {
	d := tok.NewStreamDecoder(true)
	var b strings.Builder
	for _, id := range ids {
		s := d.Next(id)
		if tb != nil && !utf8.ValidString(s) {
			tb.Errorf("Next(%d) = %q: not valid UTF-8", id, s)
		}
		b.WriteString(s)
	}
	b.WriteString(d.Flush())
	return b.String()
}

func TestStreamDecoderMatchesDecode(t *testing.T) {
	tok := mistral(t)
	check := func(t *testing.T, ids []int) {
		t.Helper()
		want := tok.Decode(ids)
		if ref := refDecode(tok, ids); want != ref {
			t.Errorf("Decode(%v) = %q, refDecode = %q", ids, want, ref)
		}
		if got := streamDecode(tok, ids, t); got != want {
			t.Errorf("stream decode of %v = %q, Decode = %q", ids, got, want)
		}
	}
	t.Run("examples", func(t *testing.T) {
		for _, ex := range loadExamples(t) {
			check(t, ex.IDsWithBOS)
			check(t, ex.IDsNoBOS)
			check(t, ex.IDsNoBOSPrefixed)
		}
	})
	t.Run("random", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(1, 2))
		// Mostly byte pieces, with lead and continuation bytes favoured, so
		// that valid, truncated and invalid sequences all occur.
		randomID := func() int {
			switch n := rng.IntN(100); {
			case n < 30:
				return 3 + 0x80 + rng.IntN(0x40) // continuation byte
			case n < 50:
				return 3 + 0xC0 + rng.IntN(0x40) // lead byte (and invalid C0, C1, F5..FF)
			case n < 60:
				return 3 + rng.IntN(256) // any byte
			case n < 70:
				return rng.IntN(3) // special
			case n < 75:
				return []int{-1, tok.VocabSize(), 1 << 31}[rng.IntN(3)]
			default:
				return rng.IntN(tok.VocabSize())
			}
		}
		for range 20000 {
			ids := make([]int, rng.IntN(12))
			for i := range ids {
				ids[i] = randomID()
			}
			check(t, ids)
			if t.Failed() {
				return
			}
		}
	})
}

func TestStreamDecoder(t *testing.T) {
	tok := mistral(t)
	id := func(piece string) int {
		id, _ := tok.ID(piece)
		return id
	}
	t.Run("holds bytes until a character is complete", func(t *testing.T) {
		d := tok.NewStreamDecoder(true)
		var got []string
		for _, p := range []string{"▁", "<0xF0>", "<0x9F>", "<0x99>", "<0x82>", "<0xE4>", "<0xB8>", "<0xAD>", "!"} {
			got = append(got, d.Next(id(p)))
		}
		got = append(got, d.Flush())
		want := []string{"", "", "", "", "🙂", "", "", "中", "!", ""}
		if !slices.Equal(got, want) {
			t.Errorf("chunks = %q, want %q", got, want)
		}
	})
	t.Run("emits invalid bytes as soon as they are known to be invalid", func(t *testing.T) {
		d := tok.NewStreamDecoder(false)
		var got []string
		for _, p := range []string{"<0xE4>", "<0xB8>", "<0x41>", "<0xFF>", "<0xE4>"} {
			got = append(got, d.Next(id(p)))
		}
		got = append(got, d.Flush(), d.Flush())
		want := []string{"", "", "\uFFFD\uFFFDA", "\uFFFD", "", "\uFFFD", ""}
		if !slices.Equal(got, want) {
			t.Errorf("chunks = %q, want %q", got, want)
		}
	})
	t.Run("continuation keeps the leading space", func(t *testing.T) {
		prompt := tok.Encode("Hello", true)
		all := tok.Encode("Hello world, again", true)
		d := tok.NewStreamDecoder(false)
		var b strings.Builder
		for _, id := range all[len(prompt):] {
			b.WriteString(d.Next(id))
		}
		b.WriteString(d.Flush())
		if got, want := b.String(), " world, again"; got != want {
			t.Errorf("continuation = %q, want %q", got, want)
		}
		if got, want := tok.Decode(prompt)+b.String(), tok.Decode(all); got != want {
			t.Errorf("prompt + continuation = %q, want %q", got, want)
		}
	})
	t.Run("strips only the first space of the stream", func(t *testing.T) {
		d := tok.NewStreamDecoder(true)
		got := []string{d.Next(1), d.Next(id("▁")), d.Next(id("▁a"))}
		if want := []string{"", "", " a"}; !slices.Equal(got, want) {
			t.Errorf("chunks = %q, want %q", got, want)
		}
	})
}

// TestEncodeLong checks that long inputs encode in reasonable time (the
// merge loop must not be quadratic) and round trip.
func TestEncodeLong(t *testing.T) {
	tok := mistral(t)
	const size = 100_000
	var prose strings.Builder
	for _, ex := range loadExamples(t) {
		prose.WriteString(ex.Text)
		prose.WriteString(" ")
	}
	for _, tc := range []struct {
		name string
		unit string
	}{
		{"prose", prose.String()},
		{"spaces", " "},
		{"one letter", "z"},
		{"two letters", "ab"},
		{"byte fallback", "🦒"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			text := strings.Repeat(tc.unit, size/len(tc.unit)+1)[:size]
			text = strings.ToValidUTF8(text, "")
			start := time.Now()
			ids := tok.Encode(text, true)
			elapsed := time.Since(start)
			t.Logf("%d bytes -> %d ids in %v", len(text), len(ids), elapsed)
			if got := tok.Decode(ids); got != text {
				t.Errorf("Decode(Encode(text)) differs from text (%d vs %d bytes)", len(got), len(text))
			}
			// A quadratic merge loop takes minutes here; O(n log n) takes
			// milliseconds. The bound is loose for slow, race-enabled runs.
			if elapsed > 20*time.Second {
				t.Errorf("Encode of %d bytes took %v", len(text), elapsed)
			}
		})
	}
}

// TestEncodeMatchesNaive compares the heap-based merge loop with the
// quadratic definition on random text built from pieces of the examples.
func TestEncodeMatchesNaive(t *testing.T) {
	tok := mistral(t)
	var alphabet []string
	for _, ex := range loadExamples(t) {
		for _, r := range ex.Text {
			alphabet = append(alphabet, string(r))
		}
	}
	alphabet = append(alphabet, " ", " ", " ", "\xff", "\xe4\xb8", "▁", "🦒")
	rng := rand.New(rand.NewPCG(3, 4))
	for range 3000 {
		var b strings.Builder
		for range rng.IntN(40) {
			b.WriteString(alphabet[rng.IntN(len(alphabet))])
		}
		text := b.String()
		if got, want := tok.Encode(text, true), naiveEncode(tok, text, true); !slices.Equal(got, want) {
			t.Fatalf("Encode(%q) = %v, naive = %v", text, got, want)
		}
		if got, want := tok.EncodeRaw(text), naiveEncode(tok, text, false); !slices.Equal(got, want) {
			t.Fatalf("EncodeRaw(%q) = %v, naive = %v", text, got, want)
		}
	}
}

// naiveEncode is the quadratic definition of BPE encoding: normalize,
// split into code points (or bytes, for code points without a piece and
// invalid bytes), then repeatedly merge the leftmost pair of lowest rank.
func naiveEncode(tok *Tokenizer, text string, bos bool) []int {
	if text == "" {
		return nil
	}
	norm := strings.ReplaceAll(text, " ", "▁")
	if bos {
		norm = "▁" + norm
	}
	var ids []int32
	for i := 0; i < len(norm); {
		r, size := utf8.DecodeRuneInString(norm[i:])
		if id, ok := tok.vocab[norm[i:i+size]]; ok && !(r == utf8.RuneError && size == 1) {
			ids = append(ids, id)
		} else {
			for _, c := range []byte(norm[i : i+size]) {
				id, _ := tok.vocab[fmt.Sprintf("<0x%02X>", c)]
				ids = append(ids, id)
			}
		}
		i += size
	}
	for {
		best, bestRank := -1, int32(0)
		for i := 0; i+1 < len(ids); i++ {
			if m, ok := tok.merges[pairKey(ids[i], ids[i+1])]; ok && (best < 0 || m.rank < bestRank) {
				best, bestRank = i, m.rank
			}
		}
		if best < 0 {
			break
		}
		ids[best] = tok.merges[pairKey(ids[best], ids[best+1])].id
		ids = slices.Delete(ids, best+1, best+2)
	}
	var out []int
	if bos {
		out = append(out, tok.BOS())
	}
	for _, id := range ids {
		out = append(out, int(id))
	}
	return out
}

func TestLoadErrors(t *testing.T) {
	_, err := Load("testdata/does-not-exist.json")
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("Load(missing file) = %v, want an error wrapping fs.ErrNotExist", err)
	}
	_, err = Load(examplesPath)
	if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), examplesPath) {
		t.Errorf("Load(%s) = %v, want an error wrapping ErrInvalid naming the file", examplesPath, err)
	}
}

func BenchmarkEncode(b *testing.B) {
	tok := mistral(b)
	text := benchText(b, 10_000)
	b.SetBytes(int64(len(text)))
	b.ReportAllocs()
	for b.Loop() {
		tok.Encode(text, true)
	}
}

func BenchmarkDecode(b *testing.B) {
	tok := mistral(b)
	ids := tok.Encode(benchText(b, 10_000), true)
	b.ReportAllocs()
	for b.Loop() {
		tok.Decode(ids)
	}
}

// benchText returns about size bytes of the examples' mixed text: prose,
// code, several scripts and emoji.
func benchText(tb testing.TB, size int) string {
	var b strings.Builder
	exs := loadExamples(tb)
	for i := 0; b.Len() < size; i++ {
		b.WriteString(exs[i%len(exs)].Text)
		b.WriteString("\n")
	}
	return b.String()
}

func BenchmarkParse(b *testing.B) {
	data, err := os.ReadFile(mistralPath)
	if err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(len(data)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Parse(data); err != nil {
			b.Fatal(err)
		}
	}
}
