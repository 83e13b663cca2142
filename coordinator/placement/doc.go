// Package placement decides which expert node holds which shard of a
// Mixture-of-Experts model. It is a pure, deterministic function of its
// inputs (nodes with capacities, the model shape, per-expert load statistics,
// options and the previous placement): no clocks, no randomness, no map
// iteration order, no I/O. The coordinator's controller calls [Compute],
// sets [Placement.Version] and stores the result in etcd; the router and the
// expert nodes read it.
//
// # Shards and granularity
//
// A [Shard] is one expert over a contiguous layer range [First, End). Every
// expert is cut into the same number k of contiguous ranges whose sizes differ
// by at most one layer (the first Layers%k ranges are one layer longer), so
// the shards of an expert cover [0, Layers) exactly with no overlap. Compute
// uses the smallest k for which it finds a placement: k = 1 (whole experts)
// on any cluster that can hold the experts whole, more ranges only when nodes
// are too small. For stability, a previous placement's k is kept while it
// still fits, so a cluster that once had to split does not reload every
// expert the moment a node joins; a plan computed without a previous
// placement re-derives the coarsest k.
//
// # Algorithm
//
// For the chosen k, with S = Experts*k shards and R = MinReplicas:
//
//  1. Keep: every previous replica whose node is still schedulable (present
//     and not draining) is kept, as long as the node has room for it. When k
//     became finer, a node keeps the new shards lying inside a shard it held,
//     since it already has their weights.
//  2. Replica counts: every shard gets at least R replicas. The total is
//     T = max(S*R, number of nodes that can hold a shard), capped by
//     MaxReplicas: surplus nodes hold extra replicas, a smaller cluster holds
//     exactly R copies. Extra replicas go to the shard with the highest load
//     per replica, ties to the lower expert and then the lower layer (as in
//     DeepSeek's EPLB), among shards some node still has room for; surplus
//     replicas are removed from the shard whose load per replica stays
//     lowest. A kept extra replica moves to a hotter shard only when that
//     shard's load per replica exceeds the cold shard's (counted with one
//     replica fewer) by more than [Options.LoadTolerance], so noisy load
//     statistics do not shuffle replicas.
//  3. Place the missing required replicas, R rounds over the shards (largest
//     first), then the extras in load order. Each replica goes to the node,
//     among those not yet holding the shard and with room, whose fill (bytes
//     held / capacity) is lowest after receiving it; ties go to the node
//     sharing the fewest experts with the shard's other holders, then to the
//     node whose experts other nodes hold least often (so replicas do not
//     pair up: 8 nodes with 2 replicas form a ring), then to the lower ID. If
//     no node has room for a required replica, extra replicas (coldest first)
//     give way, or the replicas of one node are moved to other nodes to make
//     room (one level of an ejection chain).
//  4. Rebalance: move a replica from node i to node j while j, after
//     receiving it, is still strictly less full than i was. Without a
//     previous placement this runs until no such move exists: every node is
//     within about one shard of its capacity-proportional share. With one,
//     only nodes above their share give, and only newcomers (nodes that kept
//     nothing: a joining node, or one that was empty) receive, up to their
//     share.
//
// If the kept replicas leave no way to place a required one, Compute plans
// the same k afresh, and if balanced placement fails, it retries with a
// packing that puts each shard on the nodes with the most free memory. That
// packing is exact for single-layer shards (it is the Havel-Hakimi
// construction), so Compute returns [*InsufficientCapacityError] only when no
// placement exists at all: when the usable memory (whole layers, at most one
// copy of each layer per node) is below
// Experts*Layers*BytesPerExpertLayer*MinReplicas.
//
// # Stability
//
// With a previous placement of the same model, as long as its granularity
// still fits:
//
//   - A node leaving or draining moves only the replicas it held. Another
//     replica moves only when memory is so tight that it must make room for
//     a required one (step 3).
//   - A node joining receives existing replicas only up to its
//     capacity-proportional share of the bytes placed (for equal nodes and
//     whole experts: at most ceil(replicas/nodes)); no other replica moves.
//     If the larger cluster is entitled to extra replicas (step 2), they are
//     added without moving existing ones, before any rebalancing.
//   - Computing again with the result as the previous placement and
//     unchanged inputs returns the same placement.
//
// The exceptions are a cluster whose memory is nearly exhausted and
// fragmented, where Compute may fall back to a fresh plan, and a change that
// makes the previous granularity impossible. Stable updates do not even out
// an imbalanced previous placement beyond filling newcomers; a plan without
// a previous placement does.
//
// All arithmetic on bytes is exact (128-bit products for fill ratios); load
// comparisons use explicitly rounded float64 divisions, so the result does
// not depend on the CPU architecture or on fused multiply-add.
package placement
