package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/moegrid/moegrid/cluster/etcdtest"
	"github.com/moegrid/moegrid/placement"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testModel is a small model: 8 experts of 4 layers of 1000 bytes.
var testModel = placement.Model{Experts: 8, Layers: 4, BytesPerExpertLayer: 1000}

// nodeRecord returns a valid record of node id that can hold two experts.
func nodeRecord(id string) NodeRecord {
	return NodeRecord{
		ID:            id,
		GRPCAddr:      "127.0.0.1:9000",
		State:         StateJoining,
		CapacityBytes: 8000,
		Device:        Device{Kind: "cpu"},
		Model:         ModelInfo{Shape: testModel, Fingerprint: "sha256:test"},
		Started:       time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC),
	}
}

// logBuffer collects log output for assertions; safe for concurrent use.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// testLogger logs to the test's output and to the returned buffer.
func testLogger(t testing.TB) (*slog.Logger, *logBuffer) {
	buf := &logBuffer{}
	h := slog.NewTextHandler(&teeWriter{t: t, buf: buf}, &slog.HandlerOptions{Level: slog.LevelDebug})
	return slog.New(h), buf
}

type teeWriter struct {
	t   testing.TB
	buf *logBuffer
}

func (w *teeWriter) Write(p []byte) (int, error) {
	w.buf.Write(p)
	if testing.Verbose() {
		w.t.Log(strings.TrimRight(string(p), "\n"))
	}
	return len(p), nil
}

// openStore starts etcd and opens a store on a fresh prefix.
func openStore(t *testing.T) (*etcdtest.Server, *Store, *logBuffer) {
	t.Helper()
	srv := etcdtest.Start(t)
	log, buf := testLogger(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	s, err := Open(ctx, srv.Client(t), "/test/"+sanitize(t.Name())+"/", log)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return srv, s, buf
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if idRune(r) {
			return r
		}
		return '-'
	}, s)
}

// eventually polls cond every 50 ms until it holds or the timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = cond(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		select {
		case <-t.Context().Done():
			t.Fatalf("%s: %v", what, t.Context().Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
}

func errorf(format string, args ...any) error { return fmt.Errorf(format, args...) }

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
