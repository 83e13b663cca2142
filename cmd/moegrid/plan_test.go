package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"github.com/moegrid/moegrid/coordinator/placement"
)

func runCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(args)
	err := root.ExecuteContext(t.Context())
	return out.String(), err
}

func TestPlan(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		want []string // substrings of the output
		err  string
	}{
		{
			name: "one expert per node",
			args: []string{"plan", "--preset", "mixtral-8x7b", "--nodes", "8", "--capacity", "80GiB"},
			want: []string{"8 experts × 32 layers", "node-0  e0  ", "node-7  e7  "},
		},
		{
			name: "two replicas",
			args: []string{"plan", "--preset", "mixtral-8x7b", "--nodes", "8", "--capacity", "24GiB", "--min-replicas", "2"},
			want: []string{"min replicas 2", "node-0  e0,e7"},
		},
		{
			name: "layers split",
			args: []string{"plan", "--preset", "mixtral-8x7b", "--nodes", "12", "--capacity", "10GB"},
			want: []string{"e0:0-10"},
		},
		{
			name: "insufficient",
			args: []string{"plan", "--preset", "mixtral-8x7b", "--nodes", "8", "--capacity", "10GB"},
			err:  "insufficient capacity: need 90194313216",
		},
		{
			name: "extra nodes",
			args: []string{"plan", "--preset", "tiny", "--dtype", "f32", "--nodes", "0", "--node", "a=8MiB", "--node", "b=8MiB"},
			want: []string{"a  ", "b  "},
		},
		{name: "bad node", args: []string{"plan", "--preset", "tiny", "--node", "x"}, err: "want ID=SIZE"},
		{name: "no model", args: []string{"plan"}, err: "--model DIR or --preset NAME"},
		{name: "unknown preset", args: []string{"plan", "--preset", "huge"}, err: `unknown preset "huge"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCmd(t, tc.args...)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestPlanJSON(t *testing.T) {
	out, err := runCmd(t, "plan", "--preset", "mixtral-8x7b", "--nodes", "8", "--capacity", "80GiB", "--output", "json")
	if err != nil {
		t.Fatal(err)
	}
	var p placement.Placement
	if err := json.Unmarshal([]byte(out), &p); err != nil {
		t.Fatal(err)
	}
	if err := p.Validate(p.Model); err != nil || len(p.Assignments) != 8 {
		t.Errorf("placement %+v: %v", p, err)
	}
}
