package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/eval"
)

func newEvalGroupCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "eval",
		Short: "Measure a model on a text: perplexity, and how its experts are loaded",
	}
	cmd.AddCommand(newPerplexityCmd(), newExpertLoadCmd())
	return cmd
}

// textFlags are what both eval commands read: the model, the text, the
// windows and the output format.
type textFlags struct {
	model, text, output string
	context             int
}

func (t *textFlags) register(cmd *cobra.Command) {
	f := cmd.Flags()
	f.StringVar(&t.model, "model", "", "checkpoint directory or GGUF file (its tokenizer is used in every mode)")
	f.StringVar(&t.text, "text", "", "UTF-8 text file to evaluate on")
	f.IntVar(&t.context, "context", 0, "tokens per window (default min(max_position_embeddings, 1024))")
	f.StringVarP(&t.output, "output", "o", "text", "output format: text or json")
}

// tokens validates the flags and tokenizes the text with BOS first, as the
// router tokenizes a prompt.
func (t *textFlags) tokens() ([]int, model.Config, error) {
	switch {
	case t.model == "":
		return nil, model.Config{}, errors.New("--model is required")
	case t.text == "":
		return nil, model.Config{}, errors.New("--text is required")
	case t.output != "text" && t.output != "json":
		return nil, model.Config{}, fmt.Errorf("--output %q: want text or json", t.output)
	case t.context < 0:
		return nil, model.Config{}, fmt.Errorf("--context %d must be positive", t.context)
	}
	cfg, err := model.LoadConfig(t.model)
	if err != nil {
		return nil, model.Config{}, err
	}
	if t.context == 0 {
		t.context = min(cfg.MaxPositionEmbeddings, 1024)
	}
	if t.context > cfg.MaxPositionEmbeddings {
		return nil, model.Config{}, fmt.Errorf("--context %d exceeds the model's max_position_embeddings %d", t.context, cfg.MaxPositionEmbeddings)
	}
	raw, err := os.ReadFile(t.text)
	if err != nil {
		return nil, model.Config{}, fmt.Errorf("--text: %w", err)
	}
	if strings.TrimSpace(string(raw)) == "" {
		return nil, model.Config{}, fmt.Errorf("--text %s: the text is empty", t.text)
	}
	tok, err := openTokenizer(t.model)
	if err != nil {
		return nil, model.Config{}, err
	}
	return tok.Encode(string(raw), true), cfg, nil
}

