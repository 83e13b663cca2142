package router

import (
	"github.com/moegrid/moegrid/model"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// Routing made visible: a request that asks to explain (gRPC explain, HTTP
// moegrid_explain) gets with every generated token the route of every
// layer at the position the token was sampled from. The experts are in the
// gate's order (highest weight first, the lower index first on ties) and
// the weights are the renormalised ones the experts' outputs are summed
// with, as float32: the same values the forward pass used.

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
