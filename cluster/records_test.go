package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/moegrid/moegrid/placement"
)

func TestNodeRecordRoundTrip(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	rec := nodeRecord("node-1")
	rec.GossipAddr = "127.0.0.1:7946"
	rec.Loaded = []placement.Shard{{Expert: 3, First: 0, End: 4}}
	rec.Load = NodeLoad{ForwardCallsTotal: 7, RowsTotal: 70, Inflight: 1, RowsPerSecond: 3.5}
	rec.Started = time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	rec.Heartbeat = rec.Started.Add(time.Second)
	rec.LoadError = &LoadError{Message: "open model.safetensors: no such file", Time: rec.Heartbeat, Attempts: 2}
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	got, err := k.DecodeNodeRecord(k.Node("node-1"), b)
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	if diff := cmp.Diff(rec, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	if !got.Holds(placement.Shard{Expert: 3, First: 1, End: 2}) || got.Holds(placement.Shard{Expert: 2, First: 0, End: 4}) {
		t.Errorf("Holds wrong for %v", got.Loaded)
	}
}

// TestDecodeNodeRecordBad pairs malformed node records with their errors.
func TestDecodeNodeRecordBad(t *testing.T) {
	k, _ := NewKeys(DefaultPrefix)
	valid := func(mut func(*NodeRecord)) string {
		r := nodeRecord("node-1")
		mut(&r)
		b, _ := json.Marshal(r)
		return string(b)
	}
	for _, tc := range []struct {
		name, key, value, err string
	}{
		{"not json", k.Node("node-1"), "{", "unexpected end of JSON"},
		{"wrong type", k.Node("node-1"), `{"id": 5}`, "cannot unmarshal number"},
		{"id mismatch", k.Node("node-2"), valid(func(*NodeRecord) {}), `record id "node-1" does not match`},
		{"bad id", k.Node("node-1"), valid(func(r *NodeRecord) { r.ID = "" }), "invalid id"},
		{"no grpc addr", k.Node("node-1"), valid(func(r *NodeRecord) { r.GRPCAddr = "" }), "grpc_addr is empty"},
		{"bad grpc addr", k.Node("node-1"), valid(func(r *NodeRecord) { r.GRPCAddr = "localhost" }), "missing port"},
		{"bad port", k.Node("node-1"), valid(func(r *NodeRecord) { r.GossipAddr = "h:99999" }), "port must be"},
		{"bad state", k.Node("node-1"), valid(func(r *NodeRecord) { r.State = "sleeping" }), `state "sleeping"`},
		{"no capacity", k.Node("node-1"), valid(func(r *NodeRecord) { r.CapacityBytes = 0 }), "capacity_bytes 0"},
		{"no device", k.Node("node-1"), valid(func(r *NodeRecord) { r.Device.Kind = "" }), "device kind"},
		{"no start", k.Node("node-1"), valid(func(r *NodeRecord) { r.Started = time.Time{} }), "started is zero"},
		{"no fingerprint", k.Node("node-1"), valid(func(r *NodeRecord) { r.Model.Fingerprint = "" }), "fingerprint is empty"},
		{"no experts", k.Node("node-1"), valid(func(r *NodeRecord) { r.Model.Shape.Experts = 0 }), "must be positive"},
		{"loaded outside", k.Node("node-1"), valid(func(r *NodeRecord) { r.Loaded = []placement.Shard{{Expert: 8, End: 1}} }), "model has 8 experts"},
		{"loaded empty range", k.Node("node-1"), valid(func(r *NodeRecord) { r.Loaded = []placement.Shard{{Expert: 1, First: 2, End: 2}} }), "layers [2,2)"},
		{"negative rate", k.Node("node-1"), valid(func(r *NodeRecord) { r.Load.RowsPerSecond = -1 }), "rows_per_second"},
		{"empty load error", k.Node("node-1"), valid(func(r *NodeRecord) { r.LoadError = &LoadError{Time: r.Started, Attempts: 1} }), "load_error message: 0 bytes"},
		{"long load error", k.Node("node-1"), valid(func(r *NodeRecord) {
			r.LoadError = &LoadError{Message: strings.Repeat("x", MaxLoadErrorBytes+1), Time: r.Started, Attempts: 1}
		}), "load_error message: 1025 bytes"},
		{"load error no time", k.Node("node-1"), valid(func(r *NodeRecord) { r.LoadError = &LoadError{Message: "x", Attempts: 1} }), "load_error time is zero"},
		{"load error no attempts", k.Node("node-1"), valid(func(r *NodeRecord) { r.LoadError = &LoadError{Message: "x", Time: r.Started} }), "load_error attempts 0"},
		{"not a node key", k.Placement(), valid(func(*NodeRecord) {}), "not a node key"},
		{"huge", k.Node("node-1"), `"` + strings.Repeat("x", maxRecordBytes) + `"`, "limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := k.DecodeNodeRecord(tc.key, []byte(tc.value))
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.err) || !strings.Contains(err.Error(), tc.key) {
				t.Fatalf("err = %v; want ErrMalformed naming %s and containing %q", err, tc.key, tc.err)
			}
		})
	}
}