func newPerplexityCmd() *cobra.Command {
	var (
		tf      textFlags
		stride  int
		addr    string
		apiKey  string
		timeout time.Duration
		dial    dialFlags
	)
	cmd := &cobra.Command{
		Use:   "perplexity --model DIR|FILE.gguf --text FILE [--addr ROUTER]",
		Short: "Perplexity and mean log-likelihood of a text, in this process or through a router",
		Long: `Perplexity scores the text (tokenized with the checkpoint's tokenizer, BOS
first) in windows of --context tokens, each scoring up to --stride new tokens,
so that every token but the first is scored once with at least
context-stride tokens before it (Hugging Face's sliding-window perplexity).
ppl = exp(nll/tokens), the negative log-likelihood summed in float64.

With --addr the windows go to that router's OpenAI API as token-id prompts
with echo, logprobs and max_tokens 0; with F32 activations on the wire the
numbers equal the in-process ones bit for bit.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tokens, _, err := tf.tokens()
			if err != nil {
				return err
			}
			ctx := cmd.Context()
			if timeout > 0 {
				var cancel context.CancelFunc
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			out := perplexityOutput{Model: filepath.Base(filepath.Clean(tf.model)), Context: tf.context, Stride: stride}
			if stride == 0 {
				out.Stride = tf.context - 1
			}
			var scorer eval.Scorer
			if addr == "" {
				lm, err := loadLocal(tf.model)
				if err != nil {
					return err
				}
				defer lm.Close()
				scorer = eval.Local{Model: lm.Model, Experts: lm.experts}
				out.Mode = "local"
			} else {
				rs, err := newRouterScorer(addr, apiKey, &dial)
				if err != nil {
					return err
				}
				scorer = rs
				out.Mode = "router " + rs.base
			}
			bar := newProgress(cmd.ErrOrStderr(), "tokens")
			res, err := eval.Perplexity(ctx, scorer, tokens, eval.Options{Context: tf.context, Stride: stride, Progress: bar.update})
			bar.done()
			if err != nil {
				return err
			}
			if rs, ok := scorer.(*routerScorer); ok {
				out.Model = rs.model
			}
			out.PPL, out.NLL, out.Tokens, out.Windows, out.MeanLogLikelihood = res.Perplexity(), res.NLL, res.Tokens, res.Windows, res.MeanLogLikelihood()
			w := cmd.OutOrStdout()
			if tf.output == "json" {
				return json.NewEncoder(w).Encode(out)
			}
			_, err = fmt.Fprintf(w, "%s: perplexity %.4f, mean log-likelihood %.6f nats over %d tokens in %d windows of %d (stride %d, %s)\n",
				out.Model, out.PPL, out.MeanLogLikelihood, out.Tokens, out.Windows, out.Context, out.Stride, out.Mode)
			return err
		},
	}
	tf.register(cmd)
	f := cmd.Flags()
	f.IntVar(&stride, "stride", 0, "new tokens scored per window, at most context-1 (default context-1: windows share one token)")
	f.StringVar(&addr, "addr", "", "router HTTP address (host:port, https unless --insecure, or http(s)://host:port); default: run the model in this process")
	dial.register(f)
	f.StringVar(&apiKey, "api-key", "", "API key for the router (Authorization: Bearer)")
	f.DurationVar(&timeout, "timeout", 0, "give up after this long (0: never)")
	return cmd
}

// perplexityOutput is the JSON of `eval perplexity`.
type perplexityOutput struct {
	PPL               float64 `json:"ppl"`
	NLL               float64 `json:"nll"`
	MeanLogLikelihood float64 `json:"mean_log_likelihood"`
	Tokens            int     `json:"tokens"`
	Windows           int     `json:"windows"`
	Context           int     `json:"context"`
	Stride            int     `json:"stride"`
	Model             string  `json:"model"`
	// Mode is "local" or "router ADDR".
	Mode string `json:"mode"`
}

// routerScorer scores windows through a router's /v1/completions: the
// window as a token-id prompt, echo, logprobs 0 and max_tokens 0, which
// returns the prompt's log-probabilities and generates nothing.
type routerScorer struct {
	base, apiKey string
	client       *http.Client
	// model is the name the router serves, from its last response.
	model string
}

// newRouterScorer scores through the router at addr: an http:// URL in
// plaintext; an https:// URL or a bare host:port over TLS with the
// certificates d gives, or in plaintext when d says insecure.
func newRouterScorer(addr, apiKey string, d *dialFlags) (*routerScorer, error) {
	base := strings.TrimRight(addr, "/")
	scheme, rest, explicit := strings.Cut(base, "://")
	if !explicit {
		scheme, rest = "", base
	}
	if explicit && scheme != "http" && scheme != "https" || rest == "" {
		return nil, fmt.Errorf("--addr %q: want host:port or an http(s) URL", addr)
	}
	client := &http.Client{}
	if scheme != "http" {
		hostport, _, _ := strings.Cut(rest, "/")
		host, _, err := net.SplitHostPort(hostport)
		if err != nil {
			host = hostport
		}
		cfg, err := d.httpTLS(host)
		if err != nil {
			return nil, err
		}
		switch {
		case cfg != nil:
			client.Transport = &http.Transport{TLSClientConfig: cfg}
			scheme = "https"
		case scheme == "":
			scheme = "http"
		}
	}
	return &routerScorer{base: scheme + "://" + rest, apiKey: apiKey, client: client}, nil
}

type completionResponse struct {
	Model   string `json:"model"`
	Choices []struct {
		Logprobs *struct {
			// Decoded as float32, the router's own values: json parses
			// each number at the field's precision.
			TokenLogprobs []*float32 `json:"token_logprobs"`
		} `json:"logprobs"`
	} `json:"choices"`
	Error *struct {
		Message string `json:"message"`
	} `json:"error"`
}

func (s *routerScorer) Score(ctx context.Context, tokens []int) ([]float32, error) {
	body, err := json.Marshal(map[string]any{"prompt": tokens, "echo": true, "logprobs": 0, "max_tokens": 0})
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.base+"/v1/completions", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	if s.apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+s.apiKey)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("router: %w", err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, fmt.Errorf("router: reading the response: %w", err)
	}
	var cr completionResponse
	if err := json.Unmarshal(raw, &cr); err != nil {
		return nil, fmt.Errorf("router: %s: not a completion: %w", resp.Status, err)
	}
	if resp.StatusCode != http.StatusOK {
		if cr.Error != nil {
			return nil, fmt.Errorf("router: %s: %s", resp.Status, cr.Error.Message)
		}
		return nil, fmt.Errorf("router: %s", resp.Status)
	}
	if len(cr.Choices) != 1 || cr.Choices[0].Logprobs == nil {
		return nil, errors.New("router: the completion has no logprobs")
	}
	lps := cr.Choices[0].Logprobs.TokenLogprobs
	if len(lps) != len(tokens) {
		return nil, fmt.Errorf("router: %d prompt log-probabilities for %d tokens", len(lps), len(tokens))
	}
	out := make([]float32, len(tokens)-1)
	for i, lp := range lps[1:] {
		if lp == nil {
			return nil, fmt.Errorf("router: no log-probability for prompt token %d", i+1)
		}
		out[i] = *lp
	}
	s.model = cr.Model
	return out, nil
}

func newExpertLoadCmd() *cobra.Command {
	var tf textFlags
	cmd := &cobra.Command{
		Use:   "experts --model DIR|FILE.gguf --text FILE",
		Short: "How the gates load the experts of each layer on a text: shares, max/mean and entropy",
		Long: `Experts routes the text through the model in this process, in consecutive
windows of --context tokens, and reports for each layer the share of routed
token slots (num_experts_per_tok per token) each expert received, the
busiest expert's share over the mean (1 is uniform) and the entropy of the
shares over log(experts) (1 is uniform).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			tokens, _, err := tf.tokens()
			if err != nil {
				return err
			}
			lm, err := loadLocal(tf.model)
			if err != nil {
				return err
			}
			defer lm.Close()
			bar := newProgress(cmd.ErrOrStderr(), "tokens")
			load, err := eval.MeasureExpertLoad(cmd.Context(), lm.Model, lm.experts, tokens, tf.context, bar.update)
			bar.done()
			if err != nil {
				return err
			}
			out := expertLoadOutput{Model: filepath.Base(filepath.Clean(tf.model)), Tokens: load.Tokens, ExpertsPerToken: lm.Config.NumExpertsPerTok}
			for l := range load.Counts {
				out.Layers = append(out.Layers, layerLoad{Layer: l, Counts: load.Counts[l], Fractions: load.Fractions(l), MaxOverMean: load.MaxOverMean(l), Entropy: load.Entropy(l)})
			}
			if tf.output == "json" {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(out)
			}
			return writeExpertLoad(cmd.OutOrStdout(), out)
		},
	}
	tf.register(cmd)
	return cmd
}

