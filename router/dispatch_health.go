package router

import (
	"math/bits"
	"slices"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/moegrid/moegrid/cluster"
)

// The latency record of a node: the last latencyWindow successful calls in
// each size class (by the bit length of the call's rows: 1, 2–3, 4–7, …),
// so that a prefill chunk is not judged by decode hops. A class with fewer
// than minLatencySamples has no percentiles yet.
const (
	latencyClasses    = 18
	latencyWindow     = 64
	minLatencySamples = 8
)

// latencyRing holds recent latencies and their percentiles, recomputed
// every few samples.
type latencyRing struct {
	samples  [latencyWindow]time.Duration
	n, next  int
	stale    int
	p95, p99 time.Duration
}

func (r *latencyRing) add(d time.Duration) {
	r.samples[r.next] = d
	r.next = (r.next + 1) % latencyWindow
	r.n = min(r.n+1, latencyWindow)
	r.stale++
	if r.n < latencyWindow || r.stale >= 8 {
		var s [latencyWindow]time.Duration
		sorted := s[:r.n]
		copy(sorted, r.samples[:r.n])
		slices.Sort(sorted)
		r.p95 = sorted[(r.n*95+99)/100-1]
		r.p99 = sorted[(r.n*99+99)/100-1]
		r.stale = 0
	}
}

// nodeHealth is what the dispatcher remembers about a node across layers
// and steps: its latency, and its ejection state. An ejected node is
// skipped where another holder exists until ejectedUntil; then one call
// probes it (half-open), and its outcome restores or re-ejects the node.
type nodeHealth struct {
	latency  [latencyClasses]latencyRing
	observe  prometheus.Observer
	failures int // consecutive failures and timeouts
	// failingSince is the first of the current failures, lastFailure the
	// latest, and lastErr its error: what the load report says of the node.
	failingSince, lastFailure time.Time
	lastErr                   string

	ejected      bool
	ejectedAt    time.Time // the ejection that a successful probe will end
	ejectedUntil time.Time
	backoff      time.Duration // of the current or last ejection
	probing      bool          // a probe call is in flight
}

func latencyClass(rows int) int {
	return min(bits.Len(uint(rows)), latencyClasses-1)
}

// healthLocked returns the node's record, making it on first use.
func (d *Dispatcher) healthLocked(node string) *nodeHealth {
	h := d.health[node]
	if h == nil {
		h = &nodeHealth{observe: d.metrics.latency.WithLabelValues(node)}
		d.health[node] = h
	}
	return h
}

// availableLocked reports whether node may get a call now without being
// the last resort, and whether that call would be its probe.
func (d *Dispatcher) availableLocked(node string, now time.Time) (ok, probe bool) {
	h := d.health[node]
	if h == nil || !h.ejected {
		return true, false
	}
	if h.probing || now.Before(h.ejectedUntil) {
		return false, false
	}
	return true, true
}

// hedgeDelayLocked is how long a call of rows rows to node may run before
// it is hedged; 0 disables hedging.
func (d *Dispatcher) hedgeDelayLocked(node string, rows int) time.Duration {
	if d.cfg.HedgeMultiple < 0 {
		return 0
	}
	r := &d.healthLocked(node).latency[latencyClass(rows)]
	if r.n < minLatencySamples {
		return d.cfg.HedgeMax
	}
	return min(max(time.Duration(d.cfg.HedgeMultiple*float64(r.p95)), d.cfg.HedgeMin), d.cfg.HedgeMax)
}

// timeoutLocked bounds a call of rows rows to node. With another holder to
// turn to, it follows the node's latency; a sole holder gets the ceiling,
// since failing it early would only mean waiting for a holder.
func (d *Dispatcher) timeoutLocked(node string, rows int, alternative bool) time.Duration {
	ceiling := d.cfg.CallTimeout
	if !alternative || d.cfg.DeadlineMultiple < 0 {
		return ceiling
	}
	r := &d.healthLocked(node).latency[latencyClass(rows)]
	if r.n < minLatencySamples {
		return ceiling
	}
	t := max(time.Duration(d.cfg.DeadlineMultiple*float64(r.p99)), d.cfg.DeadlineMin)
	if ceiling > 0 {
		t = min(t, ceiling)
	}
	return t
}

// succeededLocked records a successful call; a node that was ejected is
// restored.
func (d *Dispatcher) succeededLocked(node string, rows int, took time.Duration) {
	h := d.healthLocked(node)
	h.latency[latencyClass(rows)].add(took)
	h.observe.Observe(took.Seconds())
	h.failures = 0
	h.lastErr = ""
	h.probing = false
	if h.ejected {
		h.ejected = false
		h.backoff = 0
		d.log.Info("expert node restored after a successful probe", "node", node)
	}
}

// failedLocked records a failed or timed-out call. It reports whether the
// node was ejected by it, so the caller can fail the node's other calls.
func (d *Dispatcher) failedLocked(node string, now time.Time, err error) bool {
	h := d.healthLocked(node)
	if h.failures == 0 {
		h.failingSince = now
	}
	h.failures++
	h.lastFailure = now
	h.lastErr = err.Error()
	switch {
	case h.probing:
		h.probing = false
		h.backoff = min(2*h.backoff, d.cfg.EjectMaxBackoff)
	case h.ejected || d.cfg.EjectAfter < 0 || h.failures < d.cfg.EjectAfter:
		return false
	default:
		h.ejected = true
		h.ejectedAt = now
		h.backoff = d.cfg.EjectBackoff
	}
	h.ejectedUntil = now.Add(h.backoff)
	d.metrics.ejections.WithLabelValues(node).Inc()
	d.log.Warn("expert node ejected", "node", node, "failures", h.failures, "backoff", h.backoff, "err", err)
	return true
}

// endedLocked records a call that ended neither well nor badly (the
// request was cancelled, or its answer was no longer needed): a probe slot
// it held is freed.
func (d *Dispatcher) endedLocked(node string, probe bool) {
	if h := d.health[node]; h != nil && probe {
		h.probing = false
	}
}

// suspectFor is how long a node whose last call failed stays suspect
// without a further call: a node nobody calls is not proven bad, and a
// status should not name it for ever.
const suspectFor = time.Minute

// Unhealthy returns the dispatcher's verdicts on the nodes it does not trust
// now, sorted by node ID and at most cluster.MaxUnhealthyNodes: ejected
// nodes, and suspects whose calls failed within the last minute.
func (d *Dispatcher) Unhealthy(now time.Time) []cluster.NodeVerdict {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []cluster.NodeVerdict
	for node, h := range d.health {
		if cluster.ValidateID(node) != nil {
			continue // the placement's IDs are valid; a record must stay so
		}
		v := cluster.NodeVerdict{NodeID: node, LastError: cluster.TruncateUTF8(h.lastErr, cluster.MaxVerdictErrBytes)}
		switch {
		case h.ejected:
			v.State, v.Since = cluster.VerdictEjected, h.ejectedAt
		case h.failures > 0 && now.Sub(h.lastFailure) < suspectFor:
			v.State, v.Since = cluster.VerdictSuspect, h.failingSince
		default:
			continue
		}
		out = append(out, v)
	}
	slices.SortFunc(out, func(a, b cluster.NodeVerdict) int { return strings.Compare(a.NodeID, b.NodeID) })
	return out[:min(len(out), cluster.MaxUnhealthyNodes)]
}
