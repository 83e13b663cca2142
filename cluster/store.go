package cluster

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"time"

	"github.com/moegrid/moegrid/internal/retry"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// ErrForeignPrefix reports a key prefix that holds data moegrid did not write
// or another schema's cluster: moegrid refuses to use it rather than misread
// or overwrite it.
var ErrForeignPrefix = errors.New("cluster: prefix holds foreign data")

// ErrNodeNotFound reports an operation on a node that has no record.
var ErrNodeNotFound = errors.New("cluster: node not found")

// Store is a cluster's view of etcd: the key schema under one prefix and the
// reads and writes every component shares. It is safe for concurrent use; it
// does not own the etcd client.
type Store struct {
	cli  *clientv3.Client
	keys Keys
	log  *slog.Logger

	// mu protects reported.
	mu sync.Mutex
	// reported remembers the malformed values already logged, by key and
	// ModRevision, so that a bad record is logged once, not on every read.
	reported map[string]int64
}

// Open validates prefix and checks that it holds a moegrid cluster of this
// schema, creating the meta record of a new, empty prefix. It returns
// ErrInvalidPrefix for a bad prefix and ErrForeignPrefix, naming the
// offending key, for a prefix that holds anything else. A nil logger
// discards.
func Open(ctx context.Context, cli *clientv3.Client, prefix string, logger *slog.Logger) (*Store, error) {
	keys, err := NewKeys(prefix)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Store{cli: cli, keys: keys, log: logger, reported: make(map[string]int64)}
	if err := s.ensureMeta(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

// Keys returns the store's key schema.
func (s *Store) Keys() Keys { return s.keys }

// Client returns the etcd client the store uses.
func (s *Store) Client() *clientv3.Client { return s.cli }

func (s *Store) ensureMeta(ctx context.Context) error {
	metaKey := s.keys.Meta()
	for {
		resp, err := s.cli.Get(ctx, metaKey)
		if err != nil {
			return fmt.Errorf("cluster: read %s: %w", metaKey, err)
		}
		if len(resp.Kvs) == 1 {
			return s.checkMeta(resp.Kvs[0])
		}
		// No meta: the prefix must be empty or hold only moegrid's keys (a
		// cluster whose meta was deleted by hand).
		if err := s.checkForeign(ctx); err != nil {
			return err
		}
		b, _ := json.Marshal(Meta{Schema: Schema, Created: time.Now().UTC()})
		tresp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.CreateRevision(metaKey), "=", 0)).
			Then(clientv3.OpPut(metaKey, string(b))).
			Commit()
		if err != nil {
			return fmt.Errorf("cluster: create %s: %w", metaKey, err)
		}
		if tresp.Succeeded {
			s.log.Info("created cluster meta", "key", metaKey, "schema", Schema)
			return nil
		}
		// Someone else created it first: check theirs.
	}
}

func (s *Store) checkMeta(kv *mvccpb.KeyValue) error {
	var m Meta
	if err := json.Unmarshal(kv.Value, &m); err != nil {
		return fmt.Errorf("%w: %s is not a moegrid cluster meta record (%v); use another --prefix", ErrForeignPrefix, kv.Key, err)
	}
	if m.Schema != Schema {
		return fmt.Errorf("%w: %s has schema %q, this program speaks %q; use another --prefix", ErrForeignPrefix, kv.Key, m.Schema, Schema)
	}
	return nil
}

// checkForeign fails if any key under the prefix is not one moegrid writes.
func (s *Store) checkForeign(ctx context.Context) error {
	resp, err := s.cli.Get(ctx, s.keys.Prefix(), clientv3.WithPrefix(), clientv3.WithKeysOnly())
	if err != nil {
		return fmt.Errorf("cluster: list %s: %w", s.keys.Prefix(), err)
	}
	for _, kv := range resp.Kvs {
		if k, _ := s.keys.kind(string(kv.Key)); k == kindForeign {
			return fmt.Errorf("%w: %s is not a moegrid key and %s is missing; use another --prefix", ErrForeignPrefix, kv.Key, s.keys.Meta())
		}
	}
	return nil
}

// reportMalformed logs a malformed value once per key and revision.
func (s *Store) reportMalformed(kv *mvccpb.KeyValue, err error) {
	s.mu.Lock()
	seen := s.reported[string(kv.Key)] == kv.ModRevision
	s.reported[string(kv.Key)] = kv.ModRevision
	s.mu.Unlock()
	if !seen {
		s.log.Error("skipping malformed record", "key", string(kv.Key), "mod_revision", kv.ModRevision, "err", err)
	}
}

// forgetReported drops the remembered keys that are no longer malformed.
func (s *Store) forgetReported(bad map[string]bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k := range s.reported {
		if !bad[k] {
			delete(s.reported, k)
		}
	}
}

