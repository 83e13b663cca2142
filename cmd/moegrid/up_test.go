package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/moegrid/moegrid/internal/up"
)

// upCluster is a running `moegrid up` and what the test reads from it.
type upCluster struct {
	t     *testing.T
	bin   string
	env   []string
	cmd   *exec.Cmd
	dir   string // --state-dir
	state up.State

	mu     sync.Mutex
	out    []string      // stdout lines so far, protected by mu
	ended  chan struct{} // closed when stdout ends
	exited chan error
}

// startUp builds the binary and starts `moegrid up` on free ports, waiting
// for its banner.
func startUp(t *testing.T) *upCluster {
	t.Helper()
	dir := t.TempDir()
	bin := filepath.Join(dir, "moegrid")
	build := exec.Command("go", "build", "-o", bin, ".")
	build.Stderr = os.Stderr
	if err := build.Run(); err != nil {
		t.Fatalf("go build: %v", err)
	}
	state, cache := filepath.Join(dir, "state"), filepath.Join(dir, "cache")
	u := &upCluster{t: t, bin: bin, dir: state, env: append(os.Environ(), "MOEGRID_STATE_DIR="+state), ended: make(chan struct{}), exited: make(chan error, 1)}
	u.cmd = exec.Command(bin, "up", "--state-dir", state, "--cache-dir", cache,
		"--router-grpc-addr", "127.0.0.1:0", "--router-http-addr", "127.0.0.1:0", "--coordinator-addr", "127.0.0.1:0",
		"--lease-ttl", "3s", "--restart-backoff", "200ms")
	u.cmd.Env = u.env
	stdout, err := u.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	u.cmd.Stderr = os.Stderr
	if err := u.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		u.cmd.Process.Kill()
		select {
		case <-u.exited:
		case <-time.After(30 * time.Second):
		}
	})
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			u.mu.Lock()
			u.out = append(u.out, sc.Text())
			u.mu.Unlock()
		}
		close(u.ended)
		u.exited <- u.cmd.Wait()
	}()
	u.waitOutput("Ctrl-C stops everything", 3*time.Minute)
	if u.state, err = up.ReadState(state); err != nil {
		t.Fatal(err)
	}
	return u
}

func (u *upCluster) output() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	return strings.Join(u.out, "\n")
}

// waitOutput waits for up's stdout to contain want.
func (u *upCluster) waitOutput(want string, timeout time.Duration) {
	u.t.Helper()
	u.waitOutputN(want, 1, timeout)
}

