// Package expertnode is the expert node: it holds the expert shards that the
// placement gives it, memory-mapped from the checkpoint files, and answers
// moegrid.v1.Expert/Forward with w2(silu(w1·x) ⊙ w3·x) for batches of rows.
//
// The node registers in etcd under a lease, joins the gossip ring, follows the
// placement, loads its new shards before it swaps them in (calls in flight
// finish on the old ones), and reports what it has loaded. On SIGTERM it
// turns NOT_SERVING, stops taking calls, finishes those it has, and leaves.
package expertnode
