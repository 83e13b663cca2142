// Package dashboard serves a live dashboard of a moegrid cluster as its
// router sees it: a page (HTML, JavaScript and CSS embedded in the binary, no
// external assets) and the JSON state the page polls. The state holds the
// expert nodes with their shards, health and memory, the routed rows of every
// (layer, expert), token counters, the batch, the KV cache and latency
// percentiles over a recent window.
//
// The package knows nothing of the router: the router gives it a Source.
package dashboard

import (
	"embed"
	"encoding/json"
	"io/fs"
	"net/http"
	"sync"
	"time"
)

// Source is what the dashboard reads. Snapshot is called once per request
// for the state, concurrently from several requests; it must not block on
// the network. The returned slices belong to the caller.
type Source interface {
	Snapshot() Snapshot
}

// Snapshot is the state of the cluster as a Source sees it now. Counters and
// histograms are cumulative since the source started; the handler turns
// them into recent figures.
type Snapshot struct {
	// Model is the name of the model served; Experts and Layers its shape.
	Model           string
	Experts, Layers int
	// PlacementVersion is the version of the placement followed; 0 before
	// there is one.
	PlacementVersion int64
	// Nodes are the expert nodes, sorted by ID.
	Nodes []Node
	// Replicas[e] is the fewest usable holders (assigned, loaded, alive)
	// of expert e over its layers: 0 means some layer of e has none.
	Replicas []int
	// Routed[l][e] counts token rows routed to expert e in layer l.
	Routed [][]uint64
	// GeneratedTokens and PromptTokens count tokens sampled and prefilled.
	GeneratedTokens, PromptTokens uint64
	// Running and Waiting are the sequences in the batch and the requests
	// queued for it.
	Running, Waiting int
	// KVUsedBytes and KVBudgetBytes are the KV cache reserved and its limit.
	KVUsedBytes, KVBudgetBytes int64
	// TTFT is the time to first token, TBT the time between tokens.
	TTFT, TBT Histogram
}

// Node is an expert node.
type Node struct {
	ID   string
	Addr string
	// State is the state the node reports ("joining", "ready",
	// "draining"), or "unregistered" for a node the placement names that
	// has no record.
	State string
	// Dead is gossip's verdict; Ejected the router's, after failed calls.
	Dead, Ejected bool
	// Device is where the node keeps its weights, e.g. "cpu".
	Device string
	// UsedBytes is the memory of its loaded shards; CapacityBytes what it
	// offers for expert weights.
	UsedBytes, CapacityBytes int64
	// RowsPerSecond is the node's own recent rate of rows computed.
	RowsPerSecond float64
	// Shards are the shards the placement assigns the node or it has
	// loaded, by expert then first layer.
	Shards []Shard
}

// Shard is an expert's layers [First, End) on a node.
type Shard struct {
	Expert, First, End int
	// Assigned: the placement assigns it to the node; Loaded: the node
	// serves it.
	Assigned, Loaded bool
}

// Histogram is a cumulative latency histogram in seconds. Counts[i] counts
// the observations in (Bounds[i-1], Bounds[i]]; the last element of Counts,
// one past Bounds, counts those above every bound.
type Histogram struct {
	Bounds []float64
	Counts []uint64
}

// Config tunes the handler; the zero value is valid.
type Config struct {
	// Window is the span of the latency percentiles; default one minute.
	Window time.Duration
	// Now is the clock; default time.Now.
	Now func() time.Time
}

//go:embed assets
var assets embed.FS

// Handler serves the dashboard below /dashboard/: the page at /dashboard/
// and its state at /dashboard/state.json.
type Handler struct {
	src    Source
	window time.Duration
	now    func() time.Time
	files  http.Handler

	mu sync.Mutex
	// history holds latency histograms taken at past requests, oldest
	// first, at least historyStep apart; protected by mu.
	history []sample
}

// historyStep spaces the kept histograms, so that many viewers polling
// often keep the history short.
const historyStep = time.Second

type sample struct {
	at        time.Time
	ttft, tbt Histogram
}

