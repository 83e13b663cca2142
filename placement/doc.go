// Package placement is the placement record: the model's expert shape, the
// shards an expert is cut into, which nodes hold each shard, and the
// validation of all three. The coordinator's planner computes placements and
// writes them to etcd; the cluster package stores them, and the router and
// the expert nodes read them. It is a leaf: it imports nothing of moegrid,
// so the packages that only read a placement do not depend on the planner.
package placement
