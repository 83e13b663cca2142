package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/moegrid/moegrid/cluster/etcdtest"
)

func TestOpenForeignPrefix(t *testing.T) {
	srv := etcdtest.Start(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		kvs  map[string]string
		err  string
	}{
		{"other program's keys", map[string]string{"/p1/config/db": "x"}, "/p1/config/db is not a moegrid key"},
		{"other schema", map[string]string{"/p2/meta": `{"schema":"moegrid.v9"}`}, `schema "moegrid.v9"`},
		{"meta not json", map[string]string{"/p3/meta": `hello`}, "not a moegrid cluster meta record"},
		{"node key with a bad id", map[string]string{"/p4/nodes/a b": `{}`}, "is not a moegrid key"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var prefix string
			for k, v := range tc.kvs {
				prefix = k[:strings.Index(k[1:], "/")+2]
				if _, err := cli.Put(ctx, k, v); err != nil {
					t.Fatal(err)
				}
			}
			_, err := Open(ctx, cli, prefix, nil)
			if !errors.Is(err, ErrForeignPrefix) || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), "--prefix") {
				t.Fatalf("Open = %v; want ErrForeignPrefix containing %q and a hint", err, tc.err)
			}
		})
	}
	t.Run("invalid prefix", func(t *testing.T) {
		if _, err := Open(ctx, cli, "relative/", nil); !errors.Is(err, ErrInvalidPrefix) {
			t.Fatalf("Open = %v; want ErrInvalidPrefix", err)
		}
	})
	t.Run("new and existing", func(t *testing.T) {
		for range 2 {
			if _, err := Open(ctx, cli, "/fresh", nil); err != nil {
				t.Fatalf("Open: %v", err)
			}
		}
		resp, err := cli.Get(ctx, "/fresh/meta")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("meta: %v %v", resp, err)
		}
		var m Meta
		if err := json.Unmarshal(resp.Kvs[0].Value, &m); err != nil || m.Schema != Schema {
			t.Fatalf("meta = %s (%v)", resp.Kvs[0].Value, err)
		}
	})
	t.Run("moegrid keys without meta", func(t *testing.T) {
		b, _ := json.Marshal(nodeRecord("n1"))
		if _, err := cli.Put(ctx, "/nometa/nodes/n1", string(b)); err != nil {
			t.Fatal(err)
		}
		if _, err := Open(ctx, cli, "/nometa/", nil); err != nil {
			t.Fatalf("Open: %v", err)
		}
	})
}

