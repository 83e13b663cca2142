package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/sample"
)

// TestGenerateExplainMatchesInProcess runs `moegrid generate --explain`
// against a real cluster (etcd, coordinator, two expert nodes, router)
// with F32 activations on the wire: the experts of every layer behind
// every generated token, and behind every prompt token, are those the
// in-process model chooses for the same prompt and tokens, in the same
// order, with bit-equal weights.
func TestGenerateExplainMatchesInProcess(t *testing.T) {
	dir := writeTiny(t)
	c := startEvalCluster(t, dir, 2, nil)
	r := c.router
	m, err := model.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	experts, err := model.LoadExperts(dir, m.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { experts.Close() })

	prompt := []int{1, 415, 5565, 302, 4843}
	const maxTokens = 6
	gen, err := m.Generate(t.Context(), experts, prompt, maxTokens, true, sample.Greedy)
	if err != nil {
		t.Fatal(err)
	}
	// One step over the prompt and every generated token but the last,
	// which is never fed back: row p holds the routes of position p, and
	// generated token i was sampled after row len(prompt)-1+i.
	res, err := m.Forward(t.Context(), experts, []model.Input{{Cache: m.NewCache(), Tokens: append(slices.Clone(prompt), gen[:maxTokens-1]...)}})
	if err != nil {
		t.Fatal(err)
	}
	want := func(row int) []model.Route {
		out := make([]model.Route, len(res.Routes))
		for l := range res.Routes {
			out[l] = res.Routes[l][row]
		}
		return out
	}
	same := func(got tokenRoutes, want []model.Route) bool {
		if len(got.Layers) != len(want) {
			return false
		}
		for l, lr := range got.Layers {
			experts := make([]int, len(lr.Experts))
			for i, e := range lr.Experts {
				experts[i] = int(e)
			}
			if !slices.Equal(experts, want[l].Experts) || !slices.Equal(lr.Weights, want[l].Weights) {
				return false
			}
		}
		return true
	}
	ids := strings.Trim(strings.Join(strings.Fields(fmt.Sprint(prompt)), ","), "[]")
	args := append([]string{"generate", "--addr", r.GRPCAddr(), "--ids", ids, "--max-tokens", fmt.Sprint(maxTokens), "--ignore-eos", "--explain"}, c.tlsArgs...)

	t.Run("json", func(t *testing.T) {
		out, err := runCmd(t, append(args, "--output", "json")...)
		if err != nil {
			t.Fatal(err, out)
		}
		var got struct {
			IDs []int `json:"ids"`
			explanation
		}
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatal(err, out)
		}
		if !slices.Equal(got.IDs, gen) || len(got.Routes) != len(gen) || len(got.PromptRoutes) != len(prompt) {
			t.Fatalf("ids %v with %d routes and %d prompt routes; want %v, one route each, %d prompt routes", got.IDs, len(got.Routes), len(got.PromptRoutes), gen, len(prompt))
		}
		for i, tr := range got.Routes {
			if tr.Token == nil || int(*tr.Token) != gen[i] || !same(tr, want(len(prompt)-1+i)) {
				t.Errorf("routes[%d] %+v; in process token %d, %v", i, tr, gen[i], want(len(prompt)-1+i))
			}
		}
		for p, tr := range got.PromptRoutes {
			if !same(tr, want(p)) {
				t.Errorf("prompt_routes[%d] %+v; in process %v", p, tr, want(p))
			}
		}
	})

	t.Run("text", func(t *testing.T) {
		out, err := runCmd(t, args...)
		if err != nil {
			t.Fatal(err, out)
		}
		lines := strings.Split(out, "\n")
		if len(lines) < len(gen) {
			t.Fatalf("%d lines for %d tokens:\n%s", len(lines), len(gen), out)
		}
		for i, id := range gen {
			if !strings.HasPrefix(lines[i], fmt.Sprintf("#%d %d ", i, id)) {
				t.Errorf("line %d %q does not start with the token's index and id %d", i, lines[i], id)
			}
			for l, rt := range want(len(prompt) - 1 + i) {
				var b strings.Builder
				fmt.Fprintf(&b, "L%d:", l)
				for j, e := range rt.Experts {
					if j > 0 {
						b.WriteByte(',')
					}
					fmt.Fprintf(&b, " e%d %.2f", e, rt.Weights[j])
				}
				if !strings.Contains(lines[i], b.String()) {
					t.Errorf("line %d %q lacks %q", i, lines[i], b.String())
				}
			}
		}
	})
}
