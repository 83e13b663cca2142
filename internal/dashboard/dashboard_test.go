package dashboard

import (
	"encoding/json"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// fixedSource is a Source whose snapshot the test sets.
type fixedSource struct {
	mu   sync.Mutex
	snap Snapshot
}

func (s *fixedSource) Snapshot() Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.snap
}

func (s *fixedSource) set(snap Snapshot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.snap = snap
}

func ptr(v float64) *float64 { return &v }

func TestQuantile(t *testing.T) {
	bounds := []float64{1, 2, 4}
	for _, tc := range []struct {
		name   string
		counts []uint64
		q      float64
		want   *float64
	}{
		{"empty", []uint64{0, 0, 0, 0}, 0.5, nil},
		{"first bucket starts at zero", []uint64{4, 0, 0, 0}, 0.5, ptr(0.5)},
		{"interpolated in the second bucket", []uint64{2, 2, 0, 0}, 0.75, ptr(1.5)},
		{"upper edge of a bucket", []uint64{2, 2, 0, 0}, 1, ptr(2)},
		{"empty buckets are skipped", []uint64{0, 0, 4, 0}, 0.5, ptr(3)},
		{"above every bound answers the highest", []uint64{1, 0, 0, 9}, 0.99, ptr(4)},
		{"mismatched counts", []uint64{1, 2}, 0.5, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got := Histogram{Bounds: bounds, Counts: tc.counts}.quantile(tc.q)
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("quantile(%v) of %v (-want +got):\n%s", tc.q, tc.counts, diff)
			}
		})
	}
}

// TestLatencyWindow checks that the percentiles cover everything since the
// start until a sample is a window old, and after that only the window.
func TestLatencyWindow(t *testing.T) {
	bounds := []float64{0.01, 0.1, 1}
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := start
	src := &fixedSource{}
	h := New(src, Config{Window: time.Minute, Now: func() time.Time { return now }})
	steps := []struct {
		after      time.Duration
		ttft       []uint64 // cumulative since the start
		wantCount  uint64
		wantWindow float64
	}{
		{0, []uint64{10, 0, 0, 0}, 10, 0},
		{30 * time.Second, []uint64{10, 5, 0, 0}, 15, 0},
		{30 * time.Second, []uint64{10, 5, 5, 0}, 10, 60}, // the start sample is a window old
		{30 * time.Second, []uint64{10, 5, 5, 2}, 7, 60},  // now the 30 s sample is
		{10 * time.Minute, []uint64{10, 5, 5, 2}, 0, 600}, // idle: nothing in the window
		{500 * time.Millisecond, []uint64{10, 5, 5, 3}, 1, 600.5},
	}
	for i, s := range steps {
		now = now.Add(s.after)
		src.set(Snapshot{TTFT: Histogram{Bounds: bounds, Counts: s.ttft}})
		lat := h.State().Latency
		if lat.TTFT.Count != s.wantCount || lat.WindowSeconds != s.wantWindow {
			t.Errorf("step %d at %v: %d observations over %v s, want %d over %v s",
				i, now.Sub(start), lat.TTFT.Count, lat.WindowSeconds, s.wantCount, s.wantWindow)
		}
		if (lat.TTFT.P50 != nil) != (s.wantCount > 0) {
			t.Errorf("step %d: p50 %v with %d observations", i, lat.TTFT.P50, s.wantCount)
		}
	}
	if n := len(h.history); n > 3 {
		t.Errorf("history kept %d samples after the window moved on", n)
	}
}

