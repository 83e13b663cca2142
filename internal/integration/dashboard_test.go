package integration

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// screenshotEnv, set to 1, makes TestDashboardInChromium write its
// screenshot to docs/dashboard.png, the one the README shows.
const screenshotEnv = "MOEGRID_UPDATE_SCREENSHOT"

// chromium finds Debian's headless-capable Chromium. Without it the test is
// skipped, except in CI, where a missing browser is a broken install.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	if os.Getenv("CI") != "" {
		t.Fatal("chromium is not installed; .ci/run installs it (apt-get install chromium)")
	}
	t.Skip("chromium is not installed")
	return ""
}

// runChromium loads url in headless Chromium, lets the page run for a few
// seconds of virtual time (its polls included), and returns the DOM it
// serialised.
//
// Headless chromium now and then never finishes a page it renders in
// seconds otherwise (a CI run saw a screenshot hang for its whole 90 s
// after the same page's DOM had been dumped), so a run that times out is
// tried once more, in a fresh profile.
func runChromium(ctx context.Context, t *testing.T, browser, url string, extra ...string) string {
	t.Helper()
	const attempts = 2
	for attempt := 1; ; attempt++ {
		out, timedOut, err := chromiumOnce(ctx, t, browser, url, extra)
		if err == nil {
			return out
		}
		if !timedOut || attempt == attempts {
			t.Fatalf("chromium: %v", err)
		}
		t.Logf("chromium timed out (attempt %d of %d), trying again: %v", attempt, attempts, err)
	}
}

// chromiumOnce runs chromium once, for at most 45 s, and returns what it
// printed, or whether it ran out of time and its error.
func chromiumOnce(ctx context.Context, t *testing.T, browser, url string, extra []string) (string, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	args := append([]string{
		"--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
		"--disable-dev-shm-usage", "--user-data-dir=" + t.TempDir(),
		"--virtual-time-budget=6000", "--run-all-compositor-stages-before-draw",
	}, extra...)
	args = append(args, url)
	cmd := exec.CommandContext(ctx, browser, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", ctx.Err() != nil, fmt.Errorf("%v: %w\n%s", args, err, stderr.String())
	}
	return stdout.String(), false, nil
}

var (
	// latencyRow is a row of the latency table: p50, p90, p99, count.
	latencyRow  = regexp.MustCompile(`<tr id="latency-(\w+)"><th>[^<]*</th><td class="p50">([^<]*)</td><td class="p90">([^<]*)</td><td class="p99">([^<]*)</td><td class="n">(\d+)</td></tr>`)
	tagPattern  = regexp.MustCompile(`<(td|div)\s[^>]*>`)
	attrPattern = regexp.MustCompile(`([a-z-]+)="([^"]*)"`)
)

// domElements returns the attributes of every td and div of the DOM.
func domElements(dom string) []map[string]string {
	var out []map[string]string
	for _, tag := range tagPattern.FindAllString(dom, -1) {
		attrs := map[string]string{}
		for _, m := range attrPattern.FindAllStringSubmatch(tag, -1) {
			attrs[m[1]] = m[2]
		}
		out = append(out, attrs)
	}
	return out
}

// routedSample is a sample of moegrid_router_expert_layer_rows_total in the
// text exposition format, as the router's registry writes it (labels sorted).
var routedSample = regexp.MustCompile(`(?m)^moegrid_router_expert_layer_rows_total\{expert="(\d+)",layer="(\d+)"\} (\S+)$`)

// routedFromMetrics scrapes the router's rows routed by (layer, expert).
func routedFromMetrics(t *testing.T, url string) map[[2]int]float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	out := map[[2]int]float64{}
	for _, m := range routedSample.FindAllStringSubmatch(string(body), -1) {
		e, _ := strconv.Atoi(m[1])
		l, _ := strconv.Atoi(m[2])
		v, err := strconv.ParseFloat(m[3], 64)
		if err != nil {
			t.Fatalf("%s: sample %q: %v", url, m[0], err)
		}
		out[[2]int{l, e}] = v
	}
	return out
}

