package main

import (
	"encoding/json"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/moegrid/moegrid/internal/bench"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

func newBenchCmd() *cobra.Command {
	cfg := bench.Config{Requests: 64, Concurrency: 8, PromptTokens: 32, MaxTokens: 32, Vocab: 32000, Seed: 1, Timeout: 5 * time.Minute}
	var addr, output string
	cmd := &cobra.Command{
		Use:   "bench [--addr HOST:PORT] [--requests 64] [--concurrency 8]",
		Short: "Load a router with a bounded number of requests and report throughput and latencies",
		Long: `Send --requests generation requests, --concurrency at a time, each a
random --prompt-tokens prompt asking for exactly --max-tokens tokens, to a
router (the one moegrid up started when --addr is not given), and report
tokens per second and the percentiles of time to first token, time between
tokens and request latency. The run is bounded by --requests and stops by
itself.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			conn, err := dialRouter(addr)
			if err != nil {
				return err
			}
			defer conn.Close()
			res, err := bench.Run(cmd.Context(), moegridv1.NewGenerationClient(conn), cfg)
			if err != nil {
				return err
			}
			if output == "json" {
				return json.NewEncoder(cmd.OutOrStdout()).Encode(res)
			}
			bench.WriteText(cmd.OutOrStdout(), cfg, res)
			if res.Failed > 0 {
				return fmt.Errorf("%d of %d requests failed", res.Failed, res.Requests)
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "", "router gRPC address (default: the router of the running `moegrid up`)")
	f.IntVar(&cfg.Requests, "requests", cfg.Requests, "requests to send in all")
	f.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "requests in flight at once")
	f.IntVar(&cfg.PromptTokens, "prompt-tokens", cfg.PromptTokens, "prompt length in tokens (BOS and random ids)")
	f.IntVar(&cfg.MaxTokens, "max-tokens", cfg.MaxTokens, "tokens generated per request (end-of-sequence ignored)")
	f.IntVar(&cfg.Vocab, "vocab", cfg.Vocab, "vocabulary size the random prompt ids are drawn from")
	f.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the random prompts")
	f.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "deadline of each request")
	f.StringVarP(&output, "output", "o", "text", "text or json")
	return cmd
}
