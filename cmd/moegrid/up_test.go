package main

import (
	"bufio"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/moegrid/moegrid/internal/up"
)

// TestUpEndToEnd drives the built binary: `moegrid up` starts the whole
// cluster, `moegrid generate` reaches it with no address and gets the
// in-process model's greedy tokens, `moegrid nodes` lists the 8 nodes, and
// Ctrl-C stops everything, leaving no process behind.
func TestUpEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts 11 processes")
	}
	dir := t.TempDir()
	bin := filepath.Join(dir, "moegrid")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	state, cache := filepath.Join(dir, "state"), filepath.Join(dir, "cache")
	env := append(os.Environ(), "MOEGRID_STATE_DIR="+state)

	upCmd := exec.Command(bin, "up", "--state-dir", state, "--cache-dir", cache,
		"--router-grpc-addr", "127.0.0.1:0", "--router-http-addr", "127.0.0.1:0", "--coordinator-addr", "127.0.0.1:0",
		"--lease-ttl", "3s")
	upCmd.Env = env
	stdout, err := upCmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	upCmd.Stderr = os.Stderr
	if err := upCmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	t.Cleanup(func() {
		upCmd.Process.Kill()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
		}
	})

	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		exited <- upCmd.Wait()
	}()
	deadline := time.After(3 * time.Minute)
	var banner []string
wait:
	for {
		select {
		case l, ok := <-lines:
			if !ok {
				t.Fatalf("moegrid up ended before it was ready:\n%s", strings.Join(banner, "\n"))
			}
			banner = append(banner, l)
			if strings.Contains(l, "Ctrl-C stops everything") {
				break wait
			}
		case <-deadline:
			t.Fatalf("moegrid up not ready in time:\n%s", strings.Join(banner, "\n"))
		}
	}
	out := strings.Join(banner, "\n")
	if !strings.Contains(out, "moegrid is up: 8 expert nodes") || !strings.Contains(out, `moegrid generate "`) {
		t.Errorf("the banner lacks the cluster summary or the generate command:\n%s", out)
	}
	st, err := up.ReadState(state)
	if err != nil {
		t.Fatal(err)
	}

	run := func(args ...string) []byte {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = env
		cmd.Stderr = os.Stderr
		b, err := cmd.Output()
		if err != nil {
			t.Fatalf("moegrid %s: %v", strings.Join(args, " "), err)
		}
		return b
	}
	var cluster, local struct {
		IDs []int `json:"ids"`
	}
	if err := json.Unmarshal(run("generate", "--ids", "1,415", "--max-tokens", "8", "--temperature", "0", "--output", "json"), &cluster); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(run("model", "generate", "--model", st.ModelDir, "--ids", "1,415", "--max-tokens", "8"), &local); err != nil {
		t.Fatal(err)
	}
	if len(cluster.IDs) != 8 || !slices.Equal(cluster.IDs, local.IDs) {
		t.Errorf("cluster generated %v, in-process %v", cluster.IDs, local.IDs)
	}
	if text := string(run("generate", "Hello", "--max-tokens", "4")); strings.TrimSpace(text) == "" {
		t.Error("text generation printed nothing")
	}
	var status struct {
		Nodes []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal(run("nodes", "--coordinator", st.CoordinatorGRPC, "--output", "json"), &status); err != nil {
		t.Fatal(err)
	}
	if len(status.Nodes) != 8 {
		t.Errorf("moegrid nodes lists %d nodes, want 8", len(status.Nodes))
	}

	children := childrenOf(upCmd.Process.Pid)
	if len(children) != 10 {
		t.Errorf("moegrid up has %d child processes, want 10 (coordinator, 8 nodes, router)", len(children))
	}
	if err := upCmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	for range lines {
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("moegrid up exited with %v after Ctrl-C", err)
		}
	case <-time.After(60 * time.Second):
		t.Fatal("moegrid up did not stop within 60 s of Ctrl-C")
	}
	for _, pid := range children {
		if syscall.Kill(pid, 0) == nil {
			t.Errorf("child process %d outlived moegrid up", pid)
		}
	}
	if _, err := os.Stat(up.StateFile(state)); !os.IsNotExist(err) {
		t.Errorf("the state file is still there after stop: %v", err)
	}
}

// childrenOf lists the processes whose parent is pid, from /proc.
func childrenOf(pid int) []int {
	entries, _ := os.ReadDir("/proc")
	var kids []int
	for _, e := range entries {
		p, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// Fields after the parenthesised command: state, ppid, ...
		s := string(stat)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(pid) {
			kids = append(kids, p)
		}
	}
	return kids
}
