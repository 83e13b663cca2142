package apikey

import (
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a settable test clock.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// keyring writes a key file of entries (made by NewKey) and returns the
// keys by id.
func keyring(t *testing.T, path string, entries ...Entry) map[string]string {
	t.Helper()
	keys := map[string]string{}
	var f File
	for _, e := range entries {
		key, made, err := NewKey(e.ID)
		if err != nil {
			t.Fatal(err)
		}
		e.SHA256 = made.SHA256
		keys[e.ID] = key
		f.Keys = append(f.Keys, e)
	}
	if err := WriteFile(path, f); err != nil {
		t.Fatal(err)
	}
	return keys
}

func newTestGuard(t *testing.T, c *clock, entries ...Entry) (*Guard, map[string]string, *prometheus.Registry) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "keys.json")
	keys := keyring(t, path, entries...)
	reg := prometheus.NewRegistry()
	g, err := New(Config{File: path, Now: c.Now}, nil, reg)
	if err != nil {
		t.Fatal(err)
	}
	return g, keys, reg
}

func TestAdmitErrors(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	g, keys, reg := newTestGuard(t, c,
		Entry{ID: "ok"}, Entry{ID: "off", Disabled: true}, Entry{ID: "chat", Allow: []string{APIChat}})
	forged := keys["ok"][:len(keys["ok"])-1] + "0"
	if forged == keys["ok"] {
		forged = keys["ok"][:len(keys["ok"])-1] + "1"
	}
	for _, tc := range []struct {
		name, key, api string
		want           error
	}{
		{"valid", keys["ok"], APIGenerate, nil},
		{"no key", "", APIGenerate, ErrNoKey},
		{"not a key", "hello", APIGenerate, ErrInvalidKey},
		{"wrong secret", forged, APIGenerate, ErrInvalidKey},
		{"unknown id", "mgk_nobody_" + keys["ok"][len(keys["ok"])-64:], APIGenerate, ErrInvalidKey},
		{"another key's secret under this id", "mgk_chat_" + keys["ok"][len(keys["ok"])-64:], APIChat, ErrInvalidKey},
		{"disabled", keys["off"], APIGenerate, ErrDisabled},
		{"API allowed", keys["chat"], APIChat, nil},
		{"API not allowed", keys["chat"], APIGenerate, ErrNotAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, err := g.Admit(tc.key, tc.api)
			if !errors.Is(err, tc.want) {
				t.Fatalf("Admit = %v, want %v", err, tc.want)
			}
			a.Release()
		})
	}
	if got := counterValue(t, g.metrics.requests.WithLabelValues("", "unauthenticated")); got != 5 {
		t.Errorf("unauthenticated requests %v, want 5", got)
	}
	if got := counterValue(t, g.metrics.requests.WithLabelValues("chat", "permission_denied")); got != 1 {
		t.Errorf("chat permission_denied %v, want 1", got)
	}
	if n := seriesCount(t, reg, "moegrid_apikey_requests_total"); n != 5 {
		t.Errorf("%d request series, want 5 (ok and chat admitted, off and chat denied, one unauthenticated): none per unknown id", n)
	}
}

func TestInFlight(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	g, keys, _ := newTestGuard(t, c, Entry{ID: "two", MaxInFlight: 2})
	a1, err1 := g.Admit(keys["two"], APIGenerate)
	a2, err2 := g.Admit(keys["two"], APIGenerate)
	if err1 != nil || err2 != nil {
		t.Fatalf("Admit: %v, %v", err1, err2)
	}
	_, err := g.Admit(keys["two"], APIGenerate)
	qe, ok := errors.AsType[*QuotaError](err)
	if !ok || qe.Reason != "max_in_flight" || qe.RetryAfter != time.Second || qe.ID != "two" {
		t.Fatalf("third Admit = %v, want a max_in_flight QuotaError retrying after 1s", err)
	}
	a1.Release()
	a1.Release() // idempotent: must not free a second slot
	a3, err := g.Admit(keys["two"], APIGenerate)
	if err != nil {
		t.Fatalf("Admit after a release: %v", err)
	}
	if _, err := g.Admit(keys["two"], APIGenerate); err == nil {
		t.Fatal("a double Release freed two slots")
	}
	a2.Release()
	a3.Release()
}

