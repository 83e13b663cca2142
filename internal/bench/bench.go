// Package bench drives a generator with a bounded load and measures what
// users feel: time to first token, time between tokens, request latency and
// token throughput. The generator is a router's Generation API over gRPC or
// the router's scheduler over a model in this process (Local), so the cluster
// and one process are measured by the same code. It is what `moegrid bench`
// runs.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"google.golang.org/grpc/status"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// Config is one load run: Requests requests, Concurrency at a time, each a
// prompt of PromptTokens random token ids (BOS first) asking for exactly
// MaxTokens tokens.
type Config struct {
	Requests     int
	Concurrency  int
	PromptTokens int
	MaxTokens    int
	// Warmup requests run first, Concurrency at a time, and are not
	// measured: the first touches the weights and fills the caches.
	Warmup int
	// SamePrompt gives every request the same prompt, so that greedy
	// sequences stay identical and route to the same experts, as in
	// llama.cpp's batched bench, whose sequences are all one token
	// repeated.
	SamePrompt bool
	// Vocab bounds the random prompt ids; ids 3 and up (past the specials).
	Vocab int
	// Seed makes the prompts reproducible.
	Seed uint64
	// Timeout bounds each request.
	Timeout time.Duration
}

func (c Config) validate() error {
	switch {
	case c.Requests < 1 || c.Concurrency < 1:
		return fmt.Errorf("bench: requests %d and concurrency %d must be at least 1", c.Requests, c.Concurrency)
	case c.PromptTokens < 1 || c.MaxTokens < 1:
		return fmt.Errorf("bench: prompt tokens %d and max tokens %d must be at least 1", c.PromptTokens, c.MaxTokens)
	case c.Warmup < 0:
		return fmt.Errorf("bench: warmup %d must not be negative", c.Warmup)
	case c.Vocab < 4:
		return fmt.Errorf("bench: vocabulary %d too small", c.Vocab)
	}
	return nil
}

// Generator is what a run loads.
type Generator interface {
	// Generate asks for exactly maxTokens tokens after prompt, ignoring
	// end-of-sequence, and calls tokens with each piece of the stream as it
	// arrives, from the calling goroutine. It returns when the stream ends.
	// Generate is called from many goroutines at once.
	Generate(ctx context.Context, prompt []int, maxTokens int, tokens func(ids []int)) error
}

// Result summarises a run. Durations are seconds.
type Result struct {
	Requests int `json:"requests"`
	Failed   int `json:"failed"`
	// Errors counts the failures by gRPC code, or by message for errors
	// that carry none; FirstError is one failure's message.
	Errors     map[string]int `json:"errors,omitempty"`
	FirstError string         `json:"first_error,omitempty"`
	// FailedAfter is, for the failed requests, the time from their last
	// token (or their start, when none came) to their failure: how long a
	// client waited to be told.
	FailedAfter     Percentiles `json:"failed_after_seconds"`
	Tokens          int         `json:"tokens"`
	Seconds         float64     `json:"seconds"`
	TokensPerSecond float64     `json:"tokens_per_second"`
	// PrefillTokensPerSecond and DecodeTokensPerSecond split the throughput
	// of a run whose requests were all in flight at once (requests ≤
	// concurrency, none failed), as llama.cpp's batched bench does: prefill
	// is the prompt tokens over the time until every request had its first
	// token; decode the tokens that arrived after that moment over the time
	// from it to the last token. Zero when the run has no such phases.
	PrefillTokensPerSecond float64     `json:"prefill_tokens_per_second,omitempty"`
	DecodeTokensPerSecond  float64     `json:"decode_tokens_per_second,omitempty"`
	TTFT                   Percentiles `json:"ttft_seconds"`
	InterToken             Percentiles `json:"inter_token_seconds"`
	Latency                Percentiles `json:"latency_seconds"`
}

// Err reports the failed requests as an error, nil when none failed.
func (r Result) Err() error {
	if r.Failed == 0 {
		return nil
	}
	return fmt.Errorf("bench: %d of %d requests failed, e.g. %s", r.Failed, r.Requests, r.FirstError)
}

// Percentiles of a sample.
type Percentiles struct {
	Min float64 `json:"min"`
	P50 float64 `json:"p50"`
	P90 float64 `json:"p90"`
	P99 float64 `json:"p99"`
	Max float64 `json:"max"`
}

