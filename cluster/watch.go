package cluster

import (
	"context"
	"maps"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"github.com/moegrid/moegrid/internal/retry"
	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchPlacement delivers the current placement, if there is one, and then
// every newer one, until ctx is done; then the channel closes. Versions only
// move forward: a record whose Version is not above the last delivered one
// (an error note on the same placement, an old leader's echo) is not
// delivered, and neither is a malformed one. The channel holds the latest
// placement only: a slow reader skips intermediate versions, never the
// newest. The watch survives etcd restarts and compaction by reading the
// key again.
func (s *Store) WatchPlacement(ctx context.Context) <-chan PlacementRecord {
	out := make(chan PlacementRecord, 1)
	key := s.keys.Placement()
	var last int64
	var cur *PlacementRecord
	take := func(kv *mvccpb.KeyValue) {
		p, err := DecodePlacementRecord(key, kv.Value)
		if err != nil {
			s.reportMalformed(kv, err)
			return
		}
		if p.Version > last {
			cur = &p
		}
	}
	go func() {
		defer close(out)
		s.watchLoop(ctx, key, false,
			func(kvs []*mvccpb.KeyValue) {
				for _, kv := range kvs {
					take(kv)
				}
			},
			func(evs []*clientv3.Event) {
				for _, ev := range evs {
					if ev.Type == mvccpb.PUT {
						take(ev.Kv)
					}
				}
			},
			func() {
				if cur != nil {
					last = cur.Version
					offer(out, *cur)
					cur = nil
				}
			})
	}()
	return out
}

// WatchNodes delivers the registered expert nodes, sorted by ID, at once and
// after every change, until ctx is done; then the channel closes. Like
// WatchPlacement it holds the latest list only, skips malformed records and
// survives etcd restarts. Heartbeats are changes: expect a list every
// LeaseOptions.Refresh per node.
func (s *Store) WatchNodes(ctx context.Context) <-chan []NodeRecord {
	out := make(chan []NodeRecord, 1)
	nodes := make(map[string]NodeRecord)
	put := func(kv *mvccpb.KeyValue) {
		key := string(kv.Key)
		id := strings.TrimPrefix(key, s.keys.Nodes())
		r, err := s.keys.DecodeNodeRecord(key, kv.Value)
		if err != nil {
			s.reportMalformed(kv, err)
			delete(nodes, id)
			return
		}
		nodes[id] = r
	}
	go func() {
		defer close(out)
		s.watchLoop(ctx, s.keys.Nodes(), true,
			func(kvs []*mvccpb.KeyValue) {
				clear(nodes)
				for _, kv := range kvs {
					put(kv)
				}
			},
			func(evs []*clientv3.Event) {
				for _, ev := range evs {
					if ev.Type == mvccpb.PUT {
						put(ev.Kv)
					} else {
						delete(nodes, strings.TrimPrefix(string(ev.Kv.Key), s.keys.Nodes()))
					}
				}
			},
			func() {
				list := make([]NodeRecord, 0, len(nodes))
				for _, id := range slices.Sorted(maps.Keys(nodes)) {
					list = append(list, cloneNodeRecord(nodes[id]))
				}
				offer(out, list)
			})
	}()
	return out
}

// WatchChanges sends on the returned channel whenever any key of the
// cluster changes, coalescing bursts, until ctx is done. It is the trigger of
// level-based loops that then read a Snapshot; one value is sent at once.
func (s *Store) WatchChanges(ctx context.Context) <-chan struct{} {
	out := make(chan struct{}, 1)
	go func() {
		defer close(out)
		s.watchLoop(ctx, s.keys.Prefix(), true,
			func([]*mvccpb.KeyValue) {}, func([]*clientv3.Event) {},
			func() { offer(out, struct{}{}) })
	}()
	return out
}

// watchLoop reads key (a prefix if prefix is set), hands the values to
// reset, then watches it from the next revision and hands each batch of
// events to apply; emit follows each reset and batch. When the watch breaks
// (compaction, a cancelled watch) it starts over with a fresh read; etcd
// restarts are ridden out by the client, which resumes the watch. It returns
// when ctx is done.
func (s *Store) watchLoop(ctx context.Context, key string, prefix bool,
	reset func([]*mvccpb.KeyValue), apply func([]*clientv3.Event), emit func()) {
	var opts []clientv3.OpOption
	if prefix {
		opts = append(opts, clientv3.WithPrefix())
	}
	bo := &retry.Delay{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	for ctx.Err() == nil {
		resp, err := s.cli.Get(ctx, key, opts...)
		if err != nil {
			if ctx.Err() == nil {
				s.log.Debug("watch: read failed; retrying", "key", key, "err", err)
			}
			retry.Sleep(ctx, bo.Next())
			continue
		}
		reset(resp.Kvs)
		emit()
		wctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
		wch := s.cli.Watch(wctx, key, append(opts, clientv3.WithRev(resp.Header.Revision+1))...)
		for wr := range wch {
			if err := wr.Err(); err != nil {
				if ctx.Err() == nil {
					s.log.Warn("watch broken; reading again", "key", key, "err", err)
				}
				break
			}
			if len(wr.Events) == 0 {
				continue
			}
			bo.Reset()
			apply(wr.Events)
			emit()
		}
		cancel()
		retry.Sleep(ctx, bo.Next())
	}
}

// offer replaces the value waiting in a one-slot channel with v. There must
// be one sender only.
func offer[T any](ch chan T, v T) {
	select {
	case <-ch:
	default:
	}
	ch <- v
}

// FollowGossipSeeds follows the node records until ctx is done and returns a
// function that lists their gossip addresses, for GossipConfig.Seeds: every
// process finds the gossip ring through etcd. The function is safe for
// concurrent use and never blocks; it lists nothing until the first read.
func FollowGossipSeeds(ctx context.Context, s *Store) func() []string {
	var seeds atomic.Pointer[[]string]
	ch := s.WatchNodes(ctx)
	go func() {
		for nodes := range ch {
			addrs := make([]string, 0, len(nodes))
			for _, n := range nodes {
				if n.GossipAddr != "" {
					addrs = append(addrs, n.GossipAddr)
				}
			}
			seeds.Store(&addrs)
		}
	}()
	return func() []string {
		if p := seeds.Load(); p != nil {
			return slices.Clone(*p)
		}
		return nil
	}
}