// waitOutputN waits for up's stdout to contain want n times.
func (u *upCluster) waitOutputN(want string, n int, timeout time.Duration) {
	u.t.Helper()
	deadline := time.Now().Add(timeout)
	for strings.Count(u.output(), want) < n {
		select {
		case <-u.ended:
			u.t.Fatalf("moegrid up ended before printing %q:\n%s", want, u.output())
		default:
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("moegrid up did not print %q in %v:\n%s", want, timeout, u.output())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// run runs a moegrid command against the cluster and returns its stdout.
func (u *upCluster) run(args ...string) ([]byte, error) {
	cmd := exec.Command(u.bin, args...)
	cmd.Env = u.env
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	b, err := cmd.Output()
	if err != nil {
		return b, fmt.Errorf("moegrid %s: %v: %s", strings.Join(args, " "), err, stderr.String())
	}
	return b, nil
}

func (u *upCluster) mustRun(args ...string) []byte {
	u.t.Helper()
	b, err := u.run(args...)
	if err != nil {
		u.t.Fatal(err)
	}
	return b
}

// greedy generates 8 tokens after the ids 1, 415 through the cluster.
func (u *upCluster) greedy(args ...string) ([]int, error) {
	b, err := u.run(append([]string{"generate", "--ids", "1,415", "--max-tokens", "8", "--temperature", "0", "--output", "json"}, args...)...)
	if err != nil {
		return nil, err
	}
	var res struct {
		IDs []int `json:"ids"`
	}
	err = json.Unmarshal(b, &res)
	return res.IDs, err
}

// eventuallyGreedy retries greedy until it gives want.
func (u *upCluster) eventuallyGreedy(want []int, timeout time.Duration) {
	u.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got, err := u.greedy("--timeout", "20s")
		if err == nil && slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			u.t.Fatalf("generation did not come back in %v: got %v, %v; want %v\n%s", timeout, got, err, want, u.output())
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// leader asks the coordinator at addr who leads.
func (u *upCluster) leader(addr string) (string, error) {
	b, err := u.run("nodes", "--coordinator", addr, "--output", "json", "--timeout", "3s")
	if err != nil {
		return "", err
	}
	var st struct {
		Leader string `json:"leader"`
	}
	err = json.Unmarshal(b, &st)
	return st.Leader, err
}

// child returns the pid of up's child with the given --id.
func (u *upCluster) child(id string) int {
	u.t.Helper()
	for _, pid := range childrenOf(u.cmd.Process.Pid) {
		b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if i := slices.Index(args, "--id"); i >= 0 && i+1 < len(args) && args[i+1] == id {
			return pid
		}
	}
	u.t.Fatalf("no child of moegrid up runs --id %s", id)
	return 0
}

// corpusWords returns the words of text and how many of them occur in the
// demo model's training text.
func corpusWords(t *testing.T, text string) (words []string, known int) {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "model", "demo", "testdata", "words.txt"))
	if err != nil {
		t.Fatal(err)
	}
	corpus := map[string]bool{}
	for _, w := range strings.Fields(string(data)) {
		corpus[w] = true
	}
	words = regexp.MustCompile(`[A-Za-z]+`).FindAllString(text, -1)
	for _, w := range words {
		if corpus[strings.ToLower(w)] {
			known++
		}
	}
	return words, known
}

// TestUpEndToEnd drives the built binary: `moegrid up` starts the whole
// cluster, `moegrid generate` reaches it with no address and gets the
// in-process model's greedy tokens, `moegrid nodes` lists the 8 nodes;
// then the cluster survives its children's deaths: a generate given a dead
// router first goes to the live one, a router stopped with SIGTERM finishes
// its stream, an expert node and the router killed with SIGKILL come back,
// a killed coordinator leader is replaced by the other; and Ctrl-C stops
// everything, leaving no process behind.
func TestUpEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and starts 12 processes")
	}
	u := startUp(t)
	out := u.output()
	if !strings.Contains(out, "moegrid is up: 8 expert nodes, 2 coordinators") || !strings.Contains(out, `moegrid generate "`) {
		t.Errorf("the banner lacks the cluster summary or the generate command:\n%s", out)
	}
	st := u.state

	cluster, err := u.greedy()
	if err != nil {
		t.Fatal(err)
	}
	var local struct {
		IDs []int `json:"ids"`
	}
	if err := json.Unmarshal(u.mustRun("model", "generate", "--model", st.ModelDir, "--ids", "1,415", "--max-tokens", "8"), &local); err != nil {
		t.Fatal(err)
	}
	if len(cluster) != 8 || !slices.Equal(cluster, local.IDs) {
		t.Errorf("cluster generated %v, in-process %v", cluster, local.IDs)
	}
	// The default model is the trained demo model: its greedy continuation
	// is English, in words of its corpus.
	text := string(u.mustRun("generate", "And God said", "--max-tokens", "40", "--ignore-eos"))
	if words, known := corpusWords(t, text); len(words) < 15 || float64(known) < 0.8*float64(len(words)) {
		t.Errorf("generate printed %d words, %d of them in the corpus, want >= 15 and 80%%: %q", len(words), known, text)
	}
	var status struct {
		Nodes []struct {
			ID    string `json:"id"`
			State string `json:"state"`
		} `json:"nodes"`
	}
	if err := json.Unmarshal(u.mustRun("nodes", "--coordinator", st.CoordinatorGRPC, "--output", "json"), &status); err != nil {
		t.Fatal(err)
	}
	if len(status.Nodes) != 8 {
		t.Errorf("moegrid nodes lists %d nodes, want 8", len(status.Nodes))
	}
	children := childrenOf(u.cmd.Process.Pid)
	if len(children) != 11 {
		t.Errorf("moegrid up has %d child processes, want 11 (2 coordinators, 8 nodes, router)", len(children))
	}

	t.Run("failover to the next router", func(t *testing.T) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		dead := l.Addr().String()
		l.Close()
		got, err := u.greedy("--addr", dead+","+st.RouterGRPC)
		if err != nil || !slices.Equal(got, local.IDs) {
			t.Errorf("generate with a dead router first: %v, %v; want %v", got, err, local.IDs)
		}
		if _, err := u.greedy("--addr", dead); err == nil {
			t.Error("generate with only a dead router succeeded")
		}
	})

	t.Run("router drains its streams on SIGTERM", func(t *testing.T) {
		const n = 1000
		cmd := exec.Command(u.bin, "generate", "--ids", "1,415", "--max-tokens", strconv.Itoa(n), "--ignore-eos", "--temperature", "0")
		cmd.Env = u.env
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		first := make([]byte, 1)
		if _, err := io.ReadFull(stdout, first); err != nil {
			t.Fatalf("no token streamed: %v", err)
		}
		t0 := time.Now()
		if err := syscall.Kill(u.child("router-0"), syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, stdout)
		err = cmd.Wait()
		took := time.Since(t0)
		want := fmt.Sprintf("[length; 2 prompt + %d completion tokens]", n)
		if err != nil || !strings.Contains(stderr.String(), want) {
			t.Errorf("the stream in flight when the router got SIGTERM ended with %v, %q; want %s", err, stderr.String(), want)
		}
		t.Logf("the stream finished %v after SIGTERM", took.Round(time.Millisecond))
		u.waitOutput("router restarted", 30*time.Second)
		u.eventuallyGreedy(local.IDs, 90*time.Second)
	})

	t.Run("SIGKILLed node and router come back", func(t *testing.T) {
		for _, id := range []string{"expert-3", "router-0"} {
			if err := syscall.Kill(u.child(id), syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
		}
		u.waitOutput("expert-3 restarted", 30*time.Second)
		u.waitOutputN("router restarted", 2, 30*time.Second)
		if !regexp.MustCompile(`expert-3 exited after \S+: signal: killed; restart 1 in`).MatchString(u.output()) {
			t.Errorf("the node's death is not shown as it was:\n%s", u.output())
		}
		u.eventuallyGreedy(local.IDs, 90*time.Second)
	})

	t.Run("killed coordinator leader is replaced", func(t *testing.T) {
		var leader string
		deadline := time.Now().Add(30 * time.Second)
		for leader == "" {
			leader, err = u.leader(st.Coordinators[0])
			if time.Now().After(deadline) {
				t.Fatalf("no leader: %q, %v", leader, err)
			}
			time.Sleep(200 * time.Millisecond)
		}
		ids := []string{"coordinator-0", "coordinator-1"}
		i := slices.Index(ids, leader)
		if i < 0 {
			t.Fatalf("leader %q is none of %v", leader, ids)
		}
		other, otherAddr := ids[1-i], st.Coordinators[1-i]
		if err := syscall.Kill(u.child(leader), syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		for {
			got, err := u.leader(otherAddr)
			if err == nil && got == other {
				break
			}
			if time.Since(t0) > 30*time.Second {
				t.Fatalf("leader still %q (%v) 30s after %s was killed", got, err, leader)
			}
			time.Sleep(200 * time.Millisecond)
		}
		t.Logf("%s leads %v after %s was killed", other, time.Since(t0).Round(100*time.Millisecond), leader)
		u.waitOutput(leader+" restarted", 30*time.Second)
	})

	children = childrenOf(u.cmd.Process.Pid)
	if len(children) != 11 {
		t.Errorf("after the restarts moegrid up has %d child processes, want 11", len(children))
	}
	if err := u.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	<-u.ended
	select {
	case err := <-u.exited:
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
	if _, err := os.Stat(up.StateFile(u.dir)); !os.IsNotExist(err) {
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

// TestGenerateStaleUpState: the state a killed `moegrid up` left behind is
// reported as such, not as a connection refused by its old address.
func TestGenerateStaleUpState(t *testing.T) {
	dir := t.TempDir()
	gone := exec.Command("true")
	if err := gone.Run(); err != nil {
		t.Fatal(err)
	}
	st, err := json.Marshal(up.State{PID: gone.Process.Pid, RouterGRPC: "127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(up.StateFile(dir), st, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MOEGRID_STATE_DIR", dir)
	root := newRootCmd()
	root.SetArgs([]string{"generate", "Hello"})
	root.SetOut(io.Discard)
	err = root.ExecuteContext(t.Context())
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("(pid %d) is not running", gone.Process.Pid)) {
		t.Errorf("generate with a stale state file: %v", err)
	}
}
