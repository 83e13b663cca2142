package router

import (
	"fmt"

	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// Routing made visible: a request that asks to explain (gRPC explain, HTTP
// moegrid_explain) gets with every generated token the route of every
// layer at the position the token was sampled from. The experts are in the
// gate's order (highest weight first, the lower index first on ties) and
// the weights are the renormalised ones the experts' outputs are summed
// with, as float32: the same values the forward pass used.

// DefaultMaxExplainTokens is the default Config.MaxExplainTokens. A
// position's routes are a Route per layer, and a sequence holds its
// prompt's until its first token (with HTTP without stream, every token's
// until the end): tens of megabytes for a 32k-token Mixtral-8x7B prompt,
// a few at 4096 positions.
const DefaultMaxExplainTokens = 4096

// checkExplain refuses a sequence that would explain more than limit
// positions (0: DefaultMaxExplainTokens): its prompt tokens, whose routes
// are held until the first token, plus max_tokens. It refuses rather than
// explaining only the last positions, because a client that asks to
// explain reads every route it gets as the whole story; an error naming
// the limit tells it to shorten the prompt or max_tokens, or to ask
// without explain.
func checkExplain(promptTokens, maxTokens, limit int) error {
	if limit == 0 {
		limit = DefaultMaxExplainTokens
	}
	if n := promptTokens + maxTokens; n > limit {
		return fmt.Errorf("%w: explain: a %d-token prompt and max_tokens %d are %d positions to explain, at most %d (max explain tokens)",
			ErrInvalid, promptTokens, maxTokens, n, limit)
	}
	return nil
}

// tokenRoutesJSON is one generated token's routes in the HTTP API's
// moegrid_routes extension. OpenAI clients ignore the field.
type tokenRoutesJSON struct {
	Token  int              `json:"token"`
	Layers []layerRouteJSON `json:"layers"`
}

type layerRouteJSON struct {
	Experts []int     `json:"experts"`
	Weights []float32 `json:"weights"`
}

func tokenRoutesOf(token int, routes []model.Route) tokenRoutesJSON {
	out := tokenRoutesJSON{Token: token, Layers: make([]layerRouteJSON, len(routes))}
	for l, rt := range routes {
		out.Layers[l] = layerRouteJSON{Experts: rt.Experts, Weights: rt.Weights}
	}
	return out
}

// tokenRoutesPB converts one position's routes, per layer.
func tokenRoutesPB(routes []model.Route) *moegridv1.TokenRoutes {
	pb := &moegridv1.TokenRoutes{Layers: make([]*moegridv1.LayerRoute, len(routes))}
	for l, rt := range routes {
		lr := &moegridv1.LayerRoute{Experts: make([]uint32, len(rt.Experts)), Weights: rt.Weights}
		for i, e := range rt.Experts {
			lr.Experts[i] = uint32(e)
		}
		pb.Layers[l] = lr
	}
	return pb
}