// TestSnapshotSkipsMalformed writes bad records by hand: the snapshot leaves
// them out, names their keys in the log once, and keeps the good ones.
func TestSnapshotSkipsMalformed(t *testing.T) {
	srv, s, logs := openStore(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	k := s.Keys()
	good := nodeRecord("good")
	b, _ := json.Marshal(good)
	for key, val := range map[string]string{
		k.Node("good"):       string(b),
		k.Node("garbage"):    "\x00\x01not json",
		k.Node("wrong"):      string(b), // id does not match the key
		k.Drain("good"):      `{"node_id":"good"}`,
		k.Load("r1"):         `{"router_id":"r1","fingerprint":"f","tokens_per_second":[-1]}`,
		k.Placement():        `{"version":"two"}`,
		k.Prefix() + "stray": "x",
	} {
		if _, err := cli.Put(ctx, key, val); err != nil {
			t.Fatal(err)
		}
	}
	for range 2 {
		snap, err := s.Snapshot(ctx)
		if err != nil {
			t.Fatalf("Snapshot: %v", err)
		}
		if len(snap.Nodes) != 1 || snap.Nodes[0].ID != "good" {
			t.Errorf("nodes = %+v, want only good", snap.Nodes)
		}
		if len(snap.Drains) != 0 || len(snap.Loads) != 0 || snap.Placement.Version != 0 {
			t.Errorf("drains %v loads %v placement %v: want none", snap.Drains, snap.Loads, snap.Placement)
		}
		if snap.PlacementModRevision == 0 {
			t.Errorf("PlacementModRevision = 0; a guarded write must be able to replace the bad record")
		}
	}
	out := logs.String()
	for _, key := range []string{k.Node("garbage"), k.Node("wrong"), k.Drain("good"), k.Load("r1"), k.Placement(), k.Prefix() + "stray"} {
		if n := strings.Count(out, "key="+key+" "); n != 1 {
			t.Errorf("key %s logged %d times, want once:\n%s", key, n, out)
		}
	}
	if strings.Contains(out, "key="+k.Node("good")+" ") {
		t.Errorf("good record logged as malformed")
	}
	nodes, err := s.Nodes(ctx)
	if err != nil || len(nodes) != 1 {
		t.Errorf("Nodes = %v, %v", nodes, err)
	}
}

func TestDrain(t *testing.T) {
	_, s, _ := openStore(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := s.Drain(ctx, "nobody"); !errors.Is(err, ErrNodeNotFound) {
		t.Fatalf("Drain(unknown) = %v, want ErrNodeNotFound", err)
	}
	if err := s.Drain(ctx, ""); !errors.Is(err, ErrInvalidID) {
		t.Fatalf("Drain(\"\") = %v, want ErrInvalidID", err)
	}
	opts := LeaseOptions{TTL: 2 * time.Second}
	rec := nodeRecord("n1")
	reg, err := s.Register(ctx, rec, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Drain(ctx, "n1"); err != nil {
		t.Fatalf("Drain: %v", err)
	}
	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !snap.Drained("n1") || !snap.Draining("n1") || len(snap.StaleDrains()) != 0 {
		t.Fatalf("n1 not drained: %+v", snap.Drains)
	}
	// The same process registering again (a lost lease) stays drained.
	reg.Close()
	reg, err = s.Register(ctx, rec, opts)
	if err != nil {
		t.Fatal(err)
	}
	if snap, _ = s.Snapshot(ctx); !snap.Drained("n1") {
		t.Fatalf("re-registration lost the drain")
	}
	// A restarted process is not drained; the stale mark can be removed.
	reg.Close()
	rec.Started = rec.Started.Add(time.Minute)
	reg, err = s.Register(ctx, rec, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	snap, _ = s.Snapshot(ctx)
	if snap.Drained("n1") || len(snap.StaleDrains()) != 1 {
		t.Fatalf("restarted node drained")
	}
	if err := s.RemoveStaleDrain(ctx, snap.StaleDrains()[0]); err != nil {
		t.Fatal(err)
	}
	snap, _ = s.Snapshot(ctx)
	if len(snap.Drains) != 0 {
		t.Fatalf("stale drain mark left: %v", snap.Drains)
	}
}

func TestRegisterUpdateClose(t *testing.T) {
	srv, s, _ := openStore(t)
	cli := srv.Client(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	rec := nodeRecord("n1")
	rec.State = ""
	reg, err := s.Register(ctx, rec, LeaseOptions{TTL: 2 * time.Second, Refresh: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	got := func() NodeRecord {
		t.Helper()
		nodes, err := s.Nodes(ctx)
		if err != nil || len(nodes) != 1 {
			t.Fatalf("Nodes = %v, %v", nodes, err)
		}
		return nodes[0]
	}
	if r := got(); r.State != StateJoining || r.Started.IsZero() || r.Heartbeat.IsZero() {
		t.Errorf("registered record %+v: want joining with start and heartbeat", r)
	}
	// The record is bound to the registration's lease.
	resp, _ := cli.Get(ctx, s.Keys().Node("n1"))
	if clientv3.LeaseID(resp.Kvs[0].Lease) != reg.Lease() {
		t.Errorf("record lease %x, registration lease %x", resp.Kvs[0].Lease, reg.Lease())
	}
	// Heartbeats advance.
	first := got().Heartbeat
	eventually(t, 5*time.Second, "heartbeat", func() error {
		if h := got().Heartbeat; !h.After(first) {
			return errorf("heartbeat still %v", h)
		}
		return nil
	})
	if err := reg.Update(ctx, func(r *NodeRecord) {
		r.State = StateReady
		r.Load.RowsTotal = 42
	}); err != nil {
		t.Fatal(err)
	}
	if r := got(); r.State != StateReady || r.Load.RowsTotal != 42 {
		t.Errorf("after Update: %+v", r)
	}
	if err := reg.Update(ctx, func(r *NodeRecord) { r.ID = "other" }); err == nil {
		t.Errorf("Update changing the id succeeded")
	}
	if err := reg.Update(ctx, func(r *NodeRecord) { r.State = "bogus" }); err == nil {
		t.Errorf("Update to an invalid state succeeded")
	}
	if r := reg.Record(); r.State != StateReady {
		t.Errorf("a rejected update changed the record: %+v", r)
	}
	// A second process with the same ID waits for the first to go.
	short, cancelShort := context.WithTimeout(ctx, 500*time.Millisecond)
	_, err = s.Register(short, nodeRecord("n1"), LeaseOptions{TTL: 2 * time.Second})
	cancelShort()
	if err == nil || !strings.Contains(err.Error(), "held by another live process") {
		t.Errorf("duplicate Register = %v, want held by another live process", err)
	}
	if err := reg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := reg.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if nodes, _ := s.Nodes(ctx); len(nodes) != 0 {
		t.Errorf("record left after Close: %+v", nodes)
	}
}

// TestRegisterSurvivesEtcdRestart stops etcd for longer than the lease TTL
// (the client-side keep-alive gives up, the lease is lost) and for less (the
// lease survives unless stopping and starting etcd took the TTL): either way
// the record is back under the registration's lease and stays.
//
// The waits follow the lease's own bounds, not a guess: the client gives a
// lease up once no keep-alive has been answered for the TTL (checked every
// 500 ms), and a lost lease is replaced by attempts bounded by the TTL each
// with a backoff of at most 2 s between them, so the attempt that was
// waiting on etcd when it came back may time out and the next come a backoff
// later.
func TestRegisterSurvivesEtcdRestart(t *testing.T) {
	const (
		ttl        = 2 * time.Second
		replaceFor = 2*ttl + 2*time.Second + 5*time.Second // two attempts, a backoff, slack for busy cores
	)
	for _, tc := range []struct {
		name string
		down time.Duration
	}{
		{"shorter than ttl", 500 * time.Millisecond},
		// Long enough past the TTL that the client's 500 ms check fires
		// before etcd is back even on cores busy with a race-enabled test
		// run: etcd renews its leases when it comes back, so a check that
		// comes after finds the lease alive (a CI run saw no loss after a
		// 3.6 s outage).
		{"longer than ttl", ttl + 3*time.Second},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv, s, logs := openStore(t)
			ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
			defer cancel()
			reg, err := s.Register(ctx, nodeRecord("n1"), LeaseOptions{TTL: ttl, Refresh: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			defer reg.Close()
			old := reg.Lease()
			// The last keep-alive answer came before the stop began.
			cut := time.Now()
			srv.Stop()
			time.Sleep(tc.down)
			srv.Resume()
			back := time.Now()
			outage := back.Sub(cut)
			// Past this the client has kept the lease or given it up (the
			// 500 ms check, and as long again for busy cores).
			time.Sleep(time.Until(cut.Add(ttl + time.Second)))
			lost := strings.Contains(logs.String(), "lease lost")
			if tc.down > ttl && !lost {
				t.Fatalf("lease %x not given up after an outage of %v, longer than its TTL\n%s", old, outage, logs)
			}
			// held checks that the record is there under the registration's
			// lease, a new one if the old was lost.
			held := func() error {
				lease := reg.Lease()
				if lost && lease == old {
					return errorf("lease %x lost, not replaced yet", old)
				}
				resp, err := s.cli.Get(ctx, s.keys.Node("n1"))
				if err != nil {
					return err
				}
				if len(resp.Kvs) != 1 || clientv3.LeaseID(resp.Kvs[0].Lease) != lease {
					return errorf("record %v, want it under lease %x", resp.Kvs, lease)
				}
				return nil
			}
			eventually(t, replaceFor, "record under the registration's lease after restart", held)
			t.Logf("outage %v, lease lost: %v, record held %v after etcd was back", outage.Round(time.Millisecond), lost, time.Since(back).Round(time.Millisecond))
			// Past the old lease's expiry the record is still there.
			time.Sleep(ttl + time.Second)
			if err := held(); err != nil {
				t.Fatalf("record gone after the old lease expired: %v\n%s", err, logs)
			}
			if err := reg.Update(ctx, func(r *NodeRecord) { r.State = StateReady }); err != nil {
				t.Fatalf("Update after restart: %v", err)
			}
		})
	}
}

// TestRegisterPartition cuts the node off while etcd keeps running: the
// lease expires, the record disappears, and comes back when the
// partition heals.
func TestRegisterPartition(t *testing.T) {
	srv, s, _ := openStore(t)
	ctx, cancel := context.WithTimeout(t.Context(), 40*time.Second)
	defer cancel()
	reg, err := s.Register(ctx, nodeRecord("n1"), LeaseOptions{TTL: time.Second, Refresh: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	srv.Partition()
	// etcd itself still runs: the lease expires after its TTL. The observer
	// cannot read while partitioned either, so just wait it out.
	time.Sleep(2500 * time.Millisecond)
	srv.Heal()
	eventually(t, 10*time.Second, "re-registration", func() error {
		nodes, err := s.Nodes(ctx)
		if err != nil {
			return err
		}
		if len(nodes) != 1 {
			return errorf("nodes = %v", nodes)
		}
		return nil
	})
}

func TestLoads(t *testing.T) {
	_, s, _ := openStore(t)
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	r1, err := s.ReportLoad(ctx, LoadRecord{RouterID: "r1", Fingerprint: "f", TokensPerSecond: []float64{1, 2}}, LeaseOptions{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := s.ReportLoad(ctx, LoadRecord{RouterID: "r2", Fingerprint: "f", TokensPerSecond: []float64{3, 4}}, LeaseOptions{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := r2.Set([]float64{10, 20}); err != nil {
		t.Fatal(err)
	}
	if err := r2.Set([]float64{-1, 0}); err == nil {
		t.Errorf("negative load accepted")
	}
	ejected := []NodeVerdict{{NodeID: "n1", State: VerdictEjected, Since: time.Unix(1700000000, 0).UTC(), LastError: "refused"}}
	if err := r2.SetUnhealthy(ejected); err != nil {
		t.Fatal(err)
	}
	if err := r2.SetUnhealthy([]NodeVerdict{{NodeID: "n1", State: "sick", Since: time.Now()}}); err == nil {
		t.Errorf("verdict with a bad state accepted")
	}
	if err := r2.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	other, err := s.ReportLoad(ctx, LoadRecord{RouterID: "r3", Fingerprint: "other", TokensPerSecond: []float64{100, 100}}, LeaseOptions{TTL: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	loads, err := s.Loads(ctx)
	if err != nil || len(loads) != 3 {
		t.Fatalf("Loads = %v, %v", loads, err)
	}
	if got, want := SumLoad(loads, "f", 2), []float64{11, 22}; !cmp.Equal(got, want) {
		t.Errorf("SumLoad = %v, want %v", got, want)
	}
	if diff := cmp.Diff([][]NodeVerdict{nil, ejected, nil}, [][]NodeVerdict{loads[0].Unhealthy, loads[1].Unhealthy, loads[2].Unhealthy}); diff != "" {
		t.Errorf("unhealthy nodes by router (-want +got):\n%s", diff)
	}
	if got := SumLoad(loads, "f", 3); got != nil {
		t.Errorf("SumLoad with the wrong shape = %v, want nil", got)
	}
	r2.Close()
	if loads, _ := s.Loads(ctx); len(loads) != 2 {
		t.Errorf("load record left after Close: %v", loads)
	}
}

// TestConnectWaitsForEtcd checks that Connect retries while etcd is down and
// returns once it is back, and that a foreign prefix fails at once.
func TestConnectWaitsForEtcd(t *testing.T) {
	srv := etcdtest.Start(t)
	cli, err := NewEtcdClient(srv.Endpoints())
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()

	srv.Stop()
	done := make(chan error, 1)
	go func() {
		_, err := Connect(ctx, cli, "/waits/", nil)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("Connect returned %v while etcd was down", err)
	case <-time.After(time.Second):
	}
	srv.Resume()
	if err := <-done; err != nil {
		t.Fatalf("Connect after etcd came back: %v", err)
	}

	if _, err := cli.Put(ctx, "/foreign/config", "x"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := Connect(ctx, cli, "/foreign/", nil); !errors.Is(err, ErrForeignPrefix) {
		t.Errorf("Connect on a foreign prefix: %v, want ErrForeignPrefix", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("Connect on a foreign prefix took %v; it must not retry", d)
	}

	stopped, stop := context.WithCancel(ctx)
	stop()
	if _, err := Connect(stopped, cli, "/waits/", nil); !errors.Is(err, context.Canceled) {
		t.Errorf("Connect with a cancelled context: %v", err)
	}
}