// Snapshot is the whole cluster state at one etcd revision. Malformed records
// are left out (and logged once, with their key).
type Snapshot struct {
	// Revision is the etcd revision the snapshot was read at.
	Revision int64
	// Nodes are the registered expert nodes, sorted by ID.
	Nodes []NodeRecord
	// Placement is the current placement record; Version 0 when none.
	Placement PlacementRecord
	// PlacementModRevision is the placement key's ModRevision, 0 when
	// absent: the expectation a guarded write compares against.
	PlacementModRevision int64
	// Drains are the drain marks by node ID, stale ones included (see
	// Drained).
	Drains map[string]DrainMark
	// Loads are the routers' load records, sorted by router ID.
	Loads []LoadRecord
	// Leader is the ID of the coordinator replica holding the election, ""
	// when none.
	Leader string
}

// Node returns the record of node id.
func (s *Snapshot) Node(id string) (NodeRecord, bool) {
	i, ok := slices.BinarySearchFunc(s.Nodes, id, func(r NodeRecord, id string) int { return cmp.Compare(r.ID, id) })
	if !ok {
		return NodeRecord{}, false
	}
	return s.Nodes[i], true
}

// Drained reports whether node id has a drain mark for its current process.
func (s *Snapshot) Drained(id string) bool {
	m, ok := s.Drains[id]
	if !ok {
		return false
	}
	r, ok := s.Node(id)
	return ok && m.Current(r)
}

// StaleDrains returns the drain marks whose node process is gone.
func (s *Snapshot) StaleDrains() []DrainMark {
	var out []DrainMark
	for _, id := range slices.Sorted(maps.Keys(s.Drains)) {
		if !s.Drained(id) {
			out = append(out, s.Drains[id])
		}
	}
	return out
}

// Draining reports whether node id is leaving: its record says draining or
// it has a current drain mark.
func (s *Snapshot) Draining(id string) bool {
	r, ok := s.Node(id)
	return ok && r.State == StateDraining || s.Drained(id)
}

