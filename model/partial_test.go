package model_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/synth"
)

// fourLayers is the tiny preset with four layers, so that a step can stop
// a prompt between layers in more than one place.
func fourLayers(t *testing.T) local {
	t.Helper()
	dir := t.TempDir()
	p := synth.Preset{Name: "tiny-4", Hidden: 128, Layers: 4, Heads: 4, KVHeads: 2, Intermediate: 256}
	if err := synth.Write(dir, synth.Options{Preset: p, Seed: 2, DType: safetensors.F32, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	return loadLocal(t, dir)
}

// TestLayerSplitPrefill checks that a prompt chunk run over several steps,
// a few layers at a time, beside a sequence decoding, gives the bits of the
// chunk run in one step: logits, routes, caches, and the steps after.
func TestLayerSplitPrefill(t *testing.T) {
	lm := fourLayers(t)
	prompt, chunk := randomTokens(21, 9), randomTokens(22, 4)
	for _, split := range [][]int{{1, 1, 1, 1}, {2, 2}, {1, 3}, {3, 5}} {
		t.Run(fmt.Sprint(split), func(t *testing.T) {
			want, got := lm.NewCache(), lm.NewCache()
			mustForward(t, lm, lm.experts, model.Input{Cache: want, Tokens: prompt})
			mustForward(t, lm, lm.experts, model.Input{Cache: got, Tokens: prompt})
			once := mustForward(t, lm, lm.experts, model.Input{Cache: want, Tokens: chunk, AllLogits: true})

			decoder, alone := lm.NewCache(), lm.NewCache()
			mustForward(t, lm, lm.experts, model.Input{Cache: decoder, Tokens: randomTokens(23, 5)})
			mustForward(t, lm, lm.experts, model.Input{Cache: alone, Tokens: randomTokens(23, 5)})

			routes := make([][]model.Route, lm.Config.NumHiddenLayers)
			var partial *model.Partial
			var logits []float32
			for s, layers := range split {
				in := model.Input{Cache: got, Tokens: chunk, AllLogits: true, Layers: layers}
				if partial != nil {
					in = model.Input{Cache: got, Resume: partial, Layers: layers}
				}
				dec := model.Input{Cache: decoder, Tokens: []int{100 + s}}
				res := mustForward(t, lm, lm.experts, dec, in)
				ref := mustForward(t, lm, lm.experts, model.Input{Cache: alone, Tokens: []int{100 + s}})
				requireSameBits(t, fmt.Sprintf("step %d decoder logits", s), ref.Logits[0], res.Logits[0])
				for l := range routes {
					if rt := res.Routes[l][1]; rt.Experts != nil {
						routes[l] = append(routes[l], res.Routes[l][1:]...)
					}
				}
				partial, logits = res.Partials[1], res.Logits[1]
				if last := s == len(split)-1; last != (partial == nil) {
					t.Fatalf("step %d: partial %v, logits %d", s, partial, len(logits))
				}
				if partial != nil && got.Len() != len(prompt) {
					t.Fatalf("step %d: cache length %d while the chunk is partial, want %d", s, got.Len(), len(prompt))
				}
			}
			requireSameBits(t, "chunk logits", once.Logits[0], logits)
			if d := cmp.Diff(once.Routes, routes); d != "" {
				t.Errorf("routes (-one step +split):\n%s", d)
			}
			if got.Len() != want.Len() {
				t.Fatalf("cache length %d, want %d", got.Len(), want.Len())
			}
			a := mustForward(t, lm, lm.experts, model.Input{Cache: want, Tokens: []int{7}})
			b := mustForward(t, lm, lm.experts, model.Input{Cache: got, Tokens: []int{7}})
			requireSameBits(t, "next step", a.Logits[0], b.Logits[0])
		})
	}
}

// TestPartialErrors checks that a cache with a pending partial takes only
// its resumption, that a failed resumption leaves it resumable, and that
// Truncate drops it.
func TestPartialErrors(t *testing.T) {
	lm := fourLayers(t)
	c, control := lm.NewCache(), lm.NewCache()
	ids := randomTokens(24, 6)
	res := mustForward(t, lm, lm.experts, model.Input{Cache: c, Tokens: ids, Layers: 1})
	p := res.Partials[0]
	if p == nil || p.Layer() != 1 || p.Tokens() != len(ids) {
		t.Fatalf("partial %+v, want 6 tokens from layer 1", p)
	}
	other := lm.NewCache()
	otherPartial := mustForward(t, lm, lm.experts, model.Input{Cache: other, Tokens: ids, Layers: 2}).Partials[0]
	for _, tc := range []struct {
		name string
		in   model.Input
		want string
	}{
		{"tokens onto a pending cache", model.Input{Cache: c, Tokens: []int{5}}, "was not resumed"},
		{"resume with tokens", model.Input{Cache: c, Resume: p, Tokens: []int{5}}, "brings tokens"},
		{"resume with AllLogits", model.Input{Cache: c, Resume: p, AllLogits: true}, "brings tokens or AllLogits"},
		{"another cache's partial", model.Input{Cache: c, Resume: otherPartial}, "did not leave"},
		{"negative layers", model.Input{Cache: c, Resume: p, Layers: -1}, "-1 layers"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := lm.Forward(t.Context(), lm.experts, []model.Input{tc.in})
			if !errors.Is(err, model.ErrInput) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Forward error = %v, want ErrInput containing %q", err, tc.want)
			}
		})
	}

	for _, layer := range []int{1, 3} {
		if _, err := lm.Forward(t.Context(), failingExperts{lm.experts, layer}, []model.Input{{Cache: c, Resume: p}}); !errors.Is(err, errExpertsDown) {
			t.Fatalf("failing at layer %d: error %v, want errExpertsDown", layer, err)
		}
	}
	res = mustForward(t, lm, lm.experts, model.Input{Cache: c, Resume: p, Layers: 2})
	if res.Partials[0] == nil || res.Partials[0].Layer() != 3 {
		t.Fatalf("after failures: partial %+v, want one from layer 3", res.Partials[0])
	}
	if _, err := lm.Forward(t.Context(), lm.experts, []model.Input{{Cache: c, Resume: p}}); !errors.Is(err, model.ErrInput) {
		t.Errorf("resuming a partial already resumed: error %v, want ErrInput", err)
	}
	got := mustForward(t, lm, lm.experts, model.Input{Cache: c, Resume: res.Partials[0]})
	want := mustForward(t, lm, lm.experts, model.Input{Cache: control, Tokens: ids})
	requireSameBits(t, "logits after failed resumptions", want.Logits[0], got.Logits[0])

	d := lm.NewCache()
	mustForward(t, lm, lm.experts, model.Input{Cache: d, Tokens: ids[:3]})
	mustForward(t, lm, lm.experts, model.Input{Cache: d, Tokens: ids[3:], Layers: 3})
	d.Truncate(3)
	got = mustForward(t, lm, lm.experts, model.Input{Cache: d, Tokens: ids[3:]})
	requireSameBits(t, "logits after truncating a partial", want.Logits[0], got.Logits[0])
}
