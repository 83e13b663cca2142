package placement

import (
	record "github.com/moegrid/moegrid/placement"
)

// The planner computes the placement record of package
// github.com/moegrid/moegrid/placement, which the cluster, the router and
// the expert nodes import without the planner; these are its names here.
type (
	Model      = record.Model
	Shard      = record.Shard
	Assignment = record.Assignment
	Placement  = record.Placement
)

// Sanity limits on the input, far above any real Mixture-of-Experts model or
// cluster; they keep every byte sum exact in an int64.
const (
	MaxExperts    = record.MaxExperts
	MaxLayers     = record.MaxLayers
	MaxNodes      = 1 << 12 // nodes passed to Compute, draining ones included
	MaxModelBytes = record.MaxModelBytes
)

// Node is a schedulable expert node as the controller sees it.
type Node struct {
	// ID identifies the node; it must be non-empty and unique.
	ID string `json:"id"`
	// CapacityBytes is the memory available for expert weights, in bytes.
	CapacityBytes int64 `json:"capacity_bytes"`
	// Draining nodes get no shards: Compute treats them as absent, so their
	// shards move to other nodes.
	Draining bool `json:"draining,omitempty"`
}

// Moves returns the number of replica placements in to that are not in from:
// each is a (shard, node) pair whose weights the node has to load.
func Moves(from, to Placement) int { return record.Moves(from, to) }
