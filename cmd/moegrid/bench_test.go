package main

import (
	"encoding/json"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"

	"github.com/moegrid/moegrid/internal/bench"
	"github.com/moegrid/moegrid/model/safetensors"
	"github.com/moegrid/moegrid/model/synth"
)

// writeTiny writes the tiny synthetic checkpoint into a test directory.
func writeTiny(t *testing.T) string {
	t.Helper()
	tiny, err := synth.PresetByName("tiny")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := synth.Write(dir, synth.Options{Preset: tiny, Seed: 2, DType: safetensors.F32, Shards: 1}); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestBenchInProcess runs `moegrid bench --in-process` on the tiny model:
// the JSON report counts every token, and all requests in flight at once
// get the prefill/decode split.
func TestBenchInProcess(t *testing.T) {
	dir := writeTiny(t)
	out, err := runMoegrid(t, "bench", "--in-process", "--model", dir, "--requests", "3", "--concurrency", "3",
		"--prompt-tokens", "6", "--max-tokens", "5", "--warmup", "1", "--same-prompt", "-o", "json")
	if err != nil {
		t.Fatalf("bench: %v\n%s", err, out)
	}
	var res bench.Result
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("%v in %q", err, out)
	}
	if res.Requests != 3 || res.Failed != 0 || res.Tokens != 15 || res.DecodeTokensPerSecond <= 0 || res.PrefillTokensPerSecond <= 0 {
		t.Errorf("result %+v: want 15 tokens of 3 requests and both phases", res)
	}
	text, err := runMoegrid(t, "bench", "--in-process", "--model", dir, "--requests", "2", "--concurrency", "1", "--max-tokens", "2")
	if err != nil || !strings.Contains(text, "2 requests (1 at a time), 32-token prompts, 2 tokens each: 0 failed") {
		t.Errorf("text report: err %v\n%s", err, text)
	}
}

// TestBenchFails: the command fails, naming the failure, when any request
// failed, with the report still printed, both in process and against a
// router that is not there.
func TestBenchFails(t *testing.T) {
	dir := writeTiny(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"past the context", []string{"--in-process", "--model", dir, "--max-tokens", "40000", "-o", "json"}, "do not fit the model's context"},
		{"no router", []string{"--addr", "127.0.0.1:1", "--insecure", "--timeout", "5s"}, "Unavailable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"bench", "--requests", "2", "--concurrency", "2"}, tc.args...)
			out, err := runMoegrid(t, args...)
			if err == nil || !strings.Contains(err.Error(), "2 of 2 requests failed") {
				t.Fatalf("err = %v, want 2 of 2 requests failed\n%s", err, out)
			}
			if !strings.Contains(out, tc.want) {
				t.Errorf("report does not name %q:\n%s", tc.want, out)
			}
		})
	}
}

func TestBenchFlags(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--in-process"}, "--in-process needs --model DIR"},
		{[]string{"--in-process", "--model", "x", "--addr", "127.0.0.1:1"}, "not both"},
		{[]string{"--addr", "127.0.0.1:1", "--model", "x"}, "--model is for --in-process"},
		{[]string{"--in-process", "--model", "x", "--output", "yaml"}, "want text or json"},
		{[]string{"--in-process", "--model", "x", "--requests", "0"}, "must be at least 1"},
	} {
		if out, err := runMoegrid(t, append([]string{"bench"}, tc.args...)...); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("bench %v: err = %v, want %q\n%s", tc.args, err, tc.want, out)
		}
	}
}

// TestBenchFailover: with two routers, a request the first refuses
// UNAVAILABLE before its first token completes on the second; one it cut
// after a token fails, reported with how soon it was told.
func TestBenchFailover(t *testing.T) {
	for _, tc := range []struct {
		name       string
		first      *fakeRouter
		wantFailed int
		wantNext   int32
	}{
		{"refused before the first token", &fakeRouter{code: codes.Unavailable}, 0, 3},
		{"cut after a token", &fakeRouter{tokens: 1, code: codes.Unavailable}, 3, 0},
		{"served", &fakeRouter{tokens: 2}, 0, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := &fakeRouter{tokens: 2}
			out, err := runMoegrid(t, "bench", "--addr", serveRouter(t, tc.first)+","+serveRouter(t, next), "--insecure",
				"--requests", "3", "--concurrency", "1", "--max-tokens", "2", "-o", "json")
			if (err != nil) != (tc.wantFailed > 0) {
				t.Fatalf("bench: %v\n%s", err, out)
			}
			var res bench.Result
			if err := json.Unmarshal([]byte(out), &res); err != nil {
				t.Fatalf("%v in %q", err, out)
			}
			if res.Failed != tc.wantFailed || next.calls.Load() != tc.wantNext {
				t.Errorf("%d failed, %d calls to the second router; want %d, %d", res.Failed, next.calls.Load(), tc.wantFailed, tc.wantNext)
			}
			if tc.wantFailed > 0 && (res.Errors["Unavailable"] != tc.wantFailed || res.FailedAfter.Max <= 0 || res.FailedAfter.Max > 5) {
				t.Errorf("errors %v, told after %+v: want every failure Unavailable, told within seconds", res.Errors, res.FailedAfter)
			}
		})
	}
}
