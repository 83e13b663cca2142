package router

import (
	"context"
	"errors"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// generationService implements moegridv1.GenerationServer.
type generationService struct {
	moegridv1.UnimplementedGenerationServer
	r *Router
}

var _ moegridv1.GenerationServer = (*generationService)(nil)

// Generate validates the request, runs it through the scheduler and streams
// its tokens.
func (g *generationService) Generate(req *moegridv1.GenerateRequest, stream moegridv1.Generation_GenerateServer) error {
	err := g.generate(req, stream)
	g.r.metrics.requests.WithLabelValues("grpc", status.Code(toStatus(err)).String()).Inc()
	return toStatus(err)
}

func (g *generationService) generate(req *moegridv1.GenerateRequest, stream moegridv1.Generation_GenerateServer) error {
	p := completionParams{
		maxTokens:   int(req.MaxTokens),
		temperature: float64(req.Temperature),
		topP:        float64(req.TopP),
		topK:        int(req.TopK),
		seed:        req.Seed,
		stop:        req.Stop,
		ignoreEOS:   req.IgnoreEos,
		// Past MaxLogprobs validate names the field; the conversion keeps
		// a huge uint32 from wrapping to a small int.
		logprobs:       int(min(req.Logprobs, MaxLogprobs+1)),
		promptLogprobs: req.PromptLogprobs,
		explain:        req.Explain,
	}
	switch pr := req.Prompt.(type) {
	case *moegridv1.GenerateRequest_Text:
		p.text = &pr.Text
	case *moegridv1.GenerateRequest_Ids:
		p.ids = make([]int, len(pr.Ids.GetIds()))
		for i, id := range pr.Ids.GetIds() {
			p.ids[i] = int(id)
		}
	}
	c, err := g.r.validate(p)
	if err != nil {
		return err
	}
	finish, u, err := g.r.complete(stream.Context(), c, func(ch chunk) error {
		msg := &moegridv1.GenerateResponse{Text: ch.text}
		for _, id := range ch.tokens {
			msg.TokenIds = append(msg.TokenIds, uint32(id))
		}
		for _, lp := range ch.logprobs {
			msg.Logprobs = append(msg.Logprobs, tokenLogprobPB(lp, true))
		}
		for i, lp := range ch.promptLogprobs {
			msg.PromptLogprobs = append(msg.PromptLogprobs, tokenLogprobPB(lp, i > 0))
		}
		for _, rs := range ch.routes {
			msg.Routes = append(msg.Routes, tokenRoutesPB(rs))
		}
		for _, rs := range ch.promptRoutes {
			msg.PromptRoutes = append(msg.PromptRoutes, tokenRoutesPB(rs))
		}
		return stream.Send(msg)
	})
	if err != nil {
		return err
	}
	fr := moegridv1.FinishReason_FINISH_REASON_STOP
	if finish == FinishLength {
		fr = moegridv1.FinishReason_FINISH_REASON_LENGTH
	}
	return stream.Send(&moegridv1.GenerateResponse{
		FinishReason: fr,
		Usage:        &moegridv1.Usage{PromptTokens: uint32(u.prompt), CompletionTokens: uint32(u.completion)},
	})
}

// tokenLogprobPB converts a log-probability; without has, the token's
// logprob is absent (the first prompt token).
func tokenLogprobPB(lp TokenLogprob, has bool) *moegridv1.TokenLogprob {
	pb := &moegridv1.TokenLogprob{TokenId: uint32(lp.Token)}
	if has {
		pb.Logprob = &lp.Logprob
	}
	for _, t := range lp.Top {
		pb.Top = append(pb.Top, &moegridv1.TopLogprob{TokenId: uint32(t.Token), Logprob: t.Logprob})
	}
	return pb
}

// toStatus is the router's one gRPC error boundary: domain errors become
// their codes, context errors pass through, nothing leaks as Unknown.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	code := codes.Internal
	switch {
	case errors.Is(err, ErrInvalid):
		code = codes.InvalidArgument
	case errors.Is(err, ErrNoLiveReplica), errors.Is(err, ErrStopped):
		code = codes.Unavailable
	case errors.Is(err, ErrQueueFull):
		code = codes.ResourceExhausted
	case errors.Is(err, context.Canceled):
		code = codes.Canceled
	case errors.Is(err, context.DeadlineExceeded):
		code = codes.DeadlineExceeded
	}
	return status.Error(code, err.Error())
}
