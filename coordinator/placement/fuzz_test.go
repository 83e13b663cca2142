package placement

import (
	"encoding/json"
	"errors"
	"fmt"
	"testing"
)

// FuzzValidate feeds arbitrary JSON to Validate: it must not panic, and a
// placement it accepts must hold every expert layer somewhere.
func FuzzValidate(f *testing.F) {
	b, _ := json.Marshal(sample)
	f.Add(b)
	f.Add([]byte(`{"model":{"experts":1,"layers":1,"bytes_per_expert_layer":1},"assignments":[{"shard":{"expert":0,"first_layer":0,"end_layer":1},"nodes":["a"]}]}`))
	f.Add([]byte(`{"model":{"experts":1,"layers":2,"bytes_per_expert_layer":1},"assignments":[{"shard":{"expert":0,"first_layer":0,"end_layer":2},"nodes":["a","a"]}]}`))
	f.Add([]byte(`{"assignments":[{"shard":{"expert":-9223372036854775808,"first_layer":9223372036854775807}}]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var p Placement
		if json.Unmarshal(data, &p) != nil {
			return
		}
		if err := p.Validate(p.Model); err != nil {
			if !errors.Is(err, ErrInvalidPlacement) {
				t.Fatalf("error %v does not wrap ErrInvalidPlacement", err)
			}
			return
		}
		for e := range p.Model.Experts {
			for l := range p.Model.Layers {
				if len(p.HoldersOf(e, l)) == 0 {
					t.Fatalf("valid placement without a holder for expert %d layer %d", e, l)
				}
			}
		}
	})
}

// FuzzCompute drives Compute with small arbitrary clusters: it must not
// panic, must fail only as the oracle says, and must otherwise keep every
// invariant, also when its result is fed back with one node fewer.
func FuzzCompute(f *testing.F) {
	f.Add(uint8(8), uint8(8), uint8(32), uint16(100), uint16(3200), uint8(1), uint64(1))
	f.Add(uint8(5), uint8(3), uint8(7), uint16(9), uint16(40), uint8(2), uint64(7))
	f.Add(uint8(24), uint8(8), uint8(5), uint16(1), uint16(3), uint8(3), uint64(42))
	f.Fuzz(func(t *testing.T, nodes, experts, layers uint8, perLayer, capacity uint16, replicas uint8, caps uint64) {
		m := Model{Experts: int(experts%12) + 1, Layers: int(layers%40) + 1, BytesPerExpertLayer: int64(perLayer%1000) + 1}
		in := Input{Model: m, Options: Options{MinReplicas: int(replicas % 4)}}
		for i := range int(nodes%25) + 1 {
			// Vary each node's capacity by a few bits of caps.
			c := int64(capacity) * int64(1+(caps>>(2*(i%32)))&3) / 2
			in.Nodes = append(in.Nodes, Node{ID: fmt.Sprintf("n%02d", i), CapacityBytes: c, Draining: i > 0 && caps>>(63-i%8)&1 == 1 && i%5 == 0})
		}
		p, err := Compute(in)
		if want := oracle(in); want != nil {
			checkError(t, "fuzz", err, want)
			return
		}
		if err != nil {
			t.Fatalf("Compute: %v (a placement exists)", err)
		}
		checkInvariants(t, in, p)
		in.Previous = &p
		in.Nodes = in.Nodes[1:]
		if oracle(in) != nil {
			return
		}
		q, err := Compute(in)
		if err != nil {
			t.Fatalf("Compute after a leave: %v", err)
		}
		checkInvariants(t, in, q)
	})
}
