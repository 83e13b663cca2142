package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/bench"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
	"github.com/moegrid/moegrid/router"
)

func newBenchCmd() *cobra.Command {
	cfg := bench.Config{Requests: 64, Concurrency: 8, PromptTokens: 32, MaxTokens: 32, Vocab: 32000, Seed: 1, Timeout: 5 * time.Minute}
	sched := router.DefaultSchedulerConfig()
	var addr, output, modelDir, apiKey string
	var inProcess bool
	var tlsFlags dialFlags
	cmd := &cobra.Command{
		Use:   "bench [--addr HOST:PORT[,HOST:PORT...] | --in-process --model DIR] [--requests 64] [--concurrency 8]",
		Short: "Load a router with a bounded number of requests and report throughput and latencies",
		Long: `Send --requests generation requests, --concurrency at a time, each a
random --prompt-tokens prompt asking for exactly --max-tokens tokens, to a
router (the one moegrid up started when --addr is not given), and report
tokens per second and the percentiles of time to first token, time between
tokens and request latency. With several --addr routers a request that one
refuses UNAVAILABLE before its first token goes to the next; a failed
request is reported with how long after its last token it was told. The run is bounded by --requests and stops by
itself; --warmup requests run before it unmeasured.

With --in-process the same requests go, without a network, to the router's
scheduler over the checkpoint in --model with every expert in this process,
so that a cluster and one process are compared by one pair of commands.
Each wave of --concurrency requests starts there in one scheduler step. Its
kernels use GOMAXPROCS threads (set it in the environment).

When every request is in flight at once (--requests no more than
--concurrency) the report splits the run as llama.cpp's batched bench does:
prefill tokens/s until every request's first token, decode tokens/s after.

The command fails when any request failed.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			var res bench.Result
			switch {
			case inProcess && addr != "":
				return errors.New("give --addr or --in-process, not both")
			case inProcess:
				if modelDir == "" {
					return errors.New("--in-process needs --model DIR")
				}
				log, err := newLogger(cmd)
				if err != nil {
					return err
				}
				if res, err = bench.RunInProcess(cmd.Context(), modelDir, sched, cfg, log); err != nil {
					return err
				}
			default:
				if modelDir != "" {
					return errors.New("--model is for --in-process; a router serves its own model")
				}
				addrs, err := routerAddrs(addr)
				if err != nil {
					return err
				}
				var g failover
				for _, a := range addrs {
					conn, err := tlsFlags.dial(a)
					if err != nil {
						return fmt.Errorf("router %s: %w", a, err)
					}
					defer conn.Close()
					g = append(g, bench.GRPC(moegridv1.NewGenerationClient(conn)))
				}
				if res, err = bench.RunWith(withAPIKey(cmd.Context(), apiKey), g, cfg); err != nil {
					return err
				}
			}
			if output == "json" {
				if err := json.NewEncoder(cmd.OutOrStdout()).Encode(res); err != nil {
					return err
				}
			} else {
				bench.WriteText(cmd.OutOrStdout(), cfg, res)
			}
			return res.Err()
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "", "router gRPC addresses, comma separated: a request that fails UNAVAILABLE before its first token goes to the next (default: the router of the running moegrid up)")
	tlsFlags.register(f)
	f.BoolVar(&inProcess, "in-process", false, "run the router's scheduler over --model in this process instead of calling a router")
	f.StringVar(&modelDir, "model", "", "checkpoint directory for --in-process")
	f.StringVar(&apiKey, "api-key", "", "API key sent as a bearer token (also MOEGRID_API_KEY)")
	f.IntVar(&cfg.Requests, "requests", cfg.Requests, "requests to send in all")
	f.IntVar(&cfg.Concurrency, "concurrency", cfg.Concurrency, "requests in flight at once")
	f.IntVar(&cfg.PromptTokens, "prompt-tokens", cfg.PromptTokens, "prompt length in tokens (BOS and random ids)")
	f.IntVar(&cfg.MaxTokens, "max-tokens", cfg.MaxTokens, "tokens generated per request (end-of-sequence ignored)")
	f.IntVar(&cfg.Warmup, "warmup", cfg.Warmup, "unmeasured requests run first, --concurrency at a time")
	f.BoolVar(&cfg.SamePrompt, "same-prompt", false, "give every request the same random prompt (identical greedy sequences route alike)")
	f.IntVar(&cfg.Vocab, "vocab", cfg.Vocab, "vocabulary size the random prompt ids are drawn from")
	f.Uint64Var(&cfg.Seed, "seed", cfg.Seed, "seed of the random prompts")
	f.DurationVar(&cfg.Timeout, "timeout", cfg.Timeout, "deadline of each request")
	f.StringVarP(&output, "output", "o", "text", "text or json")
	f.IntVar(&sched.MaxBatchTokens, "max-batch-tokens", sched.MaxBatchTokens, "--in-process: tokens per scheduler step, decode and prefill together")
	f.IntVar(&sched.PrefillChunk, "prefill-chunk", sched.PrefillChunk, "--in-process: most prompt tokens of one sequence per step")
	f.IntVar(&sched.MaxRunning, "max-running", sched.MaxRunning, "--in-process: sequences decoding at once")
	f.IntVar(&sched.MaxWaiting, "max-waiting", sched.MaxWaiting, "--in-process: requests queued before they are refused")
	return cmd
}

// failover is a list of routers as one bench.Generator: a request goes to
// the next router only when the one before failed it UNAVAILABLE before its
// first token, so that a router dying under a run costs only the streams it
// had started. Unlike genclient.Stream (`moegrid generate`) it does not
// resume a cut stream: bench reports such a request as failed, with how
// soon it was told, which is what a fault run measures. It keeps one
// connection per router for the whole run.
type failover []bench.Generator

func (f failover) Generate(ctx context.Context, prompt []int, maxTokens int, tokens func(ids []int)) error {
	var err error
	for _, g := range f {
		started := false
		err = g.Generate(ctx, prompt, maxTokens, func(ids []int) {
			started = true
			tokens(ids)
		})
		if err == nil || started || status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			break
		}
	}
	return err
}
