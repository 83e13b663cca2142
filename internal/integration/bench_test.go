package integration

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/sample"
)

// benchPeers are the in-process experts and the cluster's, measured side
// by side: each iteration runs the same work on every peer in turn, so
// that the load other processes put on the machine falls on all of them
// alike and their ratio stays meaningful.
type benchPeers struct {
	names   []string
	experts []model.Experts
}

// startPeers returns the in-process experts and those of a cluster of 8
// expert nodes on loopback, in this process; with processes, also those of
// a cluster whose nodes are child processes.
func startPeers(b *testing.B, m *model.Model, processes bool) benchPeers {
	local, err := model.LoadExperts(tinyDir, m.Config, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { local.Close() })
	tc := startCluster(b, clusterOptions{nodes: 8, minReplicas: 1})
	p := benchPeers{names: []string{"in-process", "cluster"}, experts: []model.Experts{local, tc.router.Experts()}}
	if processes {
		procs := startCluster(b, clusterOptions{nodes: 8, minReplicas: 1, childNodes: true})
		p.names = append(p.names, "cluster-processes")
		p.experts = append(p.experts, procs.router.Experts())
	}
	return p
}

// run times work on each peer once per iteration, interleaved, and reports
// each peer's mean in unit, and each cluster's speed relative to
// in-process (in-process time / its time: 1 is parity, above 1 faster).
func (p benchPeers) run(b *testing.B, unit string, scale float64, work func(ctx context.Context, peer int) error) []time.Duration {
	total := make([]time.Duration, len(p.experts))
	for b.Loop() {
		for i := range p.experts {
			start := time.Now()
			if err := work(b.Context(), i); err != nil {
				b.Fatalf("%s: %v", p.names[i], err)
			}
			total[i] += time.Since(start)
		}
	}
	for i, name := range p.names {
		b.ReportMetric(float64(total[i])/float64(b.N)/scale, name+"-"+unit)
		if i > 0 {
			b.ReportMetric(float64(total[0])/float64(total[i]), name+"-speed")
		}
	}
	return total
}

// timedExperts adds the time its experts take to total, so that a step's
// time splits into the hop and the rest.
type timedExperts struct {
	inner model.Experts
	total *time.Duration
}

func (t timedExperts) Forward(ctx context.Context, l int, b []model.ExpertBatch) error {
	s := time.Now()
	err := t.inner.Forward(ctx, l, b)
	*t.total += time.Since(s)
	return err
}

// BenchmarkDecode measures greedy decoding of the tiny model in one process
// and through a cluster of 8 in-process expert nodes on loopback,
// interleaved step by step, so their ratio is what the network path costs.
// It reports ms/step, the part of it spent in the experts (the hops, for
// the cluster), and the cluster's speed relative to in-process, for one
// sequence and for 8 and 16 sequences batched together.
func BenchmarkDecode(b *testing.B) {
	m, err := model.Load(tinyDir)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	peers := startPeers(b, m, false)
	for _, batch := range []int{1, 8, 16} {
		b.Run(fmt.Sprintf("batch=%d", batch), func(b *testing.B) {
			inputs := make([][]model.Input, len(peers.experts))
			for p := range inputs {
				inputs[p] = make([]model.Input, batch)
				for i := range inputs[p] {
					inputs[p][i] = model.Input{Cache: m.NewCache(), Tokens: []int{1, 415, 5565, 302 + i}}
				}
				if _, err := m.Forward(b.Context(), peers.experts[p], inputs[p]); err != nil {
					b.Fatal(err)
				}
			}
			steps := make([]int, len(peers.experts))
			hop := make([]time.Duration, len(peers.experts))
			defer func() {
				for p := range hop {
					b.ReportMetric(float64(hop[p])/float64(b.N)/1e6, peers.names[p]+"-experts-ms/step")
				}
			}()
			peers.run(b, "ms/step", 1e6, func(ctx context.Context, p int) error {
				in := inputs[p]
				for i := range in {
					in[i].Tokens = []int{100 + steps[p]%50}
				}
				res, err := m.Forward(ctx, timedExperts{peers.experts[p], &hop[p]}, in)
				if err != nil {
					return err
				}
				_ = sample.Greedy(res.Logits[0])
				steps[p]++
				if in[0].Cache.Len() > 512 {
					for _, x := range in {
						x.Cache.Truncate(4)
					}
				}
				return nil
			})
		})
	}
}

// BenchmarkHop measures one layer's expert hop at decode size: every row
// picks two experts, which 8 nodes hold one each, so a hop is two Forward
// calls to two nodes in parallel. The in-process experts and clusters with
// nodes in this process and in child processes run interleaved; a
// cluster's us/hop minus in-process's is what the network path adds to a
// hop, the router-side cost the dispatcher is judged by.
func BenchmarkHop(b *testing.B) {
	m, err := model.Load(tinyDir)
	if err != nil {
		b.Fatal(err)
	}
	defer m.Close()
	peers := startPeers(b, m, true)
	H := m.Config.HiddenSize
	for _, rows := range []int{1, 16} {
		b.Run(fmt.Sprintf("rows=%d", rows), func(b *testing.B) {
			bs := []model.ExpertBatch{{Expert: 2, Rows: rows}, {Expert: 5, Rows: rows}}
			for i := range bs {
				bs[i].In, bs[i].Out = make([]float32, rows*H), make([]float32, rows*H)
				for j := range bs[i].In {
					bs[i].In[j] = float32(j%13)/13 - 0.5
				}
			}
			total := peers.run(b, "us/hop", 1e3, func(ctx context.Context, p int) error {
				return peers.experts[p].Forward(ctx, 0, bs)
			})
			for i := 1; i < len(total); i++ {
				b.ReportMetric(float64(total[i]-total[0])/float64(b.N)/1e3, peers.names[i]+"-us/hop-overhead")
			}
		})
	}
}

// BenchmarkTLSCost measures what mutual TLS costs the serving path: two
// clusters of a router and 8 expert nodes on loopback, one TLS (client →
// router and router → nodes) and one insecure, each iteration sending the
// same 16 concurrent streams to both, in alternating order, so that the
// machine's other load falls on both alike. It reports each cluster's
// tokens per second and TLS's throughput relative to insecure (1 is
// parity).
func BenchmarkTLSCost(b *testing.B) {
	const streams, tokens = 16, 32
	clusters := []*testCluster{
		startCluster(b, clusterOptions{nodes: 8, minReplicas: 1}),
		startCluster(b, clusterOptions{nodes: 8, minReplicas: 1, insecure: true}),
	}
	names := []string{"tls", "insecure"}
	round := func(ctx context.Context, tc *testCluster) error {
		errs := make(chan error, streams)
		for i := range streams {
			go func() {
				_, err := tc.generate(ctx, []int{1, 415, 5565, 302 + i}, tokens)
				errs <- err
			}()
		}
		var first error
		for range streams {
			if err := <-errs; err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	for _, tc := range clusters {
		if err := round(b.Context(), tc); err != nil { // warm connections and caches
			b.Fatal(err)
		}
	}
	total := make([]time.Duration, len(clusters))
	n := 0
	for b.Loop() {
		for k := range clusters {
			i := (k + n) % len(clusters)
			start := time.Now()
			if err := round(b.Context(), clusters[i]); err != nil {
				b.Fatalf("%s: %v", names[i], err)
			}
			total[i] += time.Since(start)
		}
		n++
	}
	for i, name := range names {
		b.ReportMetric(float64(streams*tokens*n)/total[i].Seconds(), name+"-tok/s")
	}
	b.ReportMetric(float64(total[1])/float64(total[0]), "tls-vs-insecure")
}
