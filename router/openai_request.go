package router

import (
	"encoding/json"
	"fmt"
	"strings"
)

const (
	// maxUserBytes bounds "user", which goes into the log.
	maxUserBytes = 256
	// maxChoices bounds the choices of one request, prompts times n: each
	// is a sequence in the scheduler's batch.
	maxChoices = 64
)

// apiRequest is a parsed request of either completion endpoint.
type apiRequest struct {
	chat     bool
	endpoint string // for the log
	// params holds the sampling parameters every choice shares; prompts
	// the prompts, each completed n times.
	params       completionParams
	prompts      []prompt
	n            int
	stream       bool
	includeUsage bool // stream_options.include_usage: a last chunk with the usage
	// echo puts the prompt's text before the completion (completions only).
	echo bool
	// promptOnly is max_tokens 0 with echo: the prompt is scored, nothing is
	// generated.
	promptOnly bool
	// logprobs asks for each token's log-probability, with topLogprobs
	// alternatives.
	logprobs    bool
	topLogprobs int
	user        string
}

// commonFields are the request fields both endpoints share. Fields OpenAI
// defines that change the output in ways the router does not implement are
// read so that non-default values are refused rather than ignored; fields
// nobody defines are ignored, as OpenAI does.
type commonFields struct {
	MaxTokens        *int               `json:"max_tokens"`
	Temperature      *float64           `json:"temperature"`
	TopP             *float64           `json:"top_p"`
	TopK             int                `json:"top_k"` // vLLM's extension; 0 or -1 is off
	Seed             *int64             `json:"seed"`
	Stop             json.RawMessage    `json:"stop"`
	Stream           bool               `json:"stream"`
	StreamOptions    *streamOptions     `json:"stream_options"`
	N                *int               `json:"n"`
	User             string             `json:"user"`
	PresencePenalty  *float64           `json:"presence_penalty"`
	FrequencyPenalty *float64           `json:"frequency_penalty"`
	LogitBias        map[string]float64 `json:"logit_bias"`
	IgnoreEOS        bool               `json:"ignore_eos"` // vLLM's extension
	// MoegridExplain adds moegrid_routes, the experts behind every
	// generated token, to each choice or chunk.
	MoegridExplain bool `json:"moegrid_explain"`
}

type streamOptions struct {
	IncludeUsage bool `json:"include_usage"`
}

// completionFields are the fields only /v1/completions has.
type completionFields struct {
	Prompt   json.RawMessage `json:"prompt"`
	Echo     bool            `json:"echo"`
	Logprobs *int            `json:"logprobs"`
	BestOf   *int            `json:"best_of"`
	Suffix   *string         `json:"suffix"`
}

// chatFields are the fields only /v1/chat/completions has.
type chatFields struct {
	Messages            []json.RawMessage `json:"messages"`
	Logprobs            bool              `json:"logprobs"`
	TopLogprobs         *int              `json:"top_logprobs"`
	MaxCompletionTokens *int              `json:"max_completion_tokens"`
	Tools               []json.RawMessage `json:"tools"`
	Functions           []json.RawMessage `json:"functions"`
	ResponseFormat      *struct {
		Type string `json:"type"`
	} `json:"response_format"`
}

// prompt is one prompt of a request: text as the client sent it, or ids.
type prompt struct {
	text *string
	ids  []int
}

type chatMessage struct {
	Role    string
	Content string
}

// parseCommon reads the shared fields into a's params and flags, after the
// endpoint's echo and logprobs. maxTokens is the endpoint's max_tokens
// field, named param.
func (a *apiRequest) parseCommon(f *commonFields, maxTokens *int, param string) error {
	a.n = 1
	if f.N != nil {
		a.n = *f.N
	}
	switch {
	case a.n < 1 || a.n > maxChoices:
		return badParam("n", "n %d must be in [1, %d]", a.n, maxChoices)
	case f.PresencePenalty != nil && *f.PresencePenalty != 0:
		return badParam("presence_penalty", "presence_penalty %v: only 0 is supported", *f.PresencePenalty)
	case f.FrequencyPenalty != nil && *f.FrequencyPenalty != 0:
		return badParam("frequency_penalty", "frequency_penalty %v: only 0 is supported", *f.FrequencyPenalty)
	case f.StreamOptions != nil && !f.Stream:
		return badParam("stream_options", "stream_options is only allowed with stream: true")
	case len(f.User) > maxUserBytes:
		return badParam("user", "user: %d bytes, at most %d", len(f.User), maxUserBytes)
	case f.TopK < -1:
		return badParam("top_k", "top_k %d must be -1 or 0 (off), or positive", f.TopK)
	}
	for tok, bias := range f.LogitBias {
		if bias != 0 {
			return badParam("logit_bias", "logit_bias[%q] %v: logit_bias is not supported", tok, bias)
		}
	}
	stop, err := parseStop(f.Stop)
	if err != nil {
		return err
	}
	a.stream = f.Stream
	a.includeUsage = f.StreamOptions != nil && f.StreamOptions.IncludeUsage
	a.user = f.User
	a.params = completionParams{topK: max(f.TopK, 0), stop: stop, ignoreEOS: f.IgnoreEOS, temperature: 1, topP: 1, explain: f.MoegridExplain}
	if f.Seed != nil {
		seed := uint64(*f.Seed) // OpenAI's seeds are signed; any 64 bits will do
		a.params.seed = &seed
	}
	if f.Temperature != nil {
		a.params.temperature = *f.Temperature
	}
	if f.TopP != nil {
		a.params.topP = *f.TopP
	}
	if a.logprobs {
		// The scheduler reports a token's log-probability only with at
		// least one alternative; the response keeps topLogprobs of them.
		a.params.logprobs = max(a.topLogprobs, 1)
		a.params.promptLogprobs = a.echo
	}
	if maxTokens != nil {
		switch n := *maxTokens; {
		case n < 0:
			return badParam(param, "%s %d must not be negative", param, n)
		case n == 0 && !a.echo:
			return badParam(param, "%s 0 generates nothing; give a positive number, or 0 with echo to score the prompt", param)
		case n == 0:
			a.promptOnly, a.params.promptOnly = true, true
			a.params.maxTokens = 1 // validated as a one-token request: the prompt must fit
		default:
			a.params.maxTokens = n
		}
	}
	return nil
}

