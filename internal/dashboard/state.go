package dashboard

import (
	"slices"
	"time"
)

// State is the JSON document at /dashboard/state.json; its field names are
// what the page reads.
type State struct {
	Time             time.Time   `json:"time"`
	Model            string      `json:"model"`
	Experts          int         `json:"experts"`
	Layers           int         `json:"layers"`
	PlacementVersion int64       `json:"placement_version"`
	Nodes            []NodeState `json:"nodes"`
	// Replicas[e] is the fewest usable holders of expert e over its layers.
	Replicas []int `json:"replicas"`
	// Routed[l][e] is the cumulative count of rows routed to expert e in
	// layer l; the page takes rates between two polls.
	Routed          [][]uint64 `json:"routed"`
	GeneratedTokens uint64     `json:"generated_tokens_total"`
	PromptTokens    uint64     `json:"prompt_tokens_total"`
	Running         int        `json:"running"`
	Waiting         int        `json:"waiting"`
	KVUsedBytes     int64      `json:"kv_used_bytes"`
	KVBudgetBytes   int64      `json:"kv_budget_bytes"`
	Latency         Latency    `json:"latency"`
}

// NodeState is an expert node in State. Health is "ok", "joining",
// "draining", "ejected" (the router avoids it after failed calls) or
// "dead" (gossip declared it dead, or it has no record).
type NodeState struct {
	ID            string       `json:"id"`
	Addr          string       `json:"addr"`
	State         string       `json:"state"`
	Health        string       `json:"health"`
	Device        string       `json:"device"`
	UsedBytes     int64        `json:"used_bytes"`
	CapacityBytes int64        `json:"capacity_bytes"`
	RowsPerSecond float64      `json:"rows_per_second"`
	Shards        []ShardState `json:"shards"`
}

// ShardState is a shard of a node: expert, layers [first, end).
type ShardState struct {
	Expert   int  `json:"expert"`
	First    int  `json:"first_layer"`
	End      int  `json:"end_layer"`
	Assigned bool `json:"assigned"`
	Loaded   bool `json:"loaded"`
}

// Latency holds percentiles in seconds over the last WindowSeconds; a
// window of 0 means since the source started. A percentile is null while
// the window has no observation.
type Latency struct {
	WindowSeconds float64     `json:"window_seconds"`
	TTFT          Percentiles `json:"ttft"`
	TBT           Percentiles `json:"tbt"`
}

// Percentiles of a latency, in seconds, and the observations they are of.
type Percentiles struct {
	Count uint64   `json:"count"`
	P50   *float64 `json:"p50"`
	P90   *float64 `json:"p90"`
	P99   *float64 `json:"p99"`
}

// minus returns the observations of h that base does not have; a base of
// other bounds (or none) subtracts nothing.
func (h Histogram) minus(base Histogram) Histogram {
	if !slices.Equal(h.Bounds, base.Bounds) || len(h.Counts) != len(base.Counts) {
		return h
	}
	out := Histogram{Bounds: h.Bounds, Counts: make([]uint64, len(h.Counts))}
	for i := range h.Counts {
		if h.Counts[i] > base.Counts[i] {
			out.Counts[i] = h.Counts[i] - base.Counts[i]
		}
	}
	return out
}

func percentiles(h Histogram) Percentiles {
	p := Percentiles{}
	for _, c := range h.Counts {
		p.Count += c
	}
	if p.Count == 0 {
		return p
	}
	p.P50, p.P90, p.P99 = h.quantile(0.5), h.quantile(0.9), h.quantile(0.99)
	return p
}

// quantile estimates the q-quantile as Prometheus' histogram_quantile does:
// linear within the bucket that holds the rank, the first bucket starting
// at 0, and the bucket above every bound answered by the highest bound.
func (h Histogram) quantile(q float64) *float64 {
	if len(h.Bounds) == 0 || len(h.Counts) != len(h.Bounds)+1 {
		return nil
	}
	var total uint64
	for _, c := range h.Counts {
		total += c
	}
	if total == 0 {
		return nil
	}
	rank := q * float64(total)
	var below uint64
	for i, c := range h.Counts {
		if c == 0 || float64(below+c) < rank {
			below += c
			continue
		}
		if i == len(h.Bounds) {
			v := h.Bounds[len(h.Bounds)-1]
			return &v
		}
		lo := 0.0
		if i > 0 {
			lo = h.Bounds[i-1]
		}
		v := lo + (h.Bounds[i]-lo)*(rank-float64(below))/float64(c)
		return &v
	}
	v := h.Bounds[len(h.Bounds)-1]
	return &v
}
