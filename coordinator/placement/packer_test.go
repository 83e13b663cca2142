package placement

import (
	"math/rand/v2"
	"testing"
)

// checkBookkeeping recomputes the packer's derived state from holders.
func checkBookkeeping(t *testing.T, p *packer) {
	t.Helper()
	used := make([]int64, len(p.ids))
	experts := make([][]int32, len(p.ids))
	for n := range experts {
		experts[n] = make([]int32, p.model.Experts)
	}
	for s, hs := range p.holders {
		seen := map[int]bool{}
		for _, n := range hs {
			if seen[n] {
				t.Fatalf("shard %d twice on node %d", s, n)
			}
			seen[n] = true
			used[n] += p.shards[s].bytes
			experts[n][p.shards[s].shard.Expert]++
		}
	}
	holding := make([]int, p.model.Experts)
	for n := range p.ids {
		if used[n] != p.used[n] {
			t.Fatalf("node %d: used %d, want %d", n, p.used[n], used[n])
		}
		if len(p.onNode[n]) != func() int {
			c := 0
			for _, e := range experts[n] {
				c += int(e)
			}
			return c
		}() {
			t.Fatalf("node %d: onNode has %d shards", n, len(p.onNode[n]))
		}
		for e, c := range experts[n] {
			if c != p.experts[n][e] {
				t.Fatalf("node %d expert %d: count %d, want %d", n, e, p.experts[n][e], c)
			}
			if set := p.expertSet[n][e/64]>>(e%64)&1 == 1; set != (c > 0) {
				t.Fatalf("node %d expert %d: bit %v, count %d", n, e, set, c)
			}
			if c > 0 {
				holding[e]++
			}
		}
	}
	for n := range p.ids {
		co := 0
		for e, c := range experts[n] {
			if c > 0 {
				co += holding[e] - 1
			}
		}
		if co != p.coHeld[n] {
			t.Fatalf("node %d: coHeld %d, want %d", n, p.coHeld[n], co)
		}
		for m := range p.ids {
			want := 0
			for e := range experts[n] {
				if experts[n][e] > 0 && experts[m][e] > 0 {
					want++
				}
			}
			if got := p.common(n, m); got != want {
				t.Fatalf("common(%d, %d) = %d, want %d", n, m, got, want)
			}
		}
	}
}

func TestPackerBookkeeping(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	m := Model{Experts: 70, Layers: 6, BytesPerExpertLayer: 1}
	n, err := normalize(Input{Nodes: equalNodes(9, 1000), Model: m})
	if err != nil {
		t.Fatal(err)
	}
	p := newPacker(&n, 3)
	for range 5000 {
		s, node := rng.IntN(len(p.shards)), rng.IntN(len(p.ids))
		if p.holds(s, node) {
			p.remove(s, node)
		} else {
			p.add(s, node)
		}
	}
	checkBookkeeping(t, p)

	// And after complete runs, fresh and stable.
	for _, opts := range []Options{{MinReplicas: 2}, {MinReplicas: 1}} {
		in := Input{Nodes: nodesWith(300, 500, 200, 800, 100, 400, 250), Model: m, Options: opts}
		n, err := normalize(in)
		if err != nil {
			t.Fatal(err)
		}
		p := newPacker(&n, 2)
		if !p.run(false, false) {
			t.Fatal("run failed")
		}
		checkBookkeeping(t, p)
		prev := p.result()
		in.Nodes = in.Nodes[1:]
		in.Previous = &prev
		n, err = normalize(in)
		if err != nil {
			t.Fatal(err)
		}
		q := newPacker(&n, 2)
		if !q.run(q.keep(&prev), false) {
			t.Fatal("stable run failed")
		}
		checkBookkeeping(t, q)
	}
}