func TestTokensPerMinute(t *testing.T) {
	c := &clock{now: time.Unix(1e9, 0)}
	// 120 tokens a minute: 2 a second.
	g, keys, _ := newTestGuard(t, c, Entry{ID: "k", TokensPerMinute: 120})
	a, err := g.Admit(keys["k"], APICompletions)
	if err != nil {
		t.Fatal(err)
	}
	a.Charge(100) // prompt, at admission
	a.Charge(50)  // completion as generated: the bucket goes to -30
	if _, err := g.Admit(keys["k"], APICompletions); err == nil {
		t.Fatal("admitted with an empty bucket")
	} else if qe, ok := errors.AsType[*QuotaError](err); !ok || qe.Reason != "tokens_per_minute" || qe.RetryAfter != 16*time.Second {
		t.Fatalf("Admit = %v, want tokens_per_minute retrying after 16s (31 tokens to one at 2/s: 15.5s)", err)
	}
	a.Release()

	for _, step := range []struct {
		advance    time.Duration
		wantRetry  time.Duration // 0: admitted
		chargeThen int
	}{
		{advance: 10 * time.Second, wantRetry: 6 * time.Second},                 // -10: 11 tokens to one at 2/s, 5.5s
		{advance: 4*time.Second + 500*time.Millisecond, wantRetry: time.Second}, // -1: 2 tokens to one, 1s
		{advance: time.Second, chargeThen: 200},                                 // +1: admitted, then -199
		{advance: time.Hour},                                                    // full again (capped at 120)
		{chargeThen: 119},                                                       // 120 → 1
		{chargeThen: 1},                                                         // 1 → 0
		{wantRetry: time.Second},                                                // 0: under one token; 0.5s rounded up
	} {
		c.Advance(step.advance)
		a, err := g.Admit(keys["k"], APICompletions)
		if step.wantRetry == 0 {
			if err != nil {
				t.Fatalf("after %v: Admit = %v, want admitted", step.advance, err)
			}
			a.Charge(step.chargeThen)
			a.Release()
			continue
		}
		qe, ok := errors.AsType[*QuotaError](err)
		if !ok || qe.RetryAfter != step.wantRetry {
			t.Fatalf("after %v: Admit = %v, want retry after %v", step.advance, err, step.wantRetry)
		}
	}
	if got := counterValue(t, g.metrics.tokens.WithLabelValues("k")); got != 470 {
		t.Errorf("tokens charged %v, want 470", got)
	}
}

func TestReload(t *testing.T) {
	dir := t.TempDir()
	c := &clock{now: time.Unix(1e9, 0)}
	// The file is a symlink to a versioned directory, swapped as kubelet
	// updates a mounted Secret.
	v1 := filepath.Join(dir, "v1")
	os.Mkdir(v1, 0o700)
	keysV1 := keyring(t, filepath.Join(v1, "keys.json"), Entry{ID: "old", MaxInFlight: 1}, Entry{ID: "kept", MaxInFlight: 1})
	data := filepath.Join(dir, "..data")
	if err := os.Symlink("v1", data); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "keys.json")
	if err := os.Symlink(filepath.Join("..data", "keys.json"), path); err != nil {
		t.Fatal(err)
	}
	g, err := New(Config{File: path, Poll: 5 * time.Millisecond, Now: c.Now}, slog.New(slog.DiscardHandler), nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); g.Run(ctx) }()
	defer func() { cancel(); <-done }()

	held, err := g.Admit(keysV1["kept"], APIGenerate)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Release()

	// A bad file is ignored: the old keys stay.
	v2 := filepath.Join(dir, "v2")
	os.Mkdir(v2, 0o700)
	os.WriteFile(filepath.Join(v2, "keys.json"), []byte(`{"keys":[{"id":"x"}]}`), 0o600)
	swap(t, dir, "v2")
	if changed, err := g.Reload(); changed || err == nil {
		t.Fatalf("Reload of a bad file = %t, %v; want an error and no change", changed, err)
	}
	if a, err := g.Admit(keysV1["old"], APIGenerate); err != nil {
		t.Fatalf("old key after a bad file: %v", err)
	} else {
		a.Release()
	}

	// A good file replaces the keys; a key kept by id keeps its counters.
	v3 := filepath.Join(dir, "v3")
	os.Mkdir(v3, 0o700)
	f, _ := ReadFile(filepath.Join(v1, "keys.json"))
	newKey, added, _ := NewKey("new")
	f.Keys = append(f.Keys[1:], added) // "old" removed, "new" added
	if err := WriteFile(filepath.Join(v3, "keys.json"), f); err != nil {
		t.Fatal(err)
	}
	swap(t, dir, "v3")
	deadline := time.Now().Add(10 * time.Second)
	for {
		a, err := g.Admit(newKey, APIGenerate)
		if err == nil {
			a.Release()
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the added key is still refused: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	if _, err := g.Admit(keysV1["old"], APIGenerate); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("removed key: %v, want ErrInvalidKey", err)
	}
	if _, err := g.Admit(keysV1["kept"], APIGenerate); err == nil {
		t.Error("a reload reset the in-flight count of a kept key")
	}
}

// swap points dir/..data at version atomically, as kubelet does.
func swap(t *testing.T, dir, version string) {
	t.Helper()
	tmp := filepath.Join(dir, "..data_tmp")
	if err := os.Symlink(version, tmp); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, "..data")); err != nil {
		t.Fatal(err)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

func seriesCount(t *testing.T, reg *prometheus.Registry, name string) int {
	t.Helper()
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() == name {
			return len(f.GetMetric())
		}
	}
	return 0
}