func TestPlacementRecordJSON(t *testing.T) {
	rec := PlacementRecord{
		Placement: placement.Placement{Version: 3, Model: testModel},
		Leader:    "coord-a",
	}
	for e := range testModel.Experts {
		rec.Assignments = append(rec.Assignments, placement.Assignment{
			Shard: placement.Shard{Expert: e, End: testModel.Layers}, Nodes: []string{"n1"},
		})
	}
	b, err := json.Marshal(rec)
	if err != nil {
		t.Fatal(err)
	}
	// The placement's fields sit at the top level beside the record's own.
	var flat map[string]any
	if err := json.Unmarshal(b, &flat); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"version", "model", "assignments", "leader", "written"} {
		if _, ok := flat[f]; !ok {
			t.Errorf("field %q missing in %s", f, b)
		}
	}
	got, err := DecodePlacementRecord("p", b)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(rec, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}

	for name, bad := range map[string]string{
		"incomplete":       `{"version":1,"model":{"experts":2,"layers":1,"bytes_per_expert_layer":1},"assignments":[{"shard":{"expert":0,"first_layer":0,"end_layer":1},"nodes":["a"]}]}`,
		"v0 assignments":   `{"version":0,"assignments":[{"shard":{"expert":0,"first_layer":0,"end_layer":1},"nodes":["a"]}]}`,
		"negative version": `{"version":-1}`,
		"bad node id":      `{"version":1,"model":{"experts":1,"layers":1,"bytes_per_expert_layer":1},"assignments":[{"shard":{"expert":0,"first_layer":0,"end_layer":1},"nodes":["a b"]}]}`,
		"load length":      `{"version":1,"model":{"experts":1,"layers":1,"bytes_per_expert_layer":1},"assignments":[{"shard":{"expert":0,"first_layer":0,"end_layer":1},"nodes":["a"]}],"load":[1,2]}`,
	} {
		if _, err := DecodePlacementRecord("p", []byte(bad)); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: err = %v, want ErrMalformed", name, err)
		}
	}
}

