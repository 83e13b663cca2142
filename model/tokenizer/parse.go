package tokenizer

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode/utf8"
)

// The pipeline components this package implements, in the form describe
// renders them.
const (
	wantNormalizer   = `Sequence[Prepend("▁"), Replace(" " -> "▁")]`
	wantPreTokenizer = `null`
	wantDecoder      = `Sequence[Replace("▁" -> " "), ByteFallback, Fuse, Strip(" ", 1, 0)]`
)

// fileJSON is the part of tokenizer.json that Parse reads. Fields not listed
// (truncation, padding, post_processor) do not affect Encode or Decode.
type fileJSON struct {
	AddedTokens  []addedTokenJSON `json:"added_tokens"`
	Normalizer   json.RawMessage  `json:"normalizer"`
	PreTokenizer json.RawMessage  `json:"pre_tokenizer"`
	Decoder      json.RawMessage  `json:"decoder"`
	Model        *modelJSON       `json:"model"`
}

type addedTokenJSON struct {
	ID      int    `json:"id"`
	Content string `json:"content"`
	Special bool   `json:"special"`
}

type modelJSON struct {
	Type                    string            `json:"type"`
	Dropout                 *float64          `json:"dropout"`
	UnkToken                *string           `json:"unk_token"`
	ContinuingSubwordPrefix *string           `json:"continuing_subword_prefix"`
	EndOfWordSuffix         *string           `json:"end_of_word_suffix"`
	ByteFallback            bool              `json:"byte_fallback"`
	IgnoreMerges            bool              `json:"ignore_merges"`
	Vocab                   json.RawMessage   `json:"vocab"`
	Merges                  []json.RawMessage `json:"merges"`
}

// componentJSON holds the fields of the normalizer, pre-tokenizer and
// decoder components that describe renders.
type componentJSON struct {
	Type        string          `json:"type"`
	Normalizers []componentJSON `json:"normalizers"`
	Decoders    []componentJSON `json:"decoders"`
	Prepend     string          `json:"prepend"`
	Pattern     struct {
		String *string `json:"String"`
		Regex  *string `json:"Regex"`
	} `json:"pattern"`
	Content string `json:"content"`
	Start   int    `json:"start"`
	Stop    int    `json:"stop"`
}

// Parse builds a Tokenizer from the contents of a Hugging Face
// tokenizer.json. It checks that the model is BPE with byte fallback, that
// the vocabulary ids are exactly 0..n-1 with no piece or id repeated, that
// every merge names two known pieces whose concatenation is a known piece
// and appears only once, that the byte-fallback pieces <0x00>..<0xFF> and
// the special pieces "<s>", "</s>" and the unk_token are present, that the
// added tokens agree with the vocabulary, and that the normalizer,
// pre-tokenizer and decoder are those of the supported layout (see the
// package documentation). Errors wrap [ErrInvalid] or [ErrUnsupported] and
// name what is wrong.
func Parse(data []byte) (*Tokenizer, error) {
	var f fileJSON
	if err := json.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	m := f.Model
	if m == nil {
		return nil, fmt.Errorf("%w: no model", ErrInvalid)
	}
	if m.Type != "BPE" {
		return nil, fmt.Errorf("%w: model type %q, want \"BPE\"", ErrUnsupported, m.Type)
	}
	if err := checkModelOptions(m); err != nil {
		return nil, err
	}
	for _, c := range []struct {
		name string
		raw  json.RawMessage
		want string
	}{
		{"normalizer", f.Normalizer, wantNormalizer},
		{"pre_tokenizer", f.PreTokenizer, wantPreTokenizer},
		{"decoder", f.Decoder, wantDecoder},
	} {
		got, err := describe(c.raw)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: %w", ErrInvalid, c.name, err)
		}
		if got != c.want {
			return nil, fmt.Errorf("%w: %s is %s, want %s", ErrUnsupported, c.name, got, c.want)
		}
	}

	t := &Tokenizer{}
	var err error
	if t.pieces, t.vocab, err = parseVocab(m.Vocab); err != nil {
		return nil, err
	}
	if t.merges, err = parseMerges(m.Merges, t.vocab); err != nil {
		return nil, err
	}
	if err := t.buildTables(); err != nil {
		return nil, err
	}
	if err := t.setSpecials(m.UnkToken, f.AddedTokens); err != nil {
		return nil, err
	}
	return t, nil
}

// checkModelOptions rejects BPE options that change encoding in ways this
// package does not implement.
func checkModelOptions(m *modelJSON) error {
	switch {
	case !m.ByteFallback:
		return fmt.Errorf("%w: model.byte_fallback is false, want true", ErrUnsupported)
	case m.Dropout != nil && *m.Dropout != 0:
		return fmt.Errorf("%w: model.dropout is %v, want null", ErrUnsupported, *m.Dropout)
	case m.ContinuingSubwordPrefix != nil && *m.ContinuingSubwordPrefix != "":
		return fmt.Errorf("%w: model.continuing_subword_prefix is %q, want null", ErrUnsupported, *m.ContinuingSubwordPrefix)
	case m.EndOfWordSuffix != nil && *m.EndOfWordSuffix != "":
		return fmt.Errorf("%w: model.end_of_word_suffix is %q, want null", ErrUnsupported, *m.EndOfWordSuffix)
	case m.IgnoreMerges:
		return fmt.Errorf("%w: model.ignore_merges is true, want false", ErrUnsupported)
	}
	return nil
}

