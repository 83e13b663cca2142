package router

import (
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/internal/grpcerr"
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
	return err
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
	for _, id := range req.ResumeTokens {
		p.resume = append(p.resume, int(id))
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

// errorCodes maps the router's domain errors to gRPC codes.
var errorCodes = grpcerr.Table{
	{Err: ErrInvalid, Code: codes.InvalidArgument},
	{Err: ErrNoLiveReplica, Code: codes.Unavailable},
	{Err: ErrStopped, Code: codes.Unavailable},
	{Err: ErrQueueFull, Code: codes.ResourceExhausted},
}

// toStatus is the status a client sees for err: the gRPC API's boundary
// (which also logs unmapped errors) makes the same of it, and the HTTP API
// and the request metrics use it directly.
func toStatus(err error) error {
	return grpcerr.New(errorCodes, nil).Status("", err)
}
