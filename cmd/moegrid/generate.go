package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/moegrid/moegrid/internal/genclient"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

func newGenerateCmd() *cobra.Command {
	var (
		addr, ids, output string
		maxTokens         uint32
		temperature, topP float32
		topK              uint32
		seed              int64
		stop              []string
		ignoreEOS         bool
		explain           bool
		timeout           time.Duration
		tlsFlags          dialFlags
		apiKey            string
	)
	cmd := &cobra.Command{
		Use:   `generate [--addr HOST:PORT[,HOST:PORT...]] "prompt" | --ids 1,415`,
		Short: "Stream a completion from a router (the one `moegrid up` started when --addr is not given)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &moegridv1.GenerateRequest{MaxTokens: maxTokens, Temperature: temperature, TopP: topP, TopK: topK, Stop: stop, IgnoreEos: ignoreEOS, Explain: explain}
			switch {
			case len(args) == 1 && ids != "":
				return errors.New("give a prompt or --ids, not both")
			case len(args) == 1:
				req.Prompt = &moegridv1.GenerateRequest_Text{Text: args[0]}
			case ids != "":
				toks, err := parseIDs(ids)
				if err != nil {
					return err
				}
				pr := &moegridv1.TokenIDs{}
				for _, id := range toks {
					if id < 0 {
						return fmt.Errorf("--ids: negative token id %d", id)
					}
					pr.Ids = append(pr.Ids, uint32(id))
				}
				req.Prompt = &moegridv1.GenerateRequest_Ids{Ids: pr}
			default:
				return errors.New("give a prompt or --ids")
			}
			if cmd.Flags().Changed("seed") {
				s := uint64(seed)
				req.Seed = &s
			}
			if output != "text" && output != "json" {
				return fmt.Errorf("--output %q: want text or json", output)
			}
			addrs, err := routerAddrs(addr)
			if err != nil {
				return err
			}
			ctx := withAPIKey(cmd.Context(), apiKey)
			if timeout > 0 {
				var cancel func()
				ctx, cancel = context.WithTimeout(ctx, timeout)
				defer cancel()
			}
			out := cmd.OutOrStdout()
			var got []int
			var text strings.Builder
			var last *moegridv1.GenerateResponse
			var ex explanation
			err = genclient.Stream(ctx, addrs, tlsFlags.dial, req, cmd.ErrOrStderr(), func(msg *moegridv1.GenerateResponse) {
				for _, id := range msg.TokenIds {
					got = append(got, int(id))
				}
				text.WriteString(msg.Text)
				switch {
				case explain:
					ex.add(msg)
					if output == "text" {
						ex.printLast(out, len(msg.TokenIds))
					}
				case output == "text":
					fmt.Fprint(out, msg.Text)
				}
				if msg.FinishReason != moegridv1.FinishReason_FINISH_REASON_UNSPECIFIED {
					last = msg
				}
			})
			if err != nil {
				return err
			}
			if output == "json" {
				if got == nil {
					got = []int{}
				}
				res := map[string]any{"ids": got, "text": text.String()}
				if explain {
					res["routes"], res["prompt_routes"] = ex.Routes, ex.PromptRoutes
				}
				if last != nil {
					res["finish_reason"] = strings.ToLower(strings.TrimPrefix(last.FinishReason.String(), "FINISH_REASON_"))
					res["usage"] = map[string]uint32{"prompt_tokens": last.Usage.GetPromptTokens(), "completion_tokens": last.Usage.GetCompletionTokens()}
				}
				return json.NewEncoder(out).Encode(res)
			}
			if explain {
				fmt.Fprintf(out, "%s", text.String())
			}
			fmt.Fprintln(out)
			if last != nil {
				fmt.Fprintf(cmd.ErrOrStderr(), "[%s; %d prompt + %d completion tokens]\n",
					strings.ToLower(strings.TrimPrefix(last.FinishReason.String(), "FINISH_REASON_")), last.Usage.GetPromptTokens(), last.Usage.GetCompletionTokens())
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&addr, "addr", "", "router gRPC addresses, comma separated: a request that fails UNAVAILABLE goes to the next, resumed token-exactly after the tokens already received (default: the router of the running moegrid up)")
	f.StringVar(&ids, "ids", "", "prompt as token ids, comma separated, used as given")
	f.Uint32Var(&maxTokens, "max-tokens", 64, "tokens to generate at most")
	f.Float32Var(&temperature, "temperature", 0, "sampling temperature; 0 is greedy")
	f.Float32Var(&topP, "top-p", 0, "nucleus sampling threshold; 0 disables")
	f.Uint32Var(&topK, "top-k", 0, "keep the k most likely tokens; 0 disables")
	f.Int64Var(&seed, "seed", 0, "sampling seed (default: random)")
	f.StringSliceVar(&stop, "stop", nil, "stop strings")
	f.BoolVar(&ignoreEOS, "ignore-eos", false, "keep generating past the end-of-sequence token")
	f.BoolVar(&explain, "explain", false, "show the experts and gate weights of every layer behind each token: a line per token, then the text (json: routes and prompt_routes)")
	f.StringVar(&output, "output", "text", "text (stream the text) or json ({\"ids\": [...], \"text\": ...})")
	f.DurationVar(&timeout, "timeout", 5*time.Minute, "request deadline")
	tlsFlags.register(f)
	f.StringVar(&apiKey, "api-key", "", "API key sent as a bearer token (also MOEGRID_API_KEY)")
	return cmd
}