func FuzzDecodeNodeRecord(f *testing.F) {
	k, _ := NewKeys(DefaultPrefix)
	b, _ := json.Marshal(nodeRecord("node-1"))
	f.Add(b)
	f.Add([]byte(`{"id":"node-1","loaded":[{"expert":-1}]}`))
	f.Add([]byte(`null`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := k.DecodeNodeRecord(k.Node("node-1"), b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		// Whatever decodes is valid and survives a round trip.
		if err := r.Validate(); err != nil {
			t.Fatalf("decoded record invalid: %v", err)
		}
		again, _ := json.Marshal(r)
		if _, err := k.DecodeNodeRecord(k.Node("node-1"), again); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func FuzzDecodePlacementRecord(f *testing.F) {
	f.Add([]byte(`{"version":1,"model":{"experts":1,"layers":2,"bytes_per_expert_layer":1},"assignments":[{"shard":{"expert":0,"first_layer":0,"end_layer":2},"nodes":["a"]}]}`))
	f.Add([]byte(`{"version":0,"error":"insufficient capacity"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := DecodePlacementRecord("p", b)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		if r.Version > 0 {
			// A decoded placement answers every lookup without panicking.
			for e := range r.Model.Experts {
				_ = r.HoldersOf(e, 0)
			}
		}
	})
}

func TestLoadRecordUnhealthy(t *testing.T) {
	since := time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC)
	valid := func(edit func(*LoadRecord)) []byte {
		r := LoadRecord{RouterID: "router-1", Fingerprint: "f", TokensPerSecond: []float64{1, 2}, Updated: since,
			Unhealthy: []NodeVerdict{
				{NodeID: "node-1", State: VerdictEjected, Since: since, LastError: "rpc error: code = Unavailable"},
				{NodeID: "node-2", State: VerdictSuspect, Since: since},
			}}
		if edit != nil {
			edit(&r)
		}
		b, err := json.Marshal(r)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tooMany := make([]NodeVerdict, MaxUnhealthyNodes+1)
	for i := range tooMany {
		tooMany[i] = NodeVerdict{NodeID: fmt.Sprintf("node-%d", i), State: VerdictSuspect, Since: since}
	}
	for _, tc := range []struct {
		name    string
		value   []byte
		wantErr string // "" for a valid record
	}{
		{"valid", valid(nil), ""},
		{"none", valid(func(r *LoadRecord) { r.Unhealthy = nil }), ""},
		{"bad state", valid(func(r *LoadRecord) { r.Unhealthy[0].State = "sick" }), `node node-1: state "sick"`},
		{"no since", valid(func(r *LoadRecord) { r.Unhealthy[1].Since = time.Time{} }), "node node-2: since is zero"},
		{"bad node id", valid(func(r *LoadRecord) { r.Unhealthy[0].NodeID = "" }), "unhealthy: "},
		{"long error", valid(func(r *LoadRecord) { r.Unhealthy[0].LastError = strings.Repeat("x", MaxVerdictErrBytes+1) }), "last_error is 257 bytes"},
		{"twice", valid(func(r *LoadRecord) { r.Unhealthy[1].NodeID = "node-1" }), "node node-1 listed twice"},
		{"too many", valid(func(r *LoadRecord) { r.Unhealthy = tooMany }), "unhealthy has 257 nodes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r LoadRecord
			err := decode("load/router-1", tc.value, &r)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("decode: %v", err)
				}
				return
			}
			if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("decode err = %v, want ErrMalformed with %q", err, tc.wantErr)
			}
		})
	}
}

func FuzzDecodeLoadRecord(f *testing.F) {
	f.Add([]byte(`{"router_id":"r","fingerprint":"f","tokens_per_second":[1],"unhealthy":[{"node_id":"n","state":"ejected","since":"2025-06-01T12:00:00Z","last_error":"x"}]}`))
	f.Add([]byte(`{"router_id":"r","fingerprint":"f","tokens_per_second":[1],"unhealthy":[{"node_id":"n","state":"down"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		var r LoadRecord
		if err := decode("load/r", b, &r); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v does not wrap ErrMalformed", err)
			}
			return
		}
		again, _ := json.Marshal(r)
		var back LoadRecord
		if err := decode("load/r", again, &back); err != nil {
			t.Fatalf("re-decode: %v", err)
		}
	})
}

func TestTruncateUTF8(t *testing.T) {
	for _, tc := range []struct {
		s    string
		n    int
		want string
	}{
		{"short", 10, "short"},
		{"exact", 5, "exact"},
		{"abcdef", 3, "abc"},
		{"aé", 2, "a"}, // é is two bytes: cutting inside it drops it whole
		{"aé", 3, "aé"},
		{"日本", 4, "日"},
		{"日本", 2, ""},
	} {
		if got := TruncateUTF8(tc.s, tc.n); got != tc.want {
			t.Errorf("TruncateUTF8(%q, %d) = %q, want %q", tc.s, tc.n, got, tc.want)
		}
	}
}
