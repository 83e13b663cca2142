package router

import (
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Log-probabilities as the OpenAI API reports them: the legacy format of
// /v1/completions (parallel lists, the prompt's first token null) and the
// chat format (one object per token, with its bytes).

// pieceToken is one token of a piece with its log-probability.
type pieceToken struct {
	lp TokenLogprob
	// predicted is false for the prompt's first token, which nothing
	// before it predicts: its logprob is null.
	predicted bool
	// offset is the number of characters (Unicode code points, as in
	// OpenAI's and vLLM's text_offset) of the choice's text before the
	// token.
	offset int
}

// minLogprob stands for a probability of zero, which JSON cannot write as
// -Inf; vLLM reports the same.
const minLogprob = -9999

func jsonLogprob(lp float32) float32 {
	if lp < minLogprob {
		return minLogprob
	}
	return lp
}

type (
	// legacyLogprobs is the "logprobs" of a /v1/completions choice.
	legacyLogprobs struct {
		Tokens        []string             `json:"tokens"`
		TokenLogprobs []*float32           `json:"token_logprobs"`
		TopLogprobs   []map[string]float32 `json:"top_logprobs"`
		TextOffset    []int                `json:"text_offset"`
	}
	// chatLogprobs is the "logprobs" of a chat choice.
	chatLogprobs struct {
		Content []chatTokenLogprob `json:"content"`
	}
	chatTokenLogprob struct {
		Token       string           `json:"token"`
		Logprob     float32          `json:"logprob"`
		Bytes       []int            `json:"bytes"`
		TopLogprobs []chatTopLogprob `json:"top_logprobs"`
	}
	chatTopLogprob struct {
		Token   string  `json:"token"`
		Logprob float32 `json:"logprob"`
		Bytes   []int   `json:"bytes"`
	}
)

// logprobsJSON gathers the log-probabilities of a choice, or of one stream
// chunk, in the endpoint's format.
type logprobsJSON struct {
	o      *response
	legacy *legacyLogprobs
	chat   *chatLogprobs
}

func (o *response) newLogprobs() *logprobsJSON {
	if o.a.chat {
		return &logprobsJSON{o: o, chat: &chatLogprobs{Content: []chatTokenLogprob{}}}
	}
	return &logprobsJSON{o: o, legacy: &legacyLogprobs{Tokens: []string{}, TokenLogprobs: []*float32{}, TopLogprobs: []map[string]float32{}, TextOffset: []int{}}}
}

// add appends tokens.
func (l *logprobsJSON) add(tokens []pieceToken) {
	n := l.o.a.topLogprobs // the scheduler was asked for at least one
	for _, t := range tokens {
		top := t.lp.Top[:min(n, len(t.lp.Top))]
		text, raw := l.o.r.tokenText(t.lp.Token)
		if l.chat != nil {
			e := chatTokenLogprob{Token: text, Logprob: jsonLogprob(t.lp.Logprob), Bytes: raw, TopLogprobs: make([]chatTopLogprob, len(top))}
			for i, alt := range top {
				s, b := l.o.r.tokenText(alt.Token)
				e.TopLogprobs[i] = chatTopLogprob{Token: s, Logprob: jsonLogprob(alt.Logprob), Bytes: b}
			}
			l.chat.Content = append(l.chat.Content, e)
			continue
		}
		g := l.legacy
		g.Tokens = append(g.Tokens, text)
		g.TextOffset = append(g.TextOffset, t.offset)
		if !t.predicted {
			g.TokenLogprobs = append(g.TokenLogprobs, nil)
			g.TopLogprobs = append(g.TopLogprobs, nil)
			continue
		}
		lp := jsonLogprob(t.lp.Logprob)
		g.TokenLogprobs = append(g.TokenLogprobs, &lp)
		// As in OpenAI's and vLLM's legacy format, the map holds the
		// chosen token besides the n most likely.
		m := map[string]float32{text: lp}
		for _, alt := range top {
			s, _ := l.o.r.tokenText(alt.Token)
			m[s] = jsonLogprob(alt.Logprob)
		}
		g.TopLogprobs = append(g.TopLogprobs, m)
	}
}

// value is the "logprobs" field's value.
func (l *logprobsJSON) value() any {
	if l.chat != nil {
		return l.chat
	}
	return l.legacy
}

// tokenText returns a token's text as the OpenAI API shows it, and its
// bytes: a byte-fallback piece is its one byte, a special token its piece
// ("</s>"), any other piece its text with "▁" as a space. A token whose
// bytes are not valid UTF-8 (part of a character) is written as OpenAI
// writes one, "bytes:\xe2\x82".
func (r *Router) tokenText(id int) (string, []int) {
	piece, _ := r.tok.Piece(id)
	var b []byte
	switch {
	case r.tok.IsSpecial(id):
		b = []byte(piece)
	case len(piece) == 6 && strings.HasPrefix(piece, "<0x") && piece[5] == '>':
		v, err := strconv.ParseUint(piece[3:5], 16, 8)
		if err != nil {
			b = []byte(piece)
			break
		}
		b = []byte{byte(v)}
	default:
		b = []byte(strings.ReplaceAll(piece, "▁", " "))
	}
	raw := make([]int, len(b))
	for i, c := range b {
		raw[i] = int(c)
	}
	if utf8.Valid(b) {
		return string(b), raw
	}
	var s strings.Builder
	s.WriteString("bytes:")
	for _, c := range b {
		fmt.Fprintf(&s, `\x%02x`, c)
	}
	return s.String(), raw
}
