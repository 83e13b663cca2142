package placement_test

import (
	"fmt"

	"github.com/moegrid/moegrid/coordinator/placement"
)

func Example() {
	// Mixtral-8x7B in bf16 on four 80 GB nodes, then a fifth joins.
	model := placement.Model{Experts: 8, Layers: 32, BytesPerExpertLayer: 3 * 4096 * 14336 * 2}
	nodes := []placement.Node{
		{ID: "gpu-a", CapacityBytes: 80e9},
		{ID: "gpu-b", CapacityBytes: 80e9},
		{ID: "gpu-c", CapacityBytes: 80e9},
		{ID: "gpu-d", CapacityBytes: 80e9},
	}
	p, err := placement.Compute(placement.Input{Nodes: nodes, Model: model})
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, n := range nodes {
		fmt.Println(n.ID, p.ShardsOf(n.ID))
	}

	nodes = append(nodes, placement.Node{ID: "gpu-e", CapacityBytes: 80e9})
	next, err := placement.Compute(placement.Input{Nodes: nodes, Model: model, Previous: &p})
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println("gpu-e", next.ShardsOf("gpu-e"), "moves:", placement.Moves(p, next))
	fmt.Println("expert 5, layer 7 on", next.HoldersOf(5, 7))
	// Output:
	// gpu-a [expert 0 layers 0-31 expert 4 layers 0-31]
	// gpu-b [expert 1 layers 0-31 expert 5 layers 0-31]
	// gpu-c [expert 2 layers 0-31 expert 6 layers 0-31]
	// gpu-d [expert 3 layers 0-31 expert 7 layers 0-31]
	// gpu-e [expert 0 layers 0-31] moves: 1
	// expert 5, layer 7 on [gpu-b]
}

func ExampleInsufficientCapacityError() {
	model := placement.Model{Experts: 8, Layers: 32, BytesPerExpertLayer: 3 * 4096 * 14336 * 2}
	nodes := make([]placement.Node, 8)
	for i := range nodes {
		nodes[i] = placement.Node{ID: fmt.Sprintf("n%d", i), CapacityBytes: 10e9}
	}
	_, err := placement.Compute(placement.Input{Nodes: nodes, Model: model})
	fmt.Println(err)
	// Output:
	// placement: insufficient capacity: need 90194313216 (84.0 GiB), have 78920024064 (73.5 GiB)
}