// parseStop accepts OpenAI's stop: null, a string, or an array of strings.
func parseStop(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, badParam("stop", "stop: want a string or an array of strings")
	}
	return many, nil
}

// parseLogprobs sets the logprob fields; n is the number of alternatives
// asked for, param the field that asked.
func (a *apiRequest) parseLogprobs(n int, param string) error {
	if n < 0 || n > MaxLogprobs {
		return badParam(param, "%s %d must be in [0, %d]", param, n, MaxLogprobs)
	}
	a.logprobs, a.topLogprobs = true, n
	return nil
}

// parseCompletion parses a /v1/completions body.
func parseCompletion(body []byte) (*apiRequest, error) {
	var f commonFields
	var cf completionFields
	if err := decodeJSON(body, &f); err != nil {
		return nil, err
	}
	if err := decodeJSON(body, &cf); err != nil {
		return nil, err
	}
	a := &apiRequest{endpoint: "/v1/completions", echo: cf.Echo}
	if cf.Suffix != nil && *cf.Suffix != "" {
		return nil, badParam("suffix", "suffix is not supported")
	}
	if cf.Logprobs != nil {
		if err := a.parseLogprobs(*cf.Logprobs, "logprobs"); err != nil {
			return nil, err
		}
	}
	if err := a.parseCommon(&f, f.MaxTokens, "max_tokens"); err != nil {
		return nil, err
	}
	// best_of n is n: choosing the best of more is not implemented.
	if cf.BestOf != nil && *cf.BestOf != 1 && *cf.BestOf != a.n {
		return nil, badParam("best_of", "best_of %d: only best_of equal to n (%d) is supported", *cf.BestOf, a.n)
	}
	var err error
	if a.prompts, err = parsePrompts(cf.Prompt); err != nil {
		return nil, err
	}
	if len(a.prompts)*a.n > maxChoices {
		return nil, badParam("n", "%d prompts times n %d is %d choices, at most %d", len(a.prompts), a.n, len(a.prompts)*a.n, maxChoices)
	}
	return a, nil
}

// parsePrompts accepts a string, an array of token ids, or an array of
// those: one prompt, or several in a batch.
func parsePrompts(raw json.RawMessage) ([]prompt, error) {
	const want = "want a string, a non-empty array of token ids, or a non-empty array of those"
	if len(raw) == 0 || string(raw) == "null" {
		return nil, badParam("prompt", "prompt is required")
	}
	one := func(raw json.RawMessage) (prompt, bool) {
		var text string
		if json.Unmarshal(raw, &text) == nil {
			return prompt{text: &text}, true
		}
		var ids []int
		if json.Unmarshal(raw, &ids) != nil || len(ids) == 0 {
			return prompt{}, false
		}
		return prompt{ids: ids}, true
	}
	if p, ok := one(raw); ok {
		return []prompt{p}, nil
	}
	var list []json.RawMessage
	if json.Unmarshal(raw, &list) != nil || len(list) == 0 {
		return nil, badParam("prompt", "prompt: %s", want)
	}
	if len(list) > maxChoices {
		return nil, badParam("prompt", "prompt: %d prompts, at most %d", len(list), maxChoices)
	}
	out := make([]prompt, len(list))
	for i, el := range list {
		p, ok := one(el)
		if !ok {
			return nil, badParam("prompt", "prompt[%d]: want a string or a non-empty array of token ids", i)
		}
		out[i] = p
	}
	return out, nil
}