// describe renders a normalizer, pre-tokenizer or decoder component in a
// compact form such as `Sequence[Prepend("▁"), Replace(" " -> "▁")]`, so
// that it can be compared with the supported pipeline and shown in errors.
// Fields that the supported components do not use are left out.
func describe(raw json.RawMessage) (string, error) {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return "null", nil
	}
	var c componentJSON
	if err := json.Unmarshal(raw, &c); err != nil {
		return "", err
	}
	var b strings.Builder
	c.describe(&b)
	return b.String(), nil
}

func (c *componentJSON) describe(b *strings.Builder) {
	switch c.Type {
	case "Sequence":
		b.WriteString("Sequence[")
		for i, sub := range append(c.Normalizers, c.Decoders...) {
			if i > 0 {
				b.WriteString(", ")
			}
			sub.describe(b)
		}
		b.WriteString("]")
	case "Prepend":
		fmt.Fprintf(b, "Prepend(%q)", c.Prepend)
	case "Replace":
		switch {
		case c.Pattern.String != nil:
			fmt.Fprintf(b, "Replace(%q -> %q)", *c.Pattern.String, c.Content)
		case c.Pattern.Regex != nil:
			fmt.Fprintf(b, "Replace(Regex(%q) -> %q)", *c.Pattern.Regex, c.Content)
		default:
			b.WriteString("Replace(?)")
		}
	case "Strip":
		fmt.Fprintf(b, "Strip(%q, %d, %d)", c.Content, c.Start, c.Stop)
	default:
		if isIdent(c.Type) {
			b.WriteString(c.Type) // ByteFallback, Fuse, Metaspace, ...
		} else {
			b.WriteString(strconv.Quote(c.Type))
		}
	}
}

// isIdent reports whether s is a non-empty ASCII identifier, which reads
// better unquoted in a description.
func isIdent(s string) bool {
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_') {
			return false
		}
	}
	return s != ""
}

// parseVocab reads the model.vocab object (piece -> id), checking that its
// ids are exactly 0..n-1 and that no piece appears twice. It reads the
// object token by token because decoding into a map would silently keep
// only the last of two equal keys.
func parseVocab(raw json.RawMessage) ([]string, map[string]int32, error) {
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return nil, nil, fmt.Errorf("%w: model.vocab is missing", ErrInvalid)
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, nil, fmt.Errorf("%w: model.vocab is not an object", ErrInvalid)
	}
	type entry struct {
		piece string
		id    int64
	}
	var entries []entry
	vocab := make(map[string]int32)
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: model.vocab: %w", ErrInvalid, err)
		}
		piece := tok.(string) // object keys are always strings
		tok, err = dec.Token()
		if err != nil {
			return nil, nil, fmt.Errorf("%w: model.vocab: %w", ErrInvalid, err)
		}
		num, ok := tok.(json.Number)
		if !ok {
			return nil, nil, fmt.Errorf("%w: model.vocab: id of %q is not a number", ErrInvalid, piece)
		}
		id, err := strconv.ParseInt(num.String(), 10, 64)
		if err != nil || id < 0 {
			return nil, nil, fmt.Errorf("%w: model.vocab: id %s of %q is not a non-negative integer", ErrInvalid, num, piece)
		}
		if _, dup := vocab[piece]; dup {
			return nil, nil, fmt.Errorf("%w: model.vocab: piece %q appears twice", ErrInvalid, piece)
		}
		if len(entries) >= math.MaxInt32 {
			return nil, nil, fmt.Errorf("%w: model.vocab has more than %d pieces", ErrInvalid, math.MaxInt32)
		}
		vocab[piece] = 0 // the id is set once it has been checked
		entries = append(entries, entry{piece, id})
	}
	if len(entries) == 0 {
		return nil, nil, fmt.Errorf("%w: model.vocab is empty", ErrInvalid)
	}
	n := len(entries)
	pieces := make([]string, n)
	seen := make([]bool, n)
	for _, e := range entries {
		if e.id >= int64(n) {
			return nil, nil, fmt.Errorf("%w: model.vocab: id %d of %q is out of range: %d pieces must have ids 0..%d",
				ErrInvalid, e.id, e.piece, n, n-1)
		}
		if seen[e.id] {
			return nil, nil, fmt.Errorf("%w: model.vocab: id %d is used by both %q and %q",
				ErrInvalid, e.id, pieces[e.id], e.piece)
		}
		seen[e.id] = true
		pieces[e.id] = e.piece
		vocab[e.piece] = int32(e.id)
	}
	return pieces, vocab, nil
}

