// Package cluster is what moegrid's coordinator, expert nodes and router
// share: the etcd key schema and records of a cluster, the leases that keep
// nodes and routers registered, the guarded placement write, the watches
// that deliver placement and nodes, and the memberlist gossip ring.
//
// # Keys
//
// One cluster lives under one etcd prefix (DefaultPrefix unless configured),
// described by Keys. Open refuses a prefix whose meta record names another
// schema or that holds keys moegrid never writes (ErrForeignPrefix), so two
// programs cannot silently share one.
//
// # Who is the authority for what
//
//   - Membership: the etcd lease. A node is a member exactly as long as its
//     NodeRecord exists, and the record is bound to the node's lease
//     (Register). A crashed or partitioned node disappears when its lease
//     expires (LeaseOptions.TTL, 10 s by default); a node that shuts down
//     revokes its lease and disappears at once.
//   - Failure detection: memberlist gossip (Gossip). It notices a dead
//     process in seconds, sooner than the lease. A node that gossip declares
//     dead (Gossip.Dead) is treated as dead for placement and routing even
//     while its lease lives; a node gossip has never seen is not assumed
//     dead, so gossip can only take nodes away, never add them.
//   - Placement: the PlacementRecord in etcd, written only by the elected
//     coordinator through WritePlacement, whose transaction checks the
//     leader's election key and the placement's revision. Versions only
//     grow.
//   - Draining: a node's own state (StateDraining) or an operator's
//     DrainMark; either moves the node's shards away.
//   - Serving: a router sends a shard's rows only to a node that the current
//     placement assigns the shard to, whose record reports the shard loaded
//     (NodeRecord.Holds), and that gossip reports alive (Gossip.Alive).
//
// Live load travels both ways: an expert node's counters in its record (for
// status, refreshed with the heartbeat) and in its gossip metadata (seconds
// fresh, for the router's choice among replicas); a router's per-expert
// token rates in its LoadRecord (for the coordinator's replica choice).
//
// When etcd is unreachable the data plane keeps its last placement; leases,
// watches and registrations reconnect by themselves when etcd returns (a
// registration whose lease expired meanwhile registers again under a new
// one).
package cluster
