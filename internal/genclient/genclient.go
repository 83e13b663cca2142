// Package genclient streams a generation from a list of routers the way
// moegrid's own clients do: a router that fails the call UNAVAILABLE (down,
// stopping, unable to reach its experts) hands the request to the next,
// and a stream cut after some tokens is resumed there token-exactly
// (GenerateRequest.resume_tokens), so the caller sees every token once, as
// one uninterrupted stream would have sent it.
package genclient

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"slices"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// Dial connects to the router at addr.
type Dial func(addr string) (*grpc.ClientConn, error)

// Stream streams req from the routers in addrs, in order, calling onMsg for
// every response, and returns the last router's error. When a router fails
// UNAVAILABLE the request goes to the next one: from the start if nothing
// had arrived, else resumed after the tokens that had, with the prompt's
// log-probabilities and routes, which the first message already carried,
// dropped from the resumed stream's. A sampled request without a seed is
// given one, so that it can resume. Each failover is reported on warn.
func Stream(ctx context.Context, addrs []string, dial Dial, req *moegridv1.GenerateRequest, warn io.Writer, onMsg func(*moegridv1.GenerateResponse)) error {
	if req.Seed == nil && req.Temperature > 0 && len(addrs) > 1 {
		req = proto.Clone(req).(*moegridv1.GenerateRequest)
		seed := rand.Uint64()
		req.Seed = &seed
	}
	var got []uint32 // tokens received, from every router so far
	var err error
	for i, addr := range addrs {
		attempt := req
		resumed := len(got) > 0
		if resumed {
			attempt = proto.Clone(req).(*moegridv1.GenerateRequest)
			attempt.ResumeTokens = slices.Concat(req.ResumeTokens, got)
		}
		err = once(ctx, addr, dial, attempt, func(msg *moegridv1.GenerateResponse) {
			if resumed {
				msg.PromptLogprobs, msg.PromptRoutes = nil, nil
			}
			got = append(got, msg.TokenIds...)
			onMsg(msg)
		})
		if err == nil || status.Code(err) != codes.Unavailable || ctx.Err() != nil {
			break
		}
		if i+1 < len(addrs) {
			if len(got) > 0 {
				fmt.Fprintf(warn, "router %s: %v; resuming after %d tokens on %s\n", addr, status.Convert(err).Message(), len(got), addrs[i+1])
			} else {
				fmt.Fprintf(warn, "router %s: %v; trying %s\n", addr, status.Convert(err).Message(), addrs[i+1])
			}
		}
	}
	return err
}

// once streams req from the router at addr.
func once(ctx context.Context, addr string, dial Dial, req *moegridv1.GenerateRequest, onMsg func(*moegridv1.GenerateResponse)) error {
	conn, err := dial(addr)
	if err != nil {
		return fmt.Errorf("router %s: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := moegridv1.NewGenerationClient(conn).Generate(ctx, req)
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
		onMsg(msg)
	}
}
