package main

import (
	"fmt"
	"io"
	"strings"

	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// explanation gathers the routes of `generate --explain`, in the JSON of
// --output json.
type explanation struct {
	Routes       []tokenRoutes `json:"routes"`
	PromptRoutes []tokenRoutes `json:"prompt_routes"`
}

// tokenRoutes is one position's gate choices: layers[l] for layer l.
type tokenRoutes struct {
	// Token and Text are set for generated tokens: the token and the text
	// its message completed (empty while a character or a possible stop
	// string is incomplete).
	Token  *uint32      `json:"token,omitempty"`
	Text   *string      `json:"text,omitempty"`
	Layers []layerRoute `json:"layers"`
}

// layerRoute is the router's top-k experts in the gate's order, highest
// weight first, with their renormalised weights.
type layerRoute struct {
	Experts []uint32  `json:"experts"`
	Weights []float32 `json:"weights"`
}

func layersOf(pb *moegridv1.TokenRoutes) []layerRoute {
	out := make([]layerRoute, len(pb.GetLayers()))
	for l, lr := range pb.GetLayers() {
		out[l] = layerRoute{Experts: lr.GetExperts(), Weights: lr.GetWeights()}
	}
	return out
}

// add takes a response's routes. A router sends one token a message; the
// text goes with the message's last token.
func (e *explanation) add(msg *moegridv1.GenerateResponse) {
	if e.PromptRoutes == nil {
		e.PromptRoutes = []tokenRoutes{}
	}
	if e.Routes == nil {
		e.Routes = []tokenRoutes{}
	}
	for _, pr := range msg.PromptRoutes {
		e.PromptRoutes = append(e.PromptRoutes, tokenRoutes{Layers: layersOf(pr)})
	}
	for i, id := range msg.TokenIds {
		tr := tokenRoutes{Token: &id}
		if i < len(msg.Routes) {
			tr.Layers = layersOf(msg.Routes[i])
		}
		if i == len(msg.TokenIds)-1 {
			tr.Text = &msg.Text
		}
		e.Routes = append(e.Routes, tr)
	}
}

// printLast writes the last n tokens' routes, a line each:
//
//	#0 415 " world"  L0: e3 0.62, e5 0.38  L1: e1 0.55, e0 0.45
func (e *explanation) printLast(w io.Writer, n int) {
	for i := len(e.Routes) - n; i < len(e.Routes); i++ {
		tr := e.Routes[i]
		var b strings.Builder
		text := ""
		if tr.Text != nil {
			text = *tr.Text
		}
		fmt.Fprintf(&b, "#%d %d %q", i, *tr.Token, text)
		for l, lr := range tr.Layers {
			fmt.Fprintf(&b, "  L%d:", l)
			for j, ex := range lr.Experts {
				if j > 0 {
					b.WriteByte(',')
				}
				fmt.Fprintf(&b, " e%d", ex)
				if j < len(lr.Weights) {
					fmt.Fprintf(&b, " %.2f", lr.Weights[j])
				}
			}
		}
		fmt.Fprintln(w, b.String())
	}
}
