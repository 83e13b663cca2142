package cluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/moegrid/moegrid/internal/retry"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
)

// ErrClosed reports a write through a Registration or LoadReporter that was
// closed.
var ErrClosed = errors.New("cluster: closed")

// DefaultLeaseTTL is the default time to live of node and router leases.
const DefaultLeaseTTL = 10 * time.Second

// LeaseOptions configures a record kept under a lease (Register,
// ReportLoad).
type LeaseOptions struct {
	// TTL is the lease's time to live: the record disappears this long after
	// its process stops refreshing it (crash, partition). Rounded up to whole
	// seconds; at least 1 s. Zero means DefaultLeaseTTL.
	TTL time.Duration
	// Refresh is how often the record is rewritten with a new heartbeat when
	// nothing else wrote it. Zero means TTL/2.
	Refresh time.Duration
	// Logger receives the lease's events; nil means the Store's logger.
	Logger *slog.Logger
}

func (o LeaseOptions) withDefaults(s *Store) (LeaseOptions, error) {
	if o.TTL == 0 {
		o.TTL = DefaultLeaseTTL
	}
	if o.TTL < time.Second {
		return o, fmt.Errorf("cluster: lease TTL %v: at least 1s", o.TTL)
	}
	if o.Refresh == 0 {
		o.Refresh = o.TTL / 2
	}
	if o.Refresh <= 0 {
		return o, fmt.Errorf("cluster: lease refresh %v: must be positive", o.Refresh)
	}
	if o.Logger == nil {
		o.Logger = s.log
	}
	return o, nil
}

func (o LeaseOptions) ttlSeconds() int64 { return int64(math.Ceil(o.TTL.Seconds())) }

// leasedKey keeps one key written under a lease of its own for as long as it
// is open: it refreshes the value, and when the lease is lost (an etcd outage
// longer than the TTL, a partition) it takes a new lease and writes the key
// again. Two processes never hold the same key: a key held under another
// process's lease is waited for until that lease expires.
type leasedKey struct {
	store  *Store
	key    string
	opts   LeaseOptions
	log    *slog.Logger
	encode func(now time.Time) (string, error)

	// life bounds the sessions; it outlives ctx so that close can still
	// revoke the lease.
	life, ctx          context.Context
	lifeCancel, cancel context.CancelFunc
	done               chan struct{}
	closeOnce          sync.Once
	closeErr           error

	// putMu serialises writes and protects the fields below.
	putMu sync.Mutex
	sess  *concurrency.Session
	// owned are leases this leasedKey created: a key still held by one of
	// them (etcd came back before it expired) is ours to rewrite.
	owned map[clientv3.LeaseID]bool
}

func (s *Store) openLeasedKey(ctx context.Context, key string, opts LeaseOptions, encode func(time.Time) (string, error)) (*leasedKey, error) {
	life, lifeCancel := context.WithCancel(context.WithoutCancel(ctx))
	runCtx, cancel := context.WithCancel(life)
	l := &leasedKey{
		store: s, key: key, opts: opts, log: opts.Logger, encode: encode,
		life: life, lifeCancel: lifeCancel, ctx: runCtx, cancel: cancel,
		done:  make(chan struct{}),
		owned: make(map[clientv3.LeaseID]bool),
	}
	sess, err := l.newSession(ctx)
	if err != nil {
		lifeCancel()
		return nil, err
	}
	l.putMu.Lock()
	l.sess = sess
	err = l.claimLocked(ctx, sess)
	l.putMu.Unlock()
	if err != nil {
		l.revoke(sess)
		lifeCancel()
		return nil, err
	}
	go l.run()
	return l, nil
}

// newSession grants a lease bounded by ctx and keeps it alive for the
// leasedKey's life.
func (l *leasedKey) newSession(ctx context.Context) (*concurrency.Session, error) {
	cli := l.store.cli
	g, err := cli.Grant(ctx, l.opts.ttlSeconds())
	if err != nil {
		return nil, fmt.Errorf("cluster: grant lease for %s: %w", l.key, err)
	}
	sess, err := concurrency.NewSession(cli,
		concurrency.WithLease(g.ID),
		concurrency.WithTTL(int(l.opts.ttlSeconds())),
		concurrency.WithContext(l.life))
	if err != nil {
		return nil, fmt.Errorf("cluster: keep lease %x alive: %w", g.ID, err)
	}
	l.putMu.Lock()
	l.owned[g.ID] = true
	l.putMu.Unlock()
	return sess, nil
}

// claimLocked writes the key under sess's lease if the key is absent or
// held by one of our leases, and otherwise waits for the other holder's
// lease to end. l.putMu is held.
func (l *leasedKey) claimLocked(ctx context.Context, sess *concurrency.Session) error {
	cli := l.store.cli
	expect := sess.Lease()
	warned := false
	for {
		val, err := l.encode(time.Now().UTC())
		if err != nil {
			return err
		}
		resp, err := cli.Txn(ctx).
			If(clientv3.Compare(clientv3.LeaseValue(l.key), "=", int64(expect))).
			Then(clientv3.OpPut(l.key, val, clientv3.WithLease(sess.Lease()))).
			Else(clientv3.OpGet(l.key)).
			Commit()
		if err != nil {
			return fmt.Errorf("cluster: write %s: %w", l.key, err)
		}
		if resp.Succeeded {
			return nil
		}
		kvs := resp.Responses[0].GetResponseRange().Kvs
		switch {
		case len(kvs) == 0:
			expect = clientv3.NoLease
		case l.owned[clientv3.LeaseID(kvs[0].Lease)] || kvs[0].Lease == 0:
			expect = clientv3.LeaseID(kvs[0].Lease)
		default:
			if !warned {
				l.log.Warn("key held under another lease; waiting for it to expire",
					"key", l.key, "lease", fmt.Sprintf("%x", kvs[0].Lease))
				warned = true
			}
			if err := l.waitDeleted(ctx, resp.Header.Revision); err != nil {
				return fmt.Errorf("cluster: %s is held by another live process (lease %x): %w", l.key, kvs[0].Lease, err)
			}
			expect = clientv3.NoLease
		}
	}
}

