package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrNotLeader reports a placement write by a coordinator that no longer
// holds the election: its election key is gone or was created anew.
var ErrNotLeader = errors.New("cluster: not the leader")

// ErrStale reports a placement write based on a placement that has changed
// since it was read.
var ErrStale = errors.New("cluster: placement changed since it was read")

// LeaderGuard identifies one term of leadership: the election key a
// coordinator created and its CreateRevision. It stays valid exactly as long
// as that key exists, so a write guarded by it cannot succeed after the
// leader's session expired, even if the leader has not noticed yet.
type LeaderGuard struct {
	// Key is the leader's election key.
	Key string
	// Rev is the key's CreateRevision.
	Rev int64
}

// GuardOf returns the guard of an election won with Campaign.
func GuardOf(e *concurrency.Election) LeaderGuard {
	return LeaderGuard{Key: e.Key(), Rev: e.Rev()}
}

// WritePlacement writes rec as the placement, in one transaction that
// succeeds only if the guard's election key still exists with its
// CreateRevision and the placement key's ModRevision is still
// expectModRev (0: the key must not exist). It returns the new ModRevision,
// ErrNotLeader if leadership was lost, ErrStale if the placement changed.
// The caller sets rec.Version; WritePlacement fills Written.
func (s *Store) WritePlacement(ctx context.Context, g LeaderGuard, rec PlacementRecord, expectModRev int64) (int64, error) {
	if !strings.HasPrefix(g.Key, s.keys.Election()+"/") || g.Rev <= 0 {
		return 0, fmt.Errorf("%w: guard %q@%d is not an election key of %s", ErrNotLeader, g.Key, g.Rev, s.keys.Prefix())
	}
	if rec.Written.IsZero() {
		rec.Written = time.Now().UTC()
	}
	if err := rec.Validate(); err != nil {
		return 0, fmt.Errorf("cluster: refusing to write an invalid placement: %w", err)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return 0, fmt.Errorf("cluster: encode placement: %w", err)
	}
	key := s.keys.Placement()
	resp, err := s.cli.Txn(ctx).
		If(
			clientv3.Compare(clientv3.CreateRevision(g.Key), "=", g.Rev),
			clientv3.Compare(clientv3.ModRevision(key), "=", expectModRev),
		).
		Then(clientv3.OpPut(key, string(b))).
		Else(clientv3.OpGet(g.Key), clientv3.OpGet(key, clientv3.WithKeysOnly())).
		Commit()
	if err != nil {
		return 0, fmt.Errorf("cluster: write %s: %w", key, err)
	}
	if resp.Succeeded {
		return resp.Header.Revision, nil
	}
	leader := resp.Responses[0].GetResponseRange().Kvs
	if len(leader) == 0 || leader[0].CreateRevision != g.Rev {
		return 0, fmt.Errorf("%w: election key %s@%d is gone", ErrNotLeader, g.Key, g.Rev)
	}
	var cur int64
	if kvs := resp.Responses[1].GetResponseRange().Kvs; len(kvs) > 0 {
		cur = kvs[0].ModRevision
	}
	return 0, fmt.Errorf("%w: expected mod revision %d, found %d", ErrStale, expectModRev, cur)
}