// Snapshot reads every key of the cluster in one request, so that nodes,
// placement, drains, loads and leader are consistent with each other.
func (s *Store) Snapshot(ctx context.Context) (*Snapshot, error) {
	resp, err := s.cli.Get(ctx, s.keys.Prefix(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("cluster: read %s: %w", s.keys.Prefix(), err)
	}
	snap := &Snapshot{
		Revision: resp.Header.Revision,
		Drains:   make(map[string]DrainMark),
	}
	bad := make(map[string]bool)
	var leaderRev int64
	for _, kv := range resp.Kvs {
		key := string(kv.Key)
		kind, id := s.keys.kind(key)
		var derr error
		switch kind {
		case kindNode:
			var r NodeRecord
			if r, derr = s.keys.DecodeNodeRecord(key, kv.Value); derr == nil {
				snap.Nodes = append(snap.Nodes, r)
			}
		case kindPlacement:
			var p PlacementRecord
			if p, derr = DecodePlacementRecord(key, kv.Value); derr == nil {
				snap.Placement = p
			}
			// A guarded write must replace even a malformed record.
			snap.PlacementModRevision = kv.ModRevision
		case kindDrain:
			var d DrainMark
			if derr = decode(key, kv.Value, &d); derr == nil {
				if d.NodeID != id {
					derr = fmt.Errorf("%w %s: node_id %q does not match the key", ErrMalformed, key, d.NodeID)
				} else {
					d.modRevision = kv.ModRevision
					snap.Drains[id] = d
				}
			}
		case kindLoad:
			var l LoadRecord
			if derr = decode(key, kv.Value, &l); derr == nil {
				if l.RouterID != id {
					derr = fmt.Errorf("%w %s: router_id %q does not match the key", ErrMalformed, key, l.RouterID)
				} else {
					snap.Loads = append(snap.Loads, l)
				}
			}
		case kindElection:
			if leaderRev == 0 || kv.CreateRevision < leaderRev {
				leaderRev, snap.Leader = kv.CreateRevision, string(kv.Value)
			}
		case kindMeta:
		case kindForeign:
			derr = fmt.Errorf("%w %s: not a moegrid key", ErrMalformed, key)
		}
		if derr != nil {
			bad[key] = true
			s.reportMalformed(kv, derr)
		}
	}
	s.forgetReported(bad)
	// Keys come sorted from etcd, and node IDs sort like their keys.
	return snap, nil
}

// Nodes returns the registered expert nodes, sorted by ID, skipping
// malformed records.
func (s *Store) Nodes(ctx context.Context) ([]NodeRecord, error) {
	resp, err := s.cli.Get(ctx, s.keys.Nodes(), clientv3.WithPrefix())
	if err != nil {
		return nil, fmt.Errorf("cluster: read %s: %w", s.keys.Nodes(), err)
	}
	return s.decodeNodes(resp.Kvs), nil
}

func (s *Store) decodeNodes(kvs []*mvccpb.KeyValue) []NodeRecord {
	nodes := make([]NodeRecord, 0, len(kvs))
	for _, kv := range kvs {
		r, err := s.keys.DecodeNodeRecord(string(kv.Key), kv.Value)
		if err != nil {
			s.reportMalformed(kv, err)
			continue
		}
		nodes = append(nodes, r)
	}
	return nodes
}

// Placement returns the current placement record (Version 0 when there is
// none) and the key's ModRevision (0 when absent).
func (s *Store) Placement(ctx context.Context) (PlacementRecord, int64, error) {
	key := s.keys.Placement()
	resp, err := s.cli.Get(ctx, key)
	if err != nil {
		return PlacementRecord{}, 0, fmt.Errorf("cluster: read %s: %w", key, err)
	}
	if len(resp.Kvs) == 0 {
		return PlacementRecord{}, 0, nil
	}
	kv := resp.Kvs[0]
	p, err := DecodePlacementRecord(key, kv.Value)
	if err != nil {
		return PlacementRecord{}, kv.ModRevision, err
	}
	return p, kv.ModRevision, nil
}

// Drain marks node id draining for its current process. It returns
// ErrInvalidID for a bad ID and ErrNodeNotFound when the node has no record
// (or only a malformed one). Draining a drained node does nothing.
func (s *Store) Drain(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	nodeKey, drainKey := s.keys.Node(id), s.keys.Drain(id)
	for {
		resp, err := s.cli.Get(ctx, nodeKey)
		if err != nil {
			return fmt.Errorf("cluster: read %s: %w", nodeKey, err)
		}
		if len(resp.Kvs) == 0 {
			return fmt.Errorf("%w: %s", ErrNodeNotFound, id)
		}
		kv := resp.Kvs[0]
		rec, err := s.keys.DecodeNodeRecord(nodeKey, kv.Value)
		if err != nil {
			return fmt.Errorf("%w: %s (%v)", ErrNodeNotFound, id, err)
		}
		b, _ := json.Marshal(DrainMark{NodeID: id, NodeStarted: rec.Started, Requested: time.Now().UTC()})
		// The record must not have changed since it was read, so that the
		// mark names the process that is registered now.
		tresp, err := s.cli.Txn(ctx).
			If(clientv3.Compare(clientv3.ModRevision(nodeKey), "=", kv.ModRevision)).
			Then(clientv3.OpPut(drainKey, string(b))).
			Commit()
		if err != nil {
			return fmt.Errorf("cluster: write %s: %w", drainKey, err)
		}
		if tresp.Succeeded {
			s.log.Info("node drain requested", "node", id, "node_started", rec.Started)
			return nil
		}
	}
}

// Undrain removes node id's drain mark, if any.
func (s *Store) Undrain(ctx context.Context, id string) error {
	if err := ValidateID(id); err != nil {
		return err
	}
	if _, err := s.cli.Delete(ctx, s.keys.Drain(id)); err != nil {
		return fmt.Errorf("cluster: delete %s: %w", s.keys.Drain(id), err)
	}
	return nil
}

// RemoveStaleDrain deletes a drain mark read in a Snapshot (see
// Snapshot.StaleDrains), unless the mark changed since it was read.
func (s *Store) RemoveStaleDrain(ctx context.Context, m DrainMark) error {
	key := s.keys.Drain(m.NodeID)
	_, err := s.cli.Txn(ctx).
		If(clientv3.Compare(clientv3.ModRevision(key), "=", m.modRevision)).
		Then(clientv3.OpDelete(key)).
		Commit()
	if err != nil {
		return fmt.Errorf("cluster: delete %s: %w", key, err)
	}
	return nil
}

// Connect is Open that waits for etcd: while etcd cannot be reached it
// retries with a growing delay (up to 5 s), logging each failure, until ctx
// is done. A prefix that cannot hold this cluster (ErrInvalidPrefix,
// ErrForeignPrefix) fails at once, since waiting cannot fix it.
func Connect(ctx context.Context, cli *clientv3.Client, prefix string, logger *slog.Logger) (*Store, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	bo := &retry.Delay{Min: 200 * time.Millisecond, Max: 5 * time.Second}
	for {
		octx, cancel := context.WithTimeout(ctx, 5*time.Second)
		s, err := Open(octx, cli, prefix, logger)
		cancel()
		switch {
		case err == nil:
			return s, nil
		case errors.Is(err, ErrForeignPrefix), errors.Is(err, ErrInvalidPrefix):
			return nil, err
		case ctx.Err() != nil:
			return nil, ctx.Err()
		}
		logger.Warn("cannot reach etcd; retrying", "endpoints", cli.Endpoints(), "err", err)
		if !retry.Sleep(ctx, bo.Next()) {
			return nil, ctx.Err()
		}
	}
}
