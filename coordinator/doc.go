// Package coordinator runs moegrid's control plane: several replicas elect a
// leader in etcd, the leader keeps the placement of expert shards on nodes
// in line with the cluster, and every replica serves the cluster's status.
//
// # Reconciling
//
// The leader is level-based: whenever anything under the cluster prefix
// changes (nodes, drains, loads), gossip reports a member change, or a
// resync period passes, it reads the whole cluster in one Snapshot and
// computes the placement it should have from
//
//   - the live nodes: a record in etcd (the lease is the authority), not
//     declared dead by gossip (which notices a crash seconds before the
//     lease expires), serving the placed model's checkpoint; draining nodes
//     (their own state or an operator's drain mark) get no shards;
//   - the routers' load statistics;
//   - the previous placement, so that a change moves only what it must.
//
// It writes the result, with the version one higher, only when the
// assignments differ; the write is guarded by the leader's election key, so
// a deposed leader cannot overwrite its successor (cluster.WritePlacement).
// When no complete placement exists (not enough memory, no nodes) the
// previous placement stays in force and the record carries the error, which
// Status reports.
//
// # Load and churn
//
// Load statistics only decide which experts get the extra replicas when
// there are more nodes than shards. To keep noisy statistics from moving
// shards about, a placement change caused by load alone — the same nodes
// would get the same shards with the load the current placement was
// computed with — is made at most once per Config.LoadRebalanceInterval
// (5 min by default), and placement.Options.LoadTolerance adds hysteresis on
// top. A membership change (join, death, drain) is acted on at once, with
// the current load.
//
// # Serving
//
// Every replica, leader or not, serves moegrid.v1.Cluster (Status, Drain),
// grpc.health.v1 and reflection on Config.GRPCAddr, and /metrics, /healthz
// and /readyz on Config.HTTPAddr.
package coordinator
