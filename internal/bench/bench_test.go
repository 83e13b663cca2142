package bench

import (
	"context"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func TestPercentiles(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want Percentiles
	}{
		{nil, Percentiles{}},
		{[]float64{3}, Percentiles{3, 3, 3, 3, 3}},
		{[]float64{5, 1, 4, 2, 3, 6, 8, 7, 10, 9}, Percentiles{Min: 1, P50: 6, P90: 10, P99: 10, Max: 10}},
	} {
		if got := percentiles(tc.xs); !cmp.Equal(got, tc.want) {
			t.Errorf("percentiles(%v) = %+v, want %+v", tc.xs, got, tc.want)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	good := Config{Requests: 1, Concurrency: 1, PromptTokens: 1, MaxTokens: 1, Vocab: 100}
	if err := good.validate(); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []func(*Config){
		func(c *Config) { c.Requests = 0 },
		func(c *Config) { c.Concurrency = 0 },
		func(c *Config) { c.PromptTokens = 0 },
		func(c *Config) { c.MaxTokens = 0 },
		func(c *Config) { c.Vocab = 3 },
	} {
		c := good
		bad(&c)
		if c.validate() == nil {
			t.Errorf("%+v validated", c)
		}
	}
}

// TestPhases splits runs whose requests were all in flight at once at the
// moment every request had its first token.
func TestPhases(t *testing.T) {
	at := func(times ...float64) []arrival {
		as := make([]arrival, len(times))
		for i, x := range times {
			as[i] = arrival{at: x, n: 1}
		}
		return as
	}
	for _, tc := range []struct {
		name            string
		records         []record
		prefill, decode float64
	}{
		{
			name:    "lockstep",
			records: []record{{promptTokens: 8, arrivals: at(2, 3, 4, 5)}, {promptTokens: 8, arrivals: at(2, 3, 4, 5)}},
			prefill: 16.0 / 2, decode: 6.0 / 3,
		},
		{
			// The second request joined a step late: its first token is
			// the moment the decode phase starts; the first request's
			// second token, before it, is not counted.
			name:    "staggered",
			records: []record{{promptTokens: 4, arrivals: at(1, 2, 3, 4)}, {promptTokens: 4, arrivals: at(2, 3, 4, 5)}},
			prefill: 8.0 / 2, decode: 5.0 / 3,
		},
		{
			name:    "several tokens a message",
			records: []record{{promptTokens: 10, arrivals: []arrival{{at: 1, n: 1}, {at: 2, n: 3}}}},
			prefill: 10, decode: 3,
		},
		{
			name:    "one token",
			records: []record{{promptTokens: 5, arrivals: at(0.5)}},
			prefill: 10,
		},
	} {
		prefill, decode := phases(tc.records)
		if prefill != tc.prefill || decode != tc.decode {
			t.Errorf("%s: phases = %v, %v; want %v, %v", tc.name, prefill, decode, tc.prefill, tc.decode)
		}
	}
}

func TestErrorKey(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want string
	}{
		{status.Error(codes.Unavailable, "connection refused"), "Unavailable"},
		{fmt.Errorf("%w: prompt[0]", ErrInvalid), "bench: invalid request: prompt[0]"},
		{context.DeadlineExceeded, "context deadline exceeded"},
	} {
		if got := errorKey(tc.err); got != tc.want {
			t.Errorf("errorKey(%v) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestFailedAfter: a failed request is timed from its last token, or from
// its start when it had none; a good one is not counted.
func TestFailedAfter(t *testing.T) {
	cut := status.Error(codes.Unavailable, "router gone")
	res := summarise(Config{Concurrency: 1}, []record{
		{start: 1, end: 5, arrivals: []arrival{{at: 2, n: 1}, {at: 3, n: 1}}, err: cut},
		{start: 4, end: 4.5, err: cut},
		{start: 0, end: 9, arrivals: []arrival{{at: 1, n: 1}}},
	}, 9)
	if want := (Percentiles{Min: 0.5, P50: 2, P90: 2, P99: 2, Max: 2}); res.FailedAfter != want || res.Failed != 2 {
		t.Errorf("failed %d, failed after %+v; want 2, %+v", res.Failed, res.FailedAfter, want)
	}
}
