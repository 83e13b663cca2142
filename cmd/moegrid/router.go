package main

import (
	"fmt"
	"strings"

	"github.com/spf13/cobra"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
	"github.com/moegrid/moegrid/router"
)

func newRouterCmd() *cobra.Command {
	cfg := router.DefaultConfig()
	var cf clusterFlags
	var wire string
	cmd := &cobra.Command{
		Use:   "router --model DIR --etcd-endpoints URLS",
		Short: "Run the gating router: attention and gates here, experts over gRPC; serves Generate and the OpenAI HTTP API",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(cmd)
			if err != nil {
				return err
			}
			switch strings.ToLower(wire) {
			case "f32":
				cfg.Dispatch.DType = moegridv1.DType_DTYPE_F32
			case "bf16":
				cfg.Dispatch.DType = moegridv1.DType_DTYPE_BF16
			default:
				return fmt.Errorf("--wire-dtype %q: want f32 or bf16", wire)
			}
			if err := cfg.Scheduler.Validate(); err != nil {
				return err
			}
			cfg.EtcdEndpoints, cfg.Prefix = cf.etcd, cf.prefix
			cfg.GossipAddr, cfg.GossipAdvertise, cfg.Join = cf.gossipAddr, cf.gossipAdvertise, cf.join
			cfg.Security = cf.security
			r, err := router.New(cfg, log, newRegistry())
			if err != nil {
				return err
			}
			return r.Run(cmd.Context())
		},
	}
	f := cmd.Flags()
	cf.register(f)
	f.StringVar(&cfg.ID, "id", defaultID(cfg.ID), "router ID, unique in the cluster")
	f.StringVar(&cfg.ModelDir, "model", cfg.ModelDir, "checkpoint directory (config.json, *.safetensors, tokenizer.json)")
	f.StringVar(&cfg.ModelName, "model-name", cfg.ModelName, "model name in the HTTP API (default: the directory name)")
	f.StringVar(&cfg.GRPCAddr, "grpc-addr", cfg.GRPCAddr, "gRPC listen address (Generation service)")
	f.StringVar(&cfg.HTTPAddr, "http-addr", cfg.HTTPAddr, "HTTP listen address (OpenAI API, /metrics, /healthz, /readyz)")
	f.StringVar(&wire, "wire-dtype", "f32", "activation dtype on the wire: f32 (exact) or bf16 (half the bytes)")
	f.DurationVar(&cfg.Dispatch.CallTimeout, "call-timeout", cfg.Dispatch.CallTimeout, "bound on one Forward call to an expert node: the ceiling of the deadlines derived from latency, and the deadline of a call to a sole holder")
	f.DurationVar(&cfg.Dispatch.HedgeMin, "hedge-min", cfg.Dispatch.HedgeMin, "shortest time an expert call runs before it is also sent to another holder (the delay is 3x the node's p95, up to --hedge-max)")
	f.DurationVar(&cfg.Dispatch.HedgeMax, "hedge-max", cfg.Dispatch.HedgeMax, "longest time an expert call runs before it is also sent to another holder; also the delay before a node has a latency history")
	f.Float64Var(&cfg.Dispatch.HedgeMultiple, "hedge-multiple", cfg.Dispatch.HedgeMultiple, "hedge an expert call after this multiple of the node's p95 latency; negative disables hedging")
	f.IntVar(&cfg.Dispatch.EjectAfter, "eject-after", cfg.Dispatch.EjectAfter, "consecutive failures or timeouts that eject an expert node for a backoff; negative disables ejection")
	f.DurationVar(&cfg.Dispatch.EjectBackoff, "eject-backoff", cfg.Dispatch.EjectBackoff, "first backoff of an ejected expert node, doubled after each failed probe up to 30s")
	f.DurationVar(&cfg.Dispatch.WaitForHolder, "wait-for-holder", cfg.Dispatch.WaitForHolder, "how long a step waits for an expert with no live holder before failing UNAVAILABLE")
	f.IntVar(&cfg.Scheduler.MaxBatchTokens, "max-batch-tokens", cfg.Scheduler.MaxBatchTokens, "tokens per scheduler step, decode and prefill together")
	f.IntVar(&cfg.Scheduler.PrefillChunk, "prefill-chunk", cfg.Scheduler.PrefillChunk, "most prompt tokens of one sequence per step")
	f.Float64Var(&cfg.Scheduler.PrefillShare, "prefill-share", cfg.Scheduler.PrefillShare, "work a step may spend on prompts while others decode, as a multiple of the decoding rows' work (1: a prompt at most doubles a step)")
	f.Float64Var(&cfg.Scheduler.StepBaseRows, "step-base-rows", cfg.Scheduler.StepBaseRows, "what the scheduler's work count takes a step to cost before its rows (reading the weights), in rows; part of the decoding work --prefill-share is taken of")
	f.Float64Var(&cfg.Scheduler.AttentionPrice, "attention-price", cfg.Scheduler.AttentionPrice, "what the scheduler's work count takes one attention multiply-add to cost, in weight multiply-adds")
	f.IntVar(&cfg.Scheduler.MaxPromptTokens, "max-prompt-tokens", cfg.Scheduler.MaxPromptTokens, "longest prompt accepted, in tokens; longer is INVALID_ARGUMENT (0: the model's context)")
	f.Int64Var(&cfg.Scheduler.KVCacheBytes, "kv-cache-bytes", cfg.Scheduler.KVCacheBytes, "KV cache memory the running sequences may reserve, prompt + max_tokens each (0: a quarter of the machine's or cgroup's memory)")
	f.IntVar(&cfg.Scheduler.MaxRunning, "max-running", cfg.Scheduler.MaxRunning, "sequences decoding at once")
	f.IntVar(&cfg.Scheduler.MaxWaiting, "max-waiting", cfg.Scheduler.MaxWaiting, "requests queued before RESOURCE_EXHAUSTED")
	f.IntVar(&cfg.DefaultMaxTokens, "default-max-tokens", cfg.DefaultMaxTokens, "max_tokens of requests that give none")
	f.IntVar(&cfg.MaxExplainTokens, "max-explain-tokens", cfg.MaxExplainTokens, "most positions, prompt tokens plus max_tokens, a request with explain may ask for; more is INVALID_ARGUMENT (HTTP 400)")
	f.DurationVar(&cfg.RequestTimeout, "request-timeout", cfg.RequestTimeout, "deadline of requests whose client sets none (0: none)")
	f.DurationVar(&cfg.LeaseTTL, "lease-ttl", cfg.LeaseTTL, "etcd lease time to live of the load record")
	f.DurationVar(&cfg.StopTimeout, "stop-timeout", cfg.StopTimeout, "graceful stop bound")
	f.StringVar(&cfg.APIKeysFile, "api-keys", cfg.APIKeysFile, "API key file (made by moegrid keys create), reloaded when it changes; clients send Authorization: Bearer KEY (default: no authentication)")
	cmd.MarkFlagRequired("model")
	return cmd
}
