package bench

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestPercentiles(t *testing.T) {
	for _, tc := range []struct {
		xs   []float64
		want Percentiles
	}{
		{nil, Percentiles{}},
		{[]float64{3}, Percentiles{3, 3, 3, 3}},
		{[]float64{5, 1, 4, 2, 3, 6, 8, 7, 10, 9}, Percentiles{P50: 6, P90: 10, P99: 10, Max: 10}},
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
