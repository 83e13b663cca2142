package cluster

import (
	"context"
	"maps"
	"slices"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchCandidates delivers the IDs of the coordinators in the election (the
// values of the keys under Keys.Election: the leader and those waiting to
// lead), sorted, at once and after every change, until ctx is done; then the
// channel closes. It only reads: routers use it to tell a missing expert
// that a leader may re-place from one nobody will. A candidate's key lasts
// as long as its lease, seconds after its process died, so a reader that
// can tell sooner (gossip) should. Like WatchPlacement it holds the latest
// value only and survives etcd restarts.
func (s *Store) WatchCandidates(ctx context.Context) <-chan []string {
	out := make(chan []string, 1)
	keys := map[string]string{}
	go func() {
		defer close(out)
		s.watchLoop(ctx, s.keys.Election()+"/", true,
			func(kvs []*mvccpb.KeyValue) {
				clear(keys)
				for _, kv := range kvs {
					keys[string(kv.Key)] = string(kv.Value)
				}
			},
			func(evs []*clientv3.Event) {
				for _, ev := range evs {
					if ev.Type == mvccpb.PUT {
						keys[string(ev.Kv.Key)] = string(ev.Kv.Value)
					} else {
						delete(keys, string(ev.Kv.Key))
					}
				}
			},
			func() { offer(out, slices.Sorted(maps.Values(keys))) })
	}()
	return out
}
