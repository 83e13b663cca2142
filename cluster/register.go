package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Registration keeps an expert node's record in etcd under the node's lease
// for as long as it is open. It rewrites the record every
// LeaseOptions.Refresh (the heartbeat), and when the lease is lost (etcd
// down or unreachable for longer than the TTL) it takes a new lease and
// registers again, so a node survives an etcd restart without help.
//
// A Registration is safe for concurrent use.
type Registration struct {
	lk *leasedKey

	// mu protects rec.
	mu  sync.Mutex
	rec NodeRecord
}

// Register validates rec and writes it at Keys.Node(rec.ID) under a new
// lease, then keeps it there until Close. An empty State is joining; a zero
// Started is now. If another live process holds the ID, Register waits for
// its lease to end and returns ctx's error if it does not end in time.
func (s *Store) Register(ctx context.Context, rec NodeRecord, opts LeaseOptions) (*Registration, error) {
	opts, err := opts.withDefaults(s)
	if err != nil {
		return nil, err
	}
	if rec.State == "" {
		rec.State = StateJoining
	}
	if rec.Started.IsZero() {
		rec.Started = time.Now().UTC()
	}
	if err := rec.Validate(); err != nil {
		return nil, fmt.Errorf("cluster: register node: %w", err)
	}
	r := &Registration{rec: cloneNodeRecord(rec)}
	opts.Logger = opts.Logger.With("node", rec.ID)
	r.lk, err = s.openLeasedKey(ctx, s.keys.Node(rec.ID), opts, r.encode)
	if err != nil {
		return nil, err
	}
	r.lk.log.Info("node registered", "key", r.lk.key, "lease", fmt.Sprintf("%x", r.lk.lease()), "ttl", opts.TTL)
	return r, nil
}

func (r *Registration) encode(now time.Time) (string, error) {
	r.mu.Lock()
	r.rec.Heartbeat = now
	b, err := json.Marshal(r.rec)
	r.mu.Unlock()
	return string(b), err
}

// Record returns a copy of the record as last set.
func (r *Registration) Record() NodeRecord {
	r.mu.Lock()
	defer r.mu.Unlock()
	return cloneNodeRecord(r.rec)
}

// Lease returns the lease the record is currently bound to.
func (r *Registration) Lease() clientv3.LeaseID { return r.lk.lease() }

// Update applies fn to a copy of the record, validates it and writes it.
// The ID cannot change. If the write fails (etcd unreachable) the new record
// is kept and written by the next heartbeat or re-registration; Update
// returns the write error.
func (r *Registration) Update(ctx context.Context, fn func(*NodeRecord)) error {
	r.mu.Lock()
	next := cloneNodeRecord(r.rec)
	fn(&next)
	if next.ID != r.rec.ID {
		r.mu.Unlock()
		return errors.New("cluster: update node record: the id cannot change")
	}
	if err := next.Validate(); err != nil {
		r.mu.Unlock()
		return fmt.Errorf("cluster: update node record: %w", err)
	}
	r.rec = next
	r.mu.Unlock()
	return r.lk.write(ctx)
}

// Close stops the heartbeat and revokes the lease, which deletes the record
// at once (the cluster re-places the node's shards). Idempotent.
func (r *Registration) Close() error { return r.lk.close() }

func cloneNodeRecord(r NodeRecord) NodeRecord {
	r.Loaded = slices.Clone(r.Loaded)
	if r.LoadError != nil {
		e := *r.LoadError
		r.LoadError = &e
	}
	return r
}

// LoadReporter keeps a router's LoadRecord in etcd under the router's lease,
// like Registration does for a node. It is safe for concurrent use.
type LoadReporter struct {
	lk *leasedKey

	// mu protects rec.
	mu  sync.Mutex
	rec LoadRecord
}

// ReportLoad validates rec and writes it at Keys.Load(rec.RouterID) under a
// new lease until Close.
func (s *Store) ReportLoad(ctx context.Context, rec LoadRecord, opts LeaseOptions) (*LoadReporter, error) {
	opts, err := opts.withDefaults(s)
	if err != nil {
		return nil, err
	}
	if err := rec.Validate(); err != nil {
		return nil, fmt.Errorf("cluster: report load: %w", err)
	}
	rec.TokensPerSecond = slices.Clone(rec.TokensPerSecond)
	rec.Unhealthy = slices.Clone(rec.Unhealthy)
	l := &LoadReporter{rec: rec}
	opts.Logger = opts.Logger.With("router", rec.RouterID)
	l.lk, err = s.openLeasedKey(ctx, s.keys.Load(rec.RouterID), opts, l.encode)
	if err != nil {
		return nil, err
	}
	return l, nil
}

func (l *LoadReporter) encode(now time.Time) (string, error) {
	l.mu.Lock()
	l.rec.Updated = now
	b, err := json.Marshal(l.rec)
	l.mu.Unlock()
	return string(b), err
}

// Set records new rates (tokens per second per expert; the slice is copied)
// and writes them with the next refresh: load changes slowly and is not
// worth a write per call.
func (l *LoadReporter) Set(tokensPerSecond []float64) error {
	l.mu.Lock()
	next := l.rec
	next.TokensPerSecond = slices.Clone(tokensPerSecond)
	if err := next.Validate(); err != nil {
		l.mu.Unlock()
		return fmt.Errorf("cluster: report load: %w", err)
	}
	l.rec = next
	l.mu.Unlock()
	return nil
}

// SetUnhealthy records the nodes the router does not trust now (the slice is
// copied) for the next write; the caller flushes when the verdicts change,
// since a status reader wants them sooner than the next refresh.
func (l *LoadReporter) SetUnhealthy(verdicts []NodeVerdict) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	next := l.rec
	next.Unhealthy = slices.Clone(verdicts)
	if err := next.Validate(); err != nil {
		return fmt.Errorf("cluster: report load: %w", err)
	}
	l.rec = next
	return nil
}

// Flush writes the current record now.
func (l *LoadReporter) Flush(ctx context.Context) error { return l.lk.write(ctx) }

// Close revokes the router's lease, deleting its load record. Idempotent.
func (l *LoadReporter) Close() error { return l.lk.close() }

// Loads returns the routers' load records, skipping malformed ones.
func (s *Store) Loads(ctx context.Context) ([]LoadRecord, error) {
	resp, err := s.cli.Get(ctx, s.keys.Loads(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("cluster: read %s: %w", s.keys.Loads(), err)
	}
	var out []LoadRecord
	for _, kv := range resp.Kvs {
		var l LoadRecord
		if err := decode(string(kv.Key), kv.Value, &l); err != nil {
			s.reportMalformed(kv, err)
			continue
		}
		out = append(out, l)
	}
	return out, nil
}

// SumLoad adds up the rates of the records that serve the model with the
// given fingerprint and number of experts; nil when there are none.
func SumLoad(loads []LoadRecord, fingerprint string, experts int) []float64 {
	var sum []float64
	for _, l := range loads {
		if l.Fingerprint != fingerprint || len(l.TokensPerSecond) != experts {
			continue
		}
		if sum == nil {
			sum = make([]float64, experts)
		}
		for i, v := range l.TokensPerSecond {
			sum[i] += v
		}
	}
	return sum
}