// expertLoadOutput is the JSON of `eval experts`.
type expertLoadOutput struct {
	Model           string      `json:"model"`
	Tokens          int         `json:"tokens"`
	ExpertsPerToken int         `json:"experts_per_token"`
	Layers          []layerLoad `json:"layers"`
}

type layerLoad struct {
	Layer       int       `json:"layer"`
	Counts      []int     `json:"counts"`
	Fractions   []float64 `json:"fractions"`
	MaxOverMean float64   `json:"max_over_mean"`
	Entropy     float64   `json:"entropy"`
}

func writeExpertLoad(w io.Writer, out expertLoadOutput) error {
	fmt.Fprintf(w, "%s: %d tokens, %d experts each, per layer the share of slots each expert received\n", out.Model, out.Tokens, out.ExpertsPerToken)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	if len(out.Layers) > 0 {
		fmt.Fprint(tw, "LAYER\t")
		for e := range out.Layers[0].Fractions {
			fmt.Fprintf(tw, "e%d\t", e)
		}
		fmt.Fprint(tw, "MAX/MEAN\tENTROPY\t\n")
	}
	for _, l := range out.Layers {
		fmt.Fprintf(tw, "%d\t", l.Layer)
		for _, f := range l.Fractions {
			fmt.Fprintf(tw, "%.1f%%\t", 100*f)
		}
		fmt.Fprintf(tw, "%.2f\t%.3f\t\n", l.MaxOverMean, l.Entropy)
	}
	return tw.Flush()
}

// progress draws a bar on w when w is a terminal, and nothing otherwise, so
// that redirected output stays clean.
type progress struct {
	w    io.Writer
	unit string
	on   bool
}

func newProgress(w io.Writer, unit string) *progress {
	f, ok := w.(*os.File)
	on := false
	if ok {
		fi, err := f.Stat()
		on = err == nil && fi.Mode()&os.ModeCharDevice != 0
	}
	return &progress{w: w, unit: unit, on: on}
}

func (p *progress) update(done, total int) {
	if !p.on || total <= 0 {
		return
	}
	const width = 30
	n := int(math.Round(width * float64(done) / float64(total)))
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d %s", strings.Repeat("#", n), strings.Repeat(".", width-n), done, total, p.unit)
}

func (p *progress) done() {
	if p.on {
		fmt.Fprint(p.w, "\r\033[K")
	}
}
