// Package bench drives a router's Generation API with a bounded load and
// measures what users feel: time to first token, time between tokens,
// request latency and token throughput. It is what `moegrid bench` runs.
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
	case c.Vocab < 4:
		return fmt.Errorf("bench: vocabulary %d too small", c.Vocab)
	}
	return nil
}

// Result summarises a run. Durations are seconds.
type Result struct {
	Requests        int            `json:"requests"`
	Failed          int            `json:"failed"`
	Errors          map[string]int `json:"errors,omitempty"`
	Tokens          int            `json:"tokens"`
	Seconds         float64        `json:"seconds"`
	TokensPerSecond float64        `json:"tokens_per_second"`
	TTFT            Percentiles    `json:"ttft_seconds"`
	InterToken      Percentiles    `json:"inter_token_seconds"`
	Latency         Percentiles    `json:"latency_seconds"`
}

// Percentiles of a sample.
type Percentiles struct {
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
	return Percentiles{P50: at(0.5), P90: at(0.9), P99: at(0.99), Max: xs[len(xs)-1]}
}

// sample is what one request measured.
type sample struct {
	ttft, latency float64
	gaps          []float64
	tokens        int
	err           error
}

// Run sends the requests and waits for all of them.
func Run(ctx context.Context, client moegridv1.GenerationClient, cfg Config) (Result, error) {
	if err := cfg.validate(); err != nil {
		return Result{}, err
	}
	rng := rand.New(rand.NewPCG(cfg.Seed, 0x62656e6368))
	prompts := make([][]uint32, cfg.Requests)
	for i := range prompts {
		p := []uint32{1}
		for len(p) < cfg.PromptTokens {
			p = append(p, uint32(3+rng.IntN(cfg.Vocab-3)))
		}
		prompts[i] = p
	}

	samples := make([]sample, cfg.Requests)
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range min(cfg.Concurrency, cfg.Requests) {
		wg.Go(func() {
			for i := range next {
				samples[i] = one(ctx, client, prompts[i], cfg)
			}
		})
	}
feed:
	for i := range cfg.Requests {
		select {
		case next <- i:
		case <-ctx.Done():
			break feed
		}
	}
	close(next)
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	if err := ctx.Err(); err != nil {
		return Result{}, err
	}

	res := Result{Requests: cfg.Requests, Seconds: elapsed}
	var ttft, gaps, lat []float64
	for _, s := range samples {
		if s.err != nil {
			res.Failed++
			if res.Errors == nil {
				res.Errors = map[string]int{}
			}
			res.Errors[status.Code(s.err).String()]++
			continue
		}
		res.Tokens += s.tokens
		ttft = append(ttft, s.ttft)
		lat = append(lat, s.latency)
		gaps = append(gaps, s.gaps...)
	}
	res.TokensPerSecond = float64(res.Tokens) / elapsed
	res.TTFT, res.InterToken, res.Latency = percentiles(ttft), percentiles(gaps), percentiles(lat)
	return res, nil
}

// one runs a single request.
func one(ctx context.Context, client moegridv1.GenerationClient, prompt []uint32, cfg Config) sample {
	if cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, cfg.Timeout)
		defer cancel()
	}
	var s sample
	start := time.Now()
	stream, err := client.Generate(ctx, &moegridv1.GenerateRequest{
		Prompt:    &moegridv1.GenerateRequest_Ids{Ids: &moegridv1.TokenIDs{Ids: prompt}},
		MaxTokens: uint32(cfg.MaxTokens),
		IgnoreEos: true,
	})
	if err != nil {
		s.err = err
		return s
	}
	last := start
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			s.err = err
			return s
		}
		if len(msg.TokenIds) == 0 {
			continue
		}
		now := time.Now()
		if s.tokens == 0 {
			s.ttft = now.Sub(start).Seconds()
		} else {
			s.gaps = append(s.gaps, now.Sub(last).Seconds())
		}
		last = now
		s.tokens += len(msg.TokenIds)
	}
	s.latency = time.Since(start).Seconds()
	return s
}

// WriteText prints a result for people.
func WriteText(w io.Writer, cfg Config, r Result) {
	ms := func(p Percentiles) string {
		return fmt.Sprintf("p50 %.1f ms, p90 %.1f ms, p99 %.1f ms, max %.1f ms", 1e3*p.P50, 1e3*p.P90, 1e3*p.P99, 1e3*p.Max)
	}
	fmt.Fprintf(w, "%d requests (%d at a time), %d-token prompts, %d tokens each: %d failed\n",
		r.Requests, cfg.Concurrency, cfg.PromptTokens, cfg.MaxTokens, r.Failed)
	for code, n := range r.Errors {
		fmt.Fprintf(w, "  %d × %s\n", n, code)
	}
	fmt.Fprintf(w, "throughput      %.1f tokens/s (%d tokens in %.2f s)\n", r.TokensPerSecond, r.Tokens, r.Seconds)
	fmt.Fprintf(w, "first token     %s\n", ms(r.TTFT))
	fmt.Fprintf(w, "between tokens  %s\n", ms(r.InterToken))
	fmt.Fprintf(w, "request         %s\n", ms(r.Latency))
}
