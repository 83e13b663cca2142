package placement

import (
	"testing"
)

// BenchmarkCompute measures a fresh plan and a stable re-plan after a node
// leaves, for Mixtral-8x7B on 24 nodes (whole experts with extra replicas)
// and on 24 small nodes (split layers, two replicas).
func BenchmarkCompute(b *testing.B) {
	for _, bc := range []struct {
		name     string
		capacity int64
		replicas int
	}{
		{"24x80GB", 80e9, 1},
		{"24x10GB-split-x2", 10e9, 2},
	} {
		nodes := equalNodes(24, bc.capacity)
		for i := range nodes {
			nodes[i].CapacityBytes += int64(i) * 1e8 // slightly unequal
		}
		load := []float64{9, 3, 5, 1, 4, 1, 2, 6}
		in := Input{Nodes: nodes, Model: mixtral, Load: load, Options: Options{MinReplicas: bc.replicas}}
		prev, err := Compute(in)
		if err != nil {
			b.Fatal(err)
		}
		b.Run(bc.name+"/fresh", func(b *testing.B) {
			for b.Loop() {
				if _, err := Compute(in); err != nil {
					b.Fatal(err)
				}
			}
		})
		leave := in
		leave.Nodes = nodes[1:]
		leave.Previous = &prev
		b.Run(bc.name+"/leave", func(b *testing.B) {
			for b.Loop() {
				if _, err := Compute(leave); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(bc.name+"/HoldersOf", func(b *testing.B) {
			for b.Loop() {
				_ = prev.HoldersOf(7, 31)
			}
		})
	}
}
