package model_test

import (
	"os"
	"testing"

	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/synth"
)

// benchModel loads the checkpoint named by MOEGRID_BENCH_MODEL, or writes
// the tiny preset, with every expert in process.
func benchModel(b *testing.B) (*model.Model, *model.ExpertSet) {
	b.Helper()
	dir := os.Getenv("MOEGRID_BENCH_MODEL")
	if dir == "" {
		p, err := synth.PresetByName("tiny")
		if err != nil {
			b.Fatal(err)
		}
		dir = b.TempDir()
		if err := synth.Write(dir, synth.Options{Preset: p, Seed: 1, DType: safetensors.F32, Shards: 1}); err != nil {
			b.Fatal(err)
		}
	}
	m, err := model.Load(dir)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { m.Close() })
	ex, err := model.LoadExperts(dir, m.Config, nil)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ex.Close() })
	return m, ex
}

// BenchmarkForwardWorkloads runs the three workloads of the side-by-side
// comparison with llama.cpp (hack/bench): decode of one stream, a 128-token
// prefill, and one decode step of 16 streams, on MOEGRID_BENCH_MODEL
// (e.g. the small preset) or the tiny preset. tok/s counts the tokens each
// step computes.
func BenchmarkForwardWorkloads(b *testing.B) {
	m, ex := benchModel(b)
	ctx := b.Context()
	b.Run("decode", func(b *testing.B) {
		cache := m.NewCache()
		if _, err := m.Forward(ctx, ex, []model.Input{{Cache: cache, Tokens: randomTokens(1, 16)}}); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			cache.Truncate(16)
			if _, err := m.Forward(ctx, ex, []model.Input{{Cache: cache, Tokens: []int{415}}}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "tok/s")
	})
	b.Run("prefill128", func(b *testing.B) {
		tokens := randomTokens(2, 128)
		cache := m.NewCache()
		for b.Loop() {
			cache.Truncate(0)
			if _, err := m.Forward(ctx, ex, []model.Input{{Cache: cache, Tokens: tokens}}); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(128*b.N)/b.Elapsed().Seconds(), "tok/s")
	})
	// streams16 decodes 16 sequences of distinct prompts, which route to
	// most experts; streams16same 16 identical ones, which route alike, as
	// llama.cpp's batched bench does.
	for _, same := range []bool{false, true} {
		name := "streams16"
		if same {
			name += "same"
		}
		b.Run(name, func(b *testing.B) { benchmarkStreams(b, m, ex, same) })
	}
}

func benchmarkStreams(b *testing.B, m *model.Model, ex *model.ExpertSet, same bool) {
	ctx := b.Context()
	{
		const streams = 16
		inputs := make([]model.Input, streams)
		for i := range inputs {
			seed, next := uint64(10+i), 415+i
			if same {
				seed, next = 10, 415
			}
			inputs[i].Cache = m.NewCache()
			if _, err := m.Forward(ctx, ex, []model.Input{{Cache: inputs[i].Cache, Tokens: randomTokens(seed, 32)}}); err != nil {
				b.Fatal(err)
			}
			inputs[i].Tokens = []int{next}
		}
		for b.Loop() {
			for i := range inputs {
				inputs[i].Cache.Truncate(32)
			}
			if _, err := m.Forward(ctx, ex, inputs); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(streams*b.N)/b.Elapsed().Seconds(), "tok/s")
	}
}