func percentiles(xs []float64) Percentiles {
	if len(xs) == 0 {
		return Percentiles{}
	}
	slices.Sort(xs)
	at := func(q float64) float64 { return xs[min(len(xs)-1, int(q*float64(len(xs))))] }
	return Percentiles{Min: xs[0], P50: at(0.5), P90: at(0.9), P99: at(0.99), Max: xs[len(xs)-1]}
}

// arrival is one piece of a stream: n tokens at seconds since the run began.
type arrival struct {
	at float64
	n  int
}

// record is what one request measured; times are seconds since the run
// began.
type record struct {
	start, end   float64
	promptTokens int
	arrivals     []arrival
	err          error
}

func (s *record) tokens() int {
	n := 0
	for _, a := range s.arrivals {
		n += a.n
	}
	return n
}

// Run loads a router's Generation API.
func Run(ctx context.Context, client moegridv1.GenerationClient, cfg Config) (Result, error) {
	return RunWith(ctx, GRPC(client), cfg)
}

// RunWith runs the warm-up requests, then sends the measured ones and waits
// for all of them. A failed request is counted in the result, not returned
// as an error (see Result.Err).
func RunWith(ctx context.Context, g Generator, cfg Config) (Result, error) {
	return run(ctx, cfg, func(ctx context.Context, prompts [][]int) ([]record, float64, error) {
		records, elapsed := load(ctx, g, prompts, cfg)
		return records, elapsed, nil
	})
}

// A phase sends prompts, Concurrency at a time, and returns what each
// request measured and how long all took.
type phase func(ctx context.Context, prompts [][]int) ([]record, float64, error)

// run makes the prompts of cfg and runs the warm-up phase, then the
// measured one.
func run(ctx context.Context, cfg Config, ph phase) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x62656e6368))
	prompts := func(n int) [][]int {
		ps := make([][]int, n)
		for i := range ps {
			if cfg.SamePrompt && i > 0 {
				ps[i] = ps[0]
				continue
			}
			p := []int{1}
			for len(p) < cfg.PromptTokens {
				p = append(p, 3+rng.IntN(cfg.Vocab-3))
			}
			ps[i] = p
		}
		return ps
	}
	warm, measured := prompts(cfg.Warmup), prompts(cfg.Requests)
	if len(warm) > 0 {
		if _, _, err := ph(ctx, warm); err != nil {
			return Result{}, err
		}
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	records, elapsed, err := ph(ctx, measured)
	if err != nil {
		return Result{}, err
	}
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}
	return summarise(cfg, records, elapsed), nil
}

