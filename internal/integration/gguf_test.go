package integration

import (
	"path/filepath"
	"slices"
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/kernel"
)

// TestDistributedGGUF serves a Q8_0 GGUF file written by llama.cpp's tools
// (the model package's testdata) from a router and expert nodes given the
// file itself: the cluster computes exactly what the file computes in
// process, in the exact and in the int8 compute mode.
func TestDistributedGGUF(t *testing.T) {
	for _, c := range []kernel.Compute{kernel.ComputeExact, kernel.ComputeInt8} {
		t.Run(string(c), func(t *testing.T) {
			if err := kernel.SetCompute(c); err != nil {
				t.Skipf("no %s compute mode on this CPU: %v", c, err)
			}
			defer kernel.SetCompute(kernel.ComputeExact)
			testDistributedGGUF(t)
		})
	}
}

func testDistributedGGUF(t *testing.T) {
	path, err := filepath.Abs(filepath.Join("..", "..", "model", "testdata", "gguf", "small-q8_0.gguf"))
	if err != nil {
		t.Fatal(err)
	}
	tc := startCluster(t, clusterOptions{nodes: 2, minReplicas: 1, model: path})
	m, err := model.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	ex, err := model.LoadExperts(path, m.Config, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ex.Close()
	lm := local{m, ex}

	remote := tc.router.Experts()
	// The file's vocabulary is 512 tokens.
	for i, p := range [][]int{{1}, {1, 415, 298, 306}, {1, 330, 511, 17, 259, 400, 28, 403, 264, 3, 99}} {
		want, err := lm.Forward(t.Context(), lm.experts, []model.Input{{Cache: lm.NewCache(), Tokens: p, AllLogits: true}})
		if err != nil {
			t.Fatal(err)
		}
		got, err := lm.Forward(t.Context(), remote, []model.Input{{Cache: lm.NewCache(), Tokens: p, AllLogits: true}})
		if err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.Logits[0], want.Logits[0]) {
			t.Errorf("prompt %d: cluster logits differ from in-process logits", i)
		}
		tokens, err := tc.generate(t.Context(), p, 8)
		if err != nil {
			t.Fatal(err)
		}
		if want := lm.greedy(t, p, 8); !slices.Equal(tokens, want) {
			t.Errorf("prompt %d: cluster %v, in-process %v", i, tokens, want)
		}
	}
}