func TestStateJSON(t *testing.T) {
	src := &fixedSource{}
	src.set(Snapshot{
		Model: "tiny", Experts: 2, Layers: 2, PlacementVersion: 7,
		Nodes: []Node{
			{ID: "a", Addr: "127.0.0.1:1", State: "ready", UsedBytes: 10, CapacityBytes: 100,
				Shards: []Shard{{Expert: 0, First: 0, End: 2, Assigned: true, Loaded: true}}},
			{ID: "b", State: "ready", Ejected: true},
			{ID: "c", State: "ready", Dead: true},
			{ID: "d", State: "unregistered"},
			{ID: "e", State: "joining"},
		},
		Replicas:        []int{1, 0},
		Routed:          [][]uint64{{3, 1}, {0, 4}},
		GeneratedTokens: 5, Running: 1, KVUsedBytes: 64, KVBudgetBytes: 1024,
	})
	srv := httptest.NewServer(mux(New(src, Config{})))
	defer srv.Close()
	resp, err := http.Get(srv.URL + "/dashboard/state.json")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	var st State
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	health := map[string]string{}
	for _, n := range st.Nodes {
		health[n.ID] = n.Health
	}
	want := map[string]string{"a": "ok", "b": "ejected", "c": "dead", "d": "dead", "e": "joining"}
	if diff := cmp.Diff(want, health); diff != "" {
		t.Errorf("health (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([][]uint64{{3, 1}, {0, 4}}, st.Routed); diff != "" {
		t.Errorf("routed (-want +got):\n%s", diff)
	}
	if got := st.Nodes[0].Shards; len(got) != 1 || !got[0].Loaded || got[0].End != 2 {
		t.Errorf("node a shards %+v", got)
	}
	if st.Latency.TTFT.P50 != nil || st.Latency.TTFT.Count != 0 {
		t.Errorf("no observations gave ttft %+v", st.Latency.TTFT)
	}
}

// TestEmptySourceEncodesArrays checks that a router with no cluster yet
// gives the page arrays, not nulls, to iterate.
func TestEmptySourceEncodesArrays(t *testing.T) {
	b, err := json.Marshal(New(&fixedSource{}, Config{}).State())
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{`"nodes":[]`, `"replicas":[]`, `"routed":[]`} {
		if !strings.Contains(string(b), field) {
			t.Errorf("state %s lacks %s", b, field)
		}
	}
}

func mux(h *Handler) *http.ServeMux {
	m := http.NewServeMux()
	h.Register(m)
	return m
}

func TestAssets(t *testing.T) {
	srv := httptest.NewServer(mux(New(&fixedSource{}, Config{})))
	defer srv.Close()
	for _, tc := range []struct {
		path, contentType, contains string
		status                      int
	}{
		{"/dashboard/", "text/html; charset=utf-8", `<script src="dashboard.js">`, http.StatusOK},
		{"/dashboard/dashboard.js", "text/javascript; charset=utf-8", "state.json", http.StatusOK},
		{"/dashboard/dashboard.css", "text/css; charset=utf-8", "#heatmap", http.StatusOK},
		{"/dashboard/missing.js", "", "", http.StatusNotFound},
	} {
		t.Run(tc.path, func(t *testing.T) {
			resp, err := http.Get(srv.URL + tc.path)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.status)
			}
			if tc.status != http.StatusOK {
				return
			}
			if ct := resp.Header.Get("Content-Type"); ct != tc.contentType {
				t.Errorf("Content-Type %q, want %q", ct, tc.contentType)
			}
			if !strings.Contains(string(body), tc.contains) {
				t.Errorf("body lacks %q", tc.contains)
			}
		})
	}
	resp, err := http.Get(srv.URL + "/dashboard")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Request.URL.Path != "/dashboard/" {
		t.Errorf("/dashboard ended at %s, want the page", resp.Request.URL.Path)
	}
}

// TestNoExternalAssets checks that the page loads nothing from elsewhere:
// it must work in a cluster with no way out.
func TestNoExternalAssets(t *testing.T) {
	external := regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//|url\(\s*["']?(https?:)?//|@import`)
	err := fs.WalkDir(assets, "assets", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := fs.ReadFile(assets, path)
		if err != nil {
			return err
		}
		if m := external.Find(b); m != nil {
			t.Errorf("%s refers outside the binary: %q", path, m)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