// waitDeleted waits for the key to be deleted after revision rev.
func (l *leasedKey) waitDeleted(ctx context.Context, rev int64) error {
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	for wr := range l.store.cli.Watch(wctx, l.key, clientv3.WithRev(rev+1), clientv3.WithFilterPut()) {
		if err := wr.Err(); err != nil {
			return err
		}
		for _, ev := range wr.Events {
			if ev.Type == mvccpb.DELETE {
				return nil
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return errors.New("watch ended")
}

// write rewrites the key now under the current lease. An attempt is bounded
// by ctx, the TTL (longer and the lease is gone anyway) and close. On
// failure the background loop keeps trying.
func (l *leasedKey) write(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, l.opts.TTL)
	defer cancel()
	stop := context.AfterFunc(l.ctx, cancel)
	defer stop()
	l.putMu.Lock()
	defer l.putMu.Unlock()
	return l.writeLocked(ctx)
}

func (l *leasedKey) writeLocked(ctx context.Context) error {
	if l.ctx.Err() != nil {
		return fmt.Errorf("cluster: write %s: %w", l.key, ErrClosed)
	}
	select {
	case <-l.sess.Done():
		return fmt.Errorf("cluster: write %s: lease %x lost; registering again", l.key, l.sess.Lease())
	default:
	}
	err := l.claimLocked(ctx, l.sess)
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		// The lease expired while we were cut off: end the session so that
		// run takes a new one.
		l.sess.Orphan()
	}
	return err
}

// run refreshes the key and replaces lost leases until close.
func (l *leasedKey) run() {
	defer close(l.done)
	t := time.NewTicker(l.opts.Refresh)
	defer t.Stop()
	for {
		l.putMu.Lock()
		sess := l.sess
		l.putMu.Unlock()
		select {
		case <-l.ctx.Done():
			return
		case <-sess.Done():
			l.log.Warn("lease lost; writing the key under a new lease", "key", l.key, "lease", fmt.Sprintf("%x", sess.Lease()))
			l.renew(sess)
		case <-t.C:
			l.refresh()
		}
	}
}

func (l *leasedKey) refresh() {
	ctx, cancel := context.WithTimeout(l.ctx, max(l.opts.Refresh, time.Second))
	defer cancel()
	if err := l.write(ctx); err != nil && l.ctx.Err() == nil {
		l.log.Warn("refreshing leased key failed", "key", l.key, "err", err)
	}
}

// renew replaces the lost session old, retrying until it succeeds or the
// leasedKey closes.
func (l *leasedKey) renew(old *concurrency.Session) {
	bo := &retry.Delay{Min: 100 * time.Millisecond, Max: 2 * time.Second}
	for l.ctx.Err() == nil {
		ctx, cancel := context.WithTimeout(l.ctx, l.opts.TTL)
		sess, err := l.newSession(ctx)
		if err == nil {
			l.putMu.Lock()
			err = l.claimLocked(ctx, sess)
			if err == nil {
				l.sess = sess
				delete(l.owned, old.Lease())
			}
			l.putMu.Unlock()
			if err != nil {
				l.revoke(sess)
			}
		}
		cancel()
		if err == nil {
			l.log.Info("key written under a new lease", "key", l.key, "lease", fmt.Sprintf("%x", sess.Lease()))
			// The old lease may still exist if etcd kept it; it holds no key.
			l.revoke(old)
			return
		}
		if l.ctx.Err() == nil {
			l.log.Warn("renewing lease failed; retrying", "key", l.key, "err", err)
		}
		retry.Sleep(l.ctx, bo.Next())
	}
}

// revoke ends a session and revokes its lease, deleting the keys it holds;
// bounded, best effort.
func (l *leasedKey) revoke(sess *concurrency.Session) error {
	sess.Orphan()
	ctx, cancel := context.WithTimeout(l.life, min(l.opts.TTL, 2*time.Second))
	defer cancel()
	_, err := l.store.cli.Revoke(ctx, sess.Lease())
	if errors.Is(err, rpctypes.ErrLeaseNotFound) {
		err = nil
	}
	return err
}

// lease returns the current lease.
func (l *leasedKey) lease() clientv3.LeaseID {
	l.putMu.Lock()
	defer l.putMu.Unlock()
	return l.sess.Lease()
}

// close stops the refresh loop and revokes the lease, deleting the key.
// Idempotent.
func (l *leasedKey) close() error {
	l.closeOnce.Do(func() {
		l.cancel()
		<-l.done
		l.putMu.Lock()
		sess := l.sess
		l.putMu.Unlock()
		if err := l.revoke(sess); err != nil {
			l.closeErr = fmt.Errorf("cluster: revoke lease of %s: %w", l.key, err)
		}
		l.lifeCancel()
	})
	return l.closeErr
}