// parseChat parses a /v1/chat/completions body; the messages are rendered
// to token ids by the caller.
func parseChat(body []byte) (*apiRequest, []chatMessage, error) {
	var f commonFields
	var cf chatFields
	if err := decodeJSON(body, &f); err != nil {
		return nil, nil, err
	}
	if err := decodeJSON(body, &cf); err != nil {
		return nil, nil, err
	}
	a := &apiRequest{chat: true, endpoint: "/v1/chat/completions"}
	switch {
	case len(cf.Tools) > 0:
		return nil, nil, badParam("tools", "tools are not supported")
	case len(cf.Functions) > 0:
		return nil, nil, badParam("functions", "functions are not supported")
	case cf.ResponseFormat != nil && cf.ResponseFormat.Type != "" && cf.ResponseFormat.Type != "text":
		return nil, nil, badParam("response_format", "response_format %q is not supported; only text", cf.ResponseFormat.Type)
	case cf.TopLogprobs != nil && *cf.TopLogprobs != 0 && !cf.Logprobs:
		return nil, nil, badParam("top_logprobs", "top_logprobs needs logprobs: true")
	}
	if cf.Logprobs {
		n := 0
		if cf.TopLogprobs != nil {
			n = *cf.TopLogprobs
		}
		if err := a.parseLogprobs(n, "top_logprobs"); err != nil {
			return nil, nil, err
		}
	}
	maxTokens, param := f.MaxTokens, "max_tokens"
	if cf.MaxCompletionTokens != nil {
		maxTokens, param = cf.MaxCompletionTokens, "max_completion_tokens"
	}
	if err := a.parseCommon(&f, maxTokens, param); err != nil {
		return nil, nil, err
	}
	msgs := make([]chatMessage, len(cf.Messages))
	for i, raw := range cf.Messages {
		m, err := parseMessage(raw, fmt.Sprintf("messages[%d]", i))
		if err != nil {
			return nil, nil, err
		}
		msgs[i] = m
	}
	return a, msgs, nil
}

// parseMessage reads one chat message; its content is a string, null, or
// an array of text parts, which are joined with newlines.
func parseMessage(raw json.RawMessage, name string) (chatMessage, error) {
	var m struct {
		Role    json.RawMessage `json:"role"`
		Content json.RawMessage `json:"content"`
	}
	if err := json.Unmarshal(raw, &m); err != nil {
		return chatMessage{}, badParam(name, "%s: want an object with role and content", name)
	}
	var msg chatMessage
	if err := json.Unmarshal(m.Role, &msg.Role); err != nil {
		return chatMessage{}, badParam(name+".role", "%s.role: want a string", name)
	}
	if len(m.Content) == 0 || string(m.Content) == "null" {
		return msg, nil
	}
	if err := json.Unmarshal(m.Content, &msg.Content); err == nil {
		return msg, nil
	}
	var parts []struct {
		Type string `json:"type"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(m.Content, &parts); err != nil {
		return chatMessage{}, badParam(name+".content", "%s.content: want a string or an array of text parts", name)
	}
	texts := make([]string, len(parts))
	for j, p := range parts {
		if p.Type != "text" {
			return chatMessage{}, badParam(fmt.Sprintf("%s.content[%d].type", name, j), "%s.content[%d].type %q is not supported; only text", name, j, p.Type)
		}
		texts[j] = p.Text
	}
	msg.Content = strings.Join(texts, "\n")
	return msg, nil
}

// chatPrompt renders messages with the Mistral instruct template,
// "<s>[INST] user [/INST] assistant</s>[INST] user [/INST]", tokenizing each
// text segment between special tokens as Hugging Face does. A system (or
// developer) message is put before the first user message.
func (r *Router) chatPrompt(msgs []chatMessage) ([]int, error) {
	if len(msgs) == 0 {
		return nil, badParam("messages", "messages is empty")
	}
	var system string
	first := 0 // the index of msgs[0] in the request, for error messages
	if msgs[0].Role == "system" || msgs[0].Role == "developer" {
		system = msgs[0].Content
		msgs = msgs[1:]
		first = 1
	}
	if len(msgs) == 0 {
		return nil, badParam("messages", "messages has no user message")
	}
	ids := []int{r.tok.BOS()}
	for i, m := range msgs {
		want := "user"
		if i%2 == 1 {
			want = "assistant"
		}
		if m.Role != want {
			return nil, badParam(fmt.Sprintf("messages[%d].role", first+i), "messages[%d].role is %q, want %q (user and assistant alternate, after an optional system message)", first+i, m.Role, want)
		}
		if m.Role == "assistant" {
			ids = append(ids, r.tok.Encode(m.Content, false)...)
			ids = append(ids, r.tok.EOS())
			continue
		}
		content := m.Content
		if i == 0 && system != "" {
			content = system + "\n\n" + content
		}
		ids = append(ids, r.tok.Encode("[INST] "+content+" [/INST]", false)...)
	}
	if msgs[len(msgs)-1].Role != "user" {
		return nil, badParam("messages", "the last message must be from the user")
	}
	return ids, nil
}