// New returns a Handler reading src.
func New(src Source, cfg Config) *Handler {
	if cfg.Window <= 0 {
		cfg.Window = time.Minute
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	sub, err := fs.Sub(assets, "assets")
	if err != nil {
		panic(err) // the embedded directory is part of the binary
	}
	return &Handler{src: src, window: cfg.Window, now: cfg.Now, files: http.StripPrefix("/dashboard/", http.FileServerFS(sub))}
}

// Register adds the dashboard's routes to mux.
func (h *Handler) Register(mux *http.ServeMux) {
	mux.HandleFunc("GET /dashboard/state.json", h.serveState)
	mux.Handle("GET /dashboard/", h.files)
	mux.Handle("GET /dashboard", http.RedirectHandler("/dashboard/", http.StatusMovedPermanently))
}

func (h *Handler) serveState(w http.ResponseWriter, _ *http.Request) {
	st := h.State()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if err := json.NewEncoder(w).Encode(st); err != nil {
		http.Error(w, "dashboard: encoding the state: "+err.Error(), http.StatusInternalServerError)
	}
}

// State reads the source and derives the recent latency percentiles.
func (h *Handler) State() State {
	snap := h.src.Snapshot()
	now := h.now()
	base, since := h.advance(now, snap)
	window := 0.0
	if !since.IsZero() {
		window = now.Sub(since).Seconds()
	}
	st := State{
		Time:             now.UTC(),
		Model:            snap.Model,
		Experts:          snap.Experts,
		Layers:           snap.Layers,
		PlacementVersion: snap.PlacementVersion,
		Nodes:            make([]NodeState, 0, len(snap.Nodes)),
		Replicas:         orEmpty(snap.Replicas),
		Routed:           orEmpty(snap.Routed),
		GeneratedTokens:  snap.GeneratedTokens,
		PromptTokens:     snap.PromptTokens,
		Running:          snap.Running,
		Waiting:          snap.Waiting,
		KVUsedBytes:      snap.KVUsedBytes,
		KVBudgetBytes:    snap.KVBudgetBytes,
		Latency: Latency{
			WindowSeconds: window,
			TTFT:          percentiles(snap.TTFT.minus(base.ttft)),
			TBT:           percentiles(snap.TBT.minus(base.tbt)),
		},
	}
	for _, n := range snap.Nodes {
		ns := NodeState{
			ID: n.ID, Addr: n.Addr, State: n.State, Health: health(n), Device: n.Device,
			UsedBytes: n.UsedBytes, CapacityBytes: n.CapacityBytes, RowsPerSecond: n.RowsPerSecond,
			Shards: make([]ShardState, 0, len(n.Shards)),
		}
		for _, s := range n.Shards {
			ns.Shards = append(ns.Shards, ShardState(s))
		}
		st.Nodes = append(st.Nodes, ns)
	}
	return st
}

// advance records snap's histograms in the history and returns the
// baseline to subtract and the time it was taken: the newest sample at
// least a window old, or, while the history is younger than the window,
// the zero histograms of the source's start (the zero time).
func (h *Handler) advance(now time.Time, snap Snapshot) (sample, time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cut := now.Add(-h.window)
	// Samples older than the newest one a window old will never be the
	// baseline again.
	drop := 0
	for i := 1; i < len(h.history) && !h.history[i].at.After(cut); i++ {
		drop = i
	}
	h.history = h.history[drop:]
	var base sample
	if len(h.history) > 0 && !h.history[0].at.After(cut) {
		base = h.history[0]
	}
	if len(h.history) == 0 || now.Sub(h.history[len(h.history)-1].at) >= historyStep {
		h.history = append(h.history, sample{at: now, ttft: snap.TTFT, tbt: snap.TBT})
	}
	return base, base.at
}

func health(n Node) string {
	switch {
	case n.State == "unregistered" || n.Dead:
		return "dead"
	case n.Ejected:
		return "ejected"
	case n.State == "ready":
		return "ok"
	default:
		return n.State
	}
}

func orEmpty[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
