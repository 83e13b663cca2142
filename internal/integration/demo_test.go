package integration

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/demo"
	"github.com/moegrid/moegrid/model/tokenizer"
)

// TestDistributedDemo serves the trained demo model (BF16 weights) from a
// router and 8 expert nodes: with F32 activations on the wire the cluster's
// logits equal the in-process model's bit for bit, and greedy decoding picks
// the same tokens.
func TestDistributedDemo(t *testing.T) {
	dir := t.TempDir()
	if err := demo.Write(dir); err != nil {
		t.Fatal(err)
	}
	tc := startCluster(t, clusterOptions{nodes: 8, minReplicas: 1, model: dir})
	m, err := model.Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ex, err := model.LoadExperts(dir, m.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	lm := local{m, ex}
	tok, err := tokenizer.Load(filepath.Join(dir, "tokenizer.json"))
	if err != nil {
		t.Fatal(err)
	}

	remote := tc.router.Experts()
	for _, text := range []string{"And", "And God said", "In the beginning God created the heaven and the earth. And the earth was without form"} {
		p := tok.Encode(text, true)
		want, err := lm.Forward(t.Context(), lm.experts, []model.Input{{Cache: lm.NewCache(), Tokens: p, AllLogits: true}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := lm.Forward(t.Context(), remote, []model.Input{{Cache: lm.NewCache(), Tokens: p, AllLogits: true}})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Logits[0], want.Logits[0]) {
			t.Errorf("%q: cluster logits differ from in-process logits", text)
		}
		tokens, err := tc.generate(t.Context(), p, 12)
		if err != nil {
			t.Fatal(err)
		}
		if want := lm.greedy(t, p, 12); !slices.Equal(tokens, want) {
			t.Errorf("%q: cluster %v, in-process %v", text, tokens, want)
		}
	}
}