// TestDashboardInChromium serves the dashboard from a running cluster that
// has generated tokens, loads it in headless Chromium, and checks that the
// DOM shows every expert node and a heat-map cell per (layer, expert) whose
// rows are the router's own counters; then it takes a screenshot.
func TestDashboardInChromium(t *testing.T) {
	browser := chromium(t)
	const nodes, generations, tokens = 4, 3, 8
	// Plaintext: the browser would not trust the test's CA.
	tc := startCluster(t, clusterOptions{nodes: nodes, minReplicas: 1, insecure: true})
	for i, p := range prompts[:generations] {
		if _, err := tc.generate(t.Context(), p, tokens); err != nil {
			t.Fatalf("generation %d: %v", i, err)
		}
	}
	lm := loadLocal(t)
	layers, experts := lm.Config.NumHiddenLayers, lm.Config.NumLocalExperts
	base := "http://" + tc.router.HTTPAddr()
	routed := routedFromMetrics(t, base+"/metrics")
	if len(routed) == 0 {
		t.Fatal("the router counted no routed rows after three generations")
	}

	dom := runChromium(t.Context(), t, browser, base+"/dashboard/", "--dump-dom")
	if !strings.Contains(dom, `class="status live"`) {
		t.Fatalf("the page never rendered a state; its DOM:\n%s", dom)
	}
	// The page is the dashboard's first reader, so its percentiles are of
	// every request since the router started.
	wantCounts := map[string]string{"ttft": strconv.Itoa(generations), "tbt": strconv.Itoa(generations * (tokens - 1))}
	for _, m := range latencyRow.FindAllStringSubmatch(dom, -1) {
		name := m[1]
		if m[5] != wantCounts[name] {
			t.Errorf("latency %s counts %s observations, want %s", name, m[5], wantCounts[name])
		}
		for _, p := range m[2:5] {
			if p == "–" {
				t.Errorf("latency %s shows no percentile: %q", name, m[0])
			}
		}
		delete(wantCounts, name)
	}
	if len(wantCounts) > 0 {
		t.Errorf("the page shows no latency rows %v", wantCounts)
	}
	seenNodes := map[string]string{}
	cells := map[[2]int]map[string]string{}
	for _, attrs := range domElements(dom) {
		if id, ok := attrs["data-node-id"]; ok {
			seenNodes[id] = attrs["data-health"]
		}
		if attrs["class"] != "cell" {
			continue
		}
		l, lerr := strconv.Atoi(attrs["data-layer"])
		e, eerr := strconv.Atoi(attrs["data-expert"])
		if err := errors.Join(lerr, eerr); err != nil {
			t.Fatalf("heat-map cell %v: %v", attrs, err)
		}
		cells[[2]int{l, e}] = attrs
	}
	for i := range nodes {
		id := fmt.Sprintf("expert-%d", i)
		if h, ok := seenNodes[id]; !ok {
			t.Errorf("the cluster map has no card for node %s", id)
		} else if h != "ok" {
			t.Errorf("node %s shows health %q, want ok", id, h)
		}
	}
	if len(seenNodes) != nodes {
		t.Errorf("the cluster map shows nodes %v, want %d", seenNodes, nodes)
	}
	if len(cells) != layers*experts {
		t.Errorf("the heat map has %d cells, want %d layers × %d experts", len(cells), layers, experts)
	}
	for l := range layers {
		for e := range experts {
			cell, ok := cells[[2]int{l, e}]
			if !ok {
				t.Errorf("no heat-map cell for layer %d, expert %d", l, e)
				continue
			}
			rows, err := strconv.ParseFloat(cell["data-rows"], 64)
			if err != nil {
				t.Errorf("cell (%d, %d) rows %q: %v", l, e, cell["data-rows"], err)
				continue
			}
			if want := routed[[2]int{l, e}]; rows != want {
				t.Errorf("cell (%d, %d) shows %v rows, the router counted %v", l, e, rows, want)
			}
			if share, _ := strconv.ParseFloat(cell["data-share"], 64); (rows > 0) != (share > 0) {
				t.Errorf("cell (%d, %d): %v rows but a share of %v", l, e, rows, share)
			}
		}
	}

	shot := filepath.Join(t.TempDir(), "dashboard.png")
	if os.Getenv(screenshotEnv) == "1" {
		shot = filepath.Join("..", "..", "docs", "dashboard.png")
		if err := os.MkdirAll(filepath.Dir(shot), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	runChromium(t.Context(), t, browser, base+"/dashboard/", "--screenshot="+shot, "--window-size=1400,1000", "--hide-scrollbars")
	f, err := os.Open(shot)
	if err != nil {
		t.Fatalf("chromium wrote no screenshot: %v", err)
	}
	defer f.Close()
	head := make([]byte, 8)
	if _, err := io.ReadFull(f, head); err != nil || !bytes.Equal(head, []byte("\x89PNG\r\n\x1a\n")) {
		t.Fatalf("screenshot %s is not a PNG (%q, %v)", shot, head, err)
	}
	t.Logf("screenshot: %s", shot)
}
