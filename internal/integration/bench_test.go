package integration

import (
	"fmt"
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/sample"
)

// BenchmarkDecode measures greedy decoding of the tiny model in one process
// and through a cluster of 8 in-process expert nodes on loopback, side by
// side in one run, so their ratio is what the network path costs. It reports
// ms/token for one sequence and for 8 and 16 sequences batched together.
func BenchmarkDecode(b *testing.B) {
	tc := startCluster(b, clusterOptions{nodes: 8, minReplicas: 1})
	m, err := model.Load(tinyDir)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	local, err := model.LoadExperts(tinyDir, m.Config, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer local.Close()
	for _, c := range []struct {
		name    string
		experts model.Experts
	}{{"in-process", local}, {"cluster", tc.router.Experts()}} {
		for _, batch := range []int{1, 8, 16} {
			b.Run(fmt.Sprintf("%s/batch=%d", c.name, batch), func(b *testing.B) {
				caches := make([]*model.Cache, batch)
				inputs := make([]model.Input, batch)
				for i := range caches {
					caches[i] = m.NewCache()
					inputs[i] = model.Input{Cache: caches[i], Tokens: []int{1, 415, 5565, 302 + i}}
				}
				if _, err := m.Forward(b.Context(), c.experts, inputs); err != nil {
					b.Fatal(err)
				}
				b.ResetTimer()
				tokens := 0
				for b.Loop() {
					for i := range inputs {
						inputs[i].Tokens = []int{100 + tokens%50}
					}
					res, err := m.Forward(b.Context(), c.experts, inputs)
					if err != nil {
						b.Fatal(err)
					}
					_ = sample.Greedy(res.Logits[0])
					tokens++
					if caches[0].Len() > 512 {
						for _, cc := range caches {
							cc.Truncate(4)
						}
					}
				}
				b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(tokens), "ms/step")
				b.ReportMetric(float64(tokens*batch)/b.Elapsed().Seconds(), "tokens/s")
			})
		}
	}
}

// BenchmarkHop measures one layer's expert hop at decode size: every row
// picks two experts, which 8 nodes hold one each, so a hop is two Forward
// calls to two nodes in parallel. The cluster and the in-process experts
// run side by side; us/hop-overhead is what the network path adds to a
// hop, the router-side cost the dispatcher is judged by.
func BenchmarkHop(b *testing.B) {
	tc := startCluster(b, clusterOptions{nodes: 8, minReplicas: 1})
	procs := startCluster(b, clusterOptions{nodes: 8, minReplicas: 1, childNodes: true})
	m, err := model.Load(tinyDir)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	local, err := model.LoadExperts(tinyDir, m.Config, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer local.Close()
	H := m.Config.HiddenSize
	batches := func(rows int) []model.ExpertBatch {
		bs := []model.ExpertBatch{{Expert: 2, Rows: rows}, {Expert: 5, Rows: rows}}
		for i := range bs {
			bs[i].In, bs[i].Out = make([]float32, rows*H), make([]float32, rows*H)
			for j := range bs[i].In {
				bs[i].In[j] = float32(j%13)/13 - 0.5
			}
		}
		return bs
	}
	for _, rows := range []int{1, 16} {
		perHop := map[string]float64{}
		for _, c := range []struct {
			name    string
			experts model.Experts
		}{{"in-process", local}, {"cluster", tc.router.Experts()}, {"cluster-processes", procs.router.Experts()}} {
			b.Run(fmt.Sprintf("%s/rows=%d", c.name, rows), func(b *testing.B) {
				bs := batches(rows)
				for b.Loop() {
					if err := c.experts.Forward(b.Context(), 0, bs); err != nil {
						b.Fatal(err)
					}
				}
				perHop[c.name] = float64(b.Elapsed().Microseconds()) / float64(b.N)
				b.ReportMetric(perHop[c.name], "us/hop")
				if c.name != "in-process" {
					b.ReportMetric(perHop[c.name]-perHop["in-process"], "us/hop-overhead")
				}
			})
		}
	}
}
