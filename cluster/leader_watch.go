package cluster

import (
	"context"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// WatchLeader delivers whether a coordinator holds the election (some key
// exists under Keys.Election), at once and after every change, until ctx is
// done; then the channel closes. It only reads: routers use it to tell a
// missing expert that a leader may re-place from one nobody will. Like
// WatchPlacement it holds the latest value only and survives etcd restarts.
func (s *Store) WatchLeader(ctx context.Context) <-chan bool {
	out := make(chan bool, 1)
	keys := map[string]bool{}
	go func() {
		defer close(out)
		s.watchLoop(ctx, s.keys.Election()+"/", true,
			func(kvs []*mvccpb.KeyValue) {
				clear(keys)
				for _, kv := range kvs {
					keys[string(kv.Key)] = true
				}
			},
			func(evs []*clientv3.Event) {
				for _, ev := range evs {
					if ev.Type == mvccpb.PUT {
						keys[string(ev.Kv.Key)] = true
					} else {
						delete(keys, string(ev.Kv.Key))
					}
				}
			},
			func() { offer(out, len(keys) > 0) })
	}()
	return out
}