// load sends prompts, Concurrency at a time, and returns what each measured
// and how long all took.
func load(ctx context.Context, g Generator, prompts [][]int, cfg Config) ([]record, float64) {
	records := make([]record, len(prompts))
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range min(cfg.Concurrency, len(prompts)) {
		wg.Go(func() {
			for i := range next {
				records[i] = one(ctx, g, prompts[i], start, cfg)
			}
		})
	}
feed:
	for i := range prompts {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	return records, time.Since(start).Seconds()
}

// one runs a single request.
func one(ctx context.Context, g Generator, prompt []int, runStart time.Time, cfg Config) record {
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	s := record{start: time.Since(runStart).Seconds(), promptTokens: len(prompt)}
	s.err = g.Generate(ctx, prompt, cfg.MaxTokens, func(ids []int) {
		if len(ids) > 0 {
			s.arrivals = append(s.arrivals, arrival{at: time.Since(runStart).Seconds(), n: len(ids)})
		}
	})
	s.end = time.Since(runStart).Seconds()
	return s
}

// errorKey names an error in Result.Errors.
func errorKey(err error) string {
	if st, ok := status.FromError(err); ok {
		return st.Code().String()
	}
	return err.Error()
}

func summarise(cfg Config, records []record, elapsed float64) Result {
	res := Result{Requests: len(records), Seconds: elapsed}
	var ttft, gaps, lat, told []float64
	for _, s := range records {
		if s.err == nil && len(s.arrivals) == 0 {
			s.err = errors.New("bench: the stream ended without a token")
		}
		if s.err != nil {
			res.Failed++
			last := s.start
			if len(s.arrivals) > 0 {
				last = s.arrivals[len(s.arrivals)-1].at
			}
			told = append(told, s.end-last)
			if res.Errors == nil {
				res.Errors = map[string]int{}
				res.FirstError = s.err.Error()
			}
			res.Errors[errorKey(s.err)]++
			continue
		}
		res.Tokens += s.tokens()
		ttft = append(ttft, s.arrivals[0].at-s.start)
		lat = append(lat, s.end-s.start)
		for i := 1; i < len(s.arrivals); i++ {
			gaps = append(gaps, s.arrivals[i].at-s.arrivals[i-1].at)
		}
	}
	res.TokensPerSecond = float64(res.Tokens) / elapsed
	if res.Failed == 0 && len(records) <= cfg.Concurrency {
		res.PrefillTokensPerSecond, res.DecodeTokensPerSecond = phases(records)
	}
	res.TTFT, res.InterToken, res.Latency = percentiles(ttft), percentiles(gaps), percentiles(lat)
	res.FailedAfter = percentiles(told)
	return res
}

// phases splits a run of requests that were all in flight at once at the
// moment every one had its first token: the prompts were prefilled before
// it, the tokens after it decoded.
func phases(records []record) (prefill, decode float64) {
	var firstAll, last float64
	prompt := 0
	for _, s := range records {
		firstAll = max(firstAll, s.arrivals[0].at)
		last = max(last, s.arrivals[len(s.arrivals)-1].at)
	}
	decoded := 0
	for _, s := range records {
		prompt += s.promptTokens
		for _, a := range s.arrivals {
			if a.at > firstAll {
				decoded += a.n
			}
		}
	}
	if firstAll > 0 {
		prefill = float64(prompt) / firstAll
	}
	if decoded > 0 && last > firstAll {
		decode = float64(decoded) / (last - firstAll)
	}
	return prefill, decode
}

// grpcGenerator is a router's Generation API as a Generator.
type grpcGenerator struct {
	client moegridv1.GenerationClient
}

// GRPC returns a Generator that streams from a router's Generation API.
func GRPC(client moegridv1.GenerationClient) Generator { return grpcGenerator{client} }

func (g grpcGenerator) Generate(ctx context.Context, prompt []int, maxTokens int, tokens func([]int)) error {
	ids := make([]uint32, len(prompt))
	for i, id := range prompt {
		ids[i] = uint32(id)
	}
	stream, err := g.client.Generate(ctx, &moegridv1.GenerateRequest{
		Prompt:    &moegridv1.GenerateRequest_Ids{Ids: &moegridv1.TokenIDs{Ids: ids}},
		MaxTokens: uint32(maxTokens),
		IgnoreEos: true,
	})
	if err != nil {
		return err
	}
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if len(msg.TokenIds) == 0 {
			continue
		}
		piece := make([]int, len(msg.TokenIds))
		for i, id := range msg.TokenIds {
			piece[i] = int(id)
		}
		tokens(piece)
	}
}

// WriteText prints a result for people.
func WriteText(w io.Writer, cfg Config, r Result) {
	ms := func(p Percentiles) string {
		return fmt.Sprintf("min %.1f ms, p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms", 1e3*p.Min, 1e3*p.P50, 1e3*p.P90, 1e3*p.P99, 1e3*p.Max)
	}
	fmt.Fprintf(w, "%d requests (%d at a time), %d-token prompts, %d tokens each: %d failed\n",
		r.Requests, cfg.Concurrency, cfg.PromptTokens, cfg.MaxTokens, r.Failed)
	for code, n := range r.Errors {
		fmt.Fprintf(w, "  %d × %s\n", n, code)
	}
	if r.FirstError != "" {
		fmt.Fprintf(w, "  first error: %s\n", r.FirstError)
		fmt.Fprintf(w, "  told after    %s (from the last token, or the start)\n", ms(r.FailedAfter))
	}
	fmt.Fprintf(w, "throughput      %.1f tokens/s (%d tokens in %.2f s)\n", r.TokensPerSecond, r.Tokens, r.Seconds)
	if r.PrefillTokensPerSecond > 0 {
		fmt.Fprintf(w, "prefill         %.1f prompt tokens/s (until every request's first token)\n", r.PrefillTokensPerSecond)
	}
	if r.DecodeTokensPerSecond > 0 {
		fmt.Fprintf(w, "decode          %.1f tokens/s (after every request's first token)\n", r.DecodeTokensPerSecond)
	}
	fmt.Fprintf(w, "first token     %s\n", ms(r.TTFT))
	fmt.Fprintf(w, "between tokens  %s\n", ms(r.InterToken))
	fmt.Fprintf(w, "request         %s\n", ms(r.Latency))
}