// parseMerges reads model.merges, given either as "left right" strings or as
// ["left", "right"] pairs, highest priority first.
func parseMerges(raw []json.RawMessage, vocab map[string]int32) (map[uint64]merge, error) {
	if len(raw) > maxMerges {
		return nil, fmt.Errorf("%w: model.merges has %d entries, more than the %d supported", ErrUnsupported, len(raw), maxMerges)
	}
	merges := make(map[uint64]merge, len(raw))
	for i, r := range raw {
		left, right, err := splitMerge(r)
		if err != nil {
			return nil, fmt.Errorf("%w: model.merges[%d]: %w", ErrInvalid, i, err)
		}
		var ids [3]int32
		for j, p := range [3]string{left, right, left + right} {
			id, ok := vocab[p]
			if !ok {
				return nil, fmt.Errorf("%w: model.merges[%d] (%q, %q): piece %q is not in model.vocab",
					ErrInvalid, i, left, right, p)
			}
			ids[j] = id
		}
		key := pairKey(ids[0], ids[1])
		if prev, dup := merges[key]; dup {
			return nil, fmt.Errorf("%w: model.merges[%d] (%q, %q) repeats model.merges[%d]",
				ErrInvalid, i, left, right, prev.rank)
		}
		merges[key] = merge{rank: int32(i), id: ids[2]}
	}
	return merges, nil
}

// splitMerge returns the two pieces of one merges entry.
func splitMerge(raw json.RawMessage) (left, right string, err error) {
	var s string
	if err := json.Unmarshal(raw, &s); err == nil {
		l, r, ok := strings.Cut(s, " ")
		if !ok || strings.Contains(r, " ") {
			return "", "", fmt.Errorf("%q is not two pieces separated by one space", s)
		}
		return l, r, nil
	}
	var pair []string
	if err := json.Unmarshal(raw, &pair); err != nil || len(pair) != 2 {
		return "", "", fmt.Errorf("%s is neither \"left right\" nor [\"left\", \"right\"]", truncate(raw, 40))
	}
	return pair[0], pair[1], nil
}

// truncate returns raw for use in an error message, shortened to at most n
// bytes.
func truncate(raw []byte, n int) string {
	if len(raw) <= n {
		return string(raw)
	}
	return string(raw[:n]) + "..."
}

// buildTables fills the encoding lookup tables and the decoding tables from
// t.pieces and t.vocab.
func (t *Tokenizer) buildTables() error {
	for b := range 256 {
		piece := fmt.Sprintf("<0x%02X>", b)
		id, ok := t.vocab[piece]
		if !ok {
			return fmt.Errorf("%w: model.vocab: byte-fallback piece %q is missing", ErrInvalid, piece)
		}
		t.byteIDs[b] = id
	}
	for i := range t.asciiIDs {
		t.asciiIDs[i] = noID
	}
	t.runeIDs = make(map[rune]int32)
	n := len(t.pieces)
	t.text = make([]string, n)
	t.byteOf = make([]int16, n)
	t.special = make([]bool, n)
	for id, p := range t.pieces {
		if r, size := utf8.DecodeRuneInString(p); size == len(p) && size > 0 && (r != utf8.RuneError || size > 1) {
			if r < utf8.RuneSelf {
				t.asciiIDs[r] = int32(id)
			} else {
				t.runeIDs[r] = int32(id)
			}
		}
		t.text[id] = strings.ReplaceAll(p, string(metaSpace), " ")
		t.byteOf[id] = parseBytePiece(p)
	}
	return nil
}

// parseBytePiece returns the byte of a byte-fallback piece "<0xXX>", or -1
// if p is not one. Like the Hugging Face ByteFallback decoder it accepts
// either case of hex digit.
func parseBytePiece(p string) int16 {
	if len(p) != 6 || !strings.HasPrefix(p, "<0x") || p[5] != '>' {
		return -1
	}
	v, err := strconv.ParseUint(p[3:5], 16, 8)
	if err != nil {
		return -1
	}
	return int16(v)
}

// setSpecials finds BOS and EOS, checks the unk token and the added tokens
// against the vocabulary, and marks the special tokens.
func (t *Tokenizer) setSpecials(unk *string, added []addedTokenJSON) error {
	lookup := func(what, piece string) (int, error) {
		id, ok := t.vocab[piece]
		if !ok {
			return 0, fmt.Errorf("%w: %s %q is not in model.vocab", ErrInvalid, what, piece)
		}
		t.special[id] = true
		return int(id), nil
	}
	var err error
	if t.bos, err = lookup("BOS token", bosPiece); err != nil {
		return err
	}
	if t.eos, err = lookup("EOS token", eosPiece); err != nil {
		return err
	}
	if unk != nil && *unk != "" {
		if _, err := lookup("model.unk_token", *unk); err != nil {
			return err
		}
	}
	for i, a := range added {
		id, ok := t.vocab[a.Content]
		switch {
		case !ok:
			return fmt.Errorf("%w: added_tokens[%d] %q is not in model.vocab", ErrInvalid, i, a.Content)
		case int(id) != a.ID:
			return fmt.Errorf("%w: added_tokens[%d] %q has id %d, but model.vocab gives it id %d",
				ErrInvalid, i, a.Content, a.ID, id)
		}
		if a.Special {
			t.special[id] = true
		}
	}
	return nil
}
