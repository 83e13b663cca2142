package router

import (
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/coordinator/placement"
	"github.com/moegrid/moegrid/internal/dashboard"
)

// TestDashboardNodes follows a cluster in etcd where node a holds every
// expert but has loaded only expert 0, and the placement also names node
// ghost, which never registered: the dashboard sees a's shards assigned
// and loaded or loading, its memory, ghost as unregistered, and only
// expert 0 with a usable replica.
func TestDashboardNodes(t *testing.T) {
	fc := startFailCluster(t)
	ctx := testContext(t)
	if err := fc.election.Campaign(ctx, "coordinator-test"); err != nil {
		t.Fatal(err)
	}
	if err := fc.place(ctx, 1, "a"); err != nil {
		t.Fatal(err)
	}
	fc.register(t, &expertNode{id: "a", addr: "127.0.0.1:1"}, 1<<20, fc.allLayers(0))
	experts, layers := fc.shape.Experts, fc.shape.Layers

	want := dashboard.Node{
		ID: "a", Addr: "127.0.0.1:1", State: "ready", Device: "cpu",
		UsedBytes: int64(layers) * fc.shape.BytesPerExpertLayer, CapacityBytes: 1 << 20,
	}
	for e := range experts {
		want.Shards = append(want.Shards, dashboard.Shard{Expert: e, First: 0, End: layers, Assigned: true, Loaded: e == 0})
	}
	wantReplicas := make([]int, experts)
	wantReplicas[0] = 1
	eventually(t, "the dashboard's view of node a", func() error {
		version, nodes := fc.topo.dashboardNodes(map[string]bool{})
		if version != 1 || len(nodes) != 1 {
			return fmt.Errorf("placement v%d, nodes %+v", version, nodes)
		}
		if diff := cmp.Diff(want, nodes[0]); diff != "" {
			return fmt.Errorf("node a (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(wantReplicas, fc.topo.replicas(experts, layers)); diff != "" {
			return fmt.Errorf("replicas (-want +got):\n%s", diff)
		}
		return nil
	})

	p := placement.Placement{Version: 2, Model: fc.shape}
	for e := range experts {
		p.Assignments = append(p.Assignments, placement.Assignment{Shard: fc.allLayers(e), Nodes: []string{"a", "ghost"}})
	}
	_, rev, err := fc.st.Placement(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := fc.st.WritePlacement(ctx, cluster.GuardOf(fc.election), cluster.PlacementRecord{Placement: p, Fingerprint: failFingerprint}, rev); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the unregistered node", func() error {
		_, nodes := fc.topo.dashboardNodes(map[string]bool{"a": true})
		if len(nodes) != 2 || nodes[1].ID != "ghost" {
			return fmt.Errorf("nodes %+v", nodes)
		}
		if g := nodes[1]; g.State != "unregistered" || len(g.Shards) != experts || g.Shards[0].Loaded {
			return fmt.Errorf("ghost %+v", g)
		}
		if !nodes[0].Ejected {
			return fmt.Errorf("node a is not shown ejected: %+v", nodes[0])
		}
		return nil
	})
}
