package cluster_test

import (
	"context"
	"log"
	"time"

	"github.com/moegrid/moegrid/cluster"
	"github.com/moegrid/moegrid/placement"
)

// An expert node joins the cluster: it gossips, registers under its lease,
// follows the placement, and reports what it has loaded.
func Example_expertNode() {
	ctx := context.Background()
	cli, err := cluster.NewEtcdClient([]string{"http://127.0.0.1:2379"})
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	st, err := cluster.Open(ctx, cli, cluster.DefaultPrefix, nil)
	if err != nil {
		log.Fatal(err) // e.g. cluster.ErrForeignPrefix
	}

	gcfg := cluster.DefaultGossipConfig("expert-0", cluster.RoleNode)
	gcfg.Seeds = cluster.FollowGossipSeeds(ctx, st)
	g, err := cluster.StartGossip(gcfg, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close()

	reg, err := st.Register(ctx, cluster.NodeRecord{
		ID:            "expert-0",
		GRPCAddr:      "127.0.0.1:7100",
		GossipAddr:    g.Addr(),
		CapacityBytes: 80 << 30,
		Device:        cluster.Device{Kind: "cuda", Name: "H100"},
		Model: cluster.ModelInfo{
			Shape:       placement.Model{Experts: 8, Layers: 32, BytesPerExpertLayer: 3 * 4096 * 14336 * 2},
			Fingerprint: "sha256:…",
		},
	}, cluster.LeaseOptions{TTL: 10 * time.Second})
	if err != nil {
		log.Fatal(err)
	}
	defer reg.Close() // revokes the lease: the coordinator re-places at once

	for p := range st.WatchPlacement(ctx) {
		mine := p.ShardsOf("expert-0")
		// ... load the weights of mine, then:
		_ = reg.Update(ctx, func(r *cluster.NodeRecord) {
			r.Loaded = mine
			r.State = cluster.StateReady
		})
	}
}

// A router trusts a holder of a shard only if the placement assigns it, its
// record reports the shard loaded, and gossip has not declared it dead.
func Example_routerTrust() {
	var (
		p     cluster.PlacementRecord
		nodes map[string]cluster.NodeRecord
		g     *cluster.Gossip
	)
	trusted := func(expert, layer int) []string {
		var out []string
		for _, id := range p.HoldersOf(expert, layer) {
			rec, ok := nodes[id]
			if ok && rec.Holds(placement.Shard{Expert: expert, First: layer, End: layer + 1}) &&
				rec.State != cluster.StateDraining && g.Alive(id) {
				out = append(out, id)
			}
		}
		return out
	}
	_ = trusted
}
