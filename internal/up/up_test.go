package up

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// TestEtcdCompacts checks that the embedded etcd compacts its history by
// itself: a key rewritten over and over leaves no old revisions behind.
func TestEtcdCompacts(t *testing.T) {
	e, endpoint, err := startEtcd(filepath.Join(t.TempDir(), "etcd"), time.Second, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		e.Close()
		<-e.Err()
	}()
	cli, err := clientv3.New(clientv3.Config{Endpoints: []string{endpoint}, DialTimeout: 5 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	ctx := t.Context()
	first, err := cli.Put(ctx, "heartbeat", "0")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(15 * time.Second)
	for i := 1; ; i++ {
		if _, err := cli.Put(ctx, "heartbeat", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		_, err := cli.Get(ctx, "heartbeat", clientv3.WithRev(first.Header.Revision))
		if errors.Is(err, rpctypes.ErrCompacted) {
			t.Logf("revision %d compacted after %d rewrites", first.Header.Revision, i)
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		if time.Now().After(deadline) {
			t.Fatalf("revision %d still readable 15s after it was written, with 1s compaction", first.Header.Revision)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// lines is an io.Writer that collects the supervisor's messages.
type lines struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *lines) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *lines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

var restartIn = regexp.MustCompile(`restart (\d+) in (\S+) `)

// delays waits until out reports n restarts of children and returns the
// delays it announced, in order.
func delays(t *testing.T, out *lines, n int) []string {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		m := restartIn.FindAllStringSubmatch(out.String(), -1)
		if len(m) >= n {
			var d []string
			for _, x := range m[:n] {
				d = append(d, x[2])
			}
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d restarts reported in 20s, want %d:\n%s", len(m), n, out)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestRestartBackoff runs real processes under the supervisor: one that
// dies at once is restarted after delays that double up to the cap; one
// that runs longer than Reset before each death is restarted after Min
// every time.
func TestRestartBackoff(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script string
		b      Backoff
		want   string
	}{
		{"quick deaths double", "exit 3", Backoff{Min: 20 * time.Millisecond, Max: 80 * time.Millisecond, Reset: time.Hour},
			"20ms 40ms 80ms 80ms 80ms"},
		{"healthy runs reset", "sleep 0.3; exit 1", Backoff{Min: 20 * time.Millisecond, Max: time.Second, Reset: 200 * time.Millisecond},
			"20ms 20ms 20ms"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := &lines{}
			s := newSupervisor("/bin/sh", t.TempDir(), 5*time.Second, tc.b, out, nil)
			s.arm()
			if err := s.start("crasher", false, []string{"-c", tc.script}); err != nil {
				t.Fatal(err)
			}
			got := delays(t, out, len(strings.Fields(tc.want)))
			s.stopAll()
			if strings.Join(got, " ") != tc.want {
				t.Errorf("restart delays %v, want %s\n%s", got, tc.want, out)
			}
			if !strings.Contains(out.String(), "crasher exited after") || !strings.Contains(out.String(), "crasher restarted (pid ") {
				t.Errorf("exits and restarts are not shown:\n%s", out)
			}
		})
	}
}

// TestExitBeforeReady: a child that dies before the supervisor is armed is
// reported, not restarted, and arm refuses.
func TestExitBeforeReady(t *testing.T) {
	out := &lines{}
	s := newSupervisor("/bin/sh", t.TempDir(), 5*time.Second, Backoff{Min: 10 * time.Millisecond, Max: 10 * time.Millisecond, Reset: time.Hour}, out, nil)
	defer s.stopAll()
	if err := s.start("bad", false, []string{"-c", "echo no such model >&2; exit 2"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		name, err := s.exited()
		if name != "" {
			if name != "bad" || !strings.Contains(err.Error(), "no such model") {
				t.Errorf("exited = %q, %v; want bad with its last log lines", name, err)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the exit was not reported")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if name, _ := s.arm(); name != "bad" {
		t.Errorf("arm after an exit = %q, want bad", name)
	}
	time.Sleep(100 * time.Millisecond)
	if strings.Contains(out.String(), "restart") {
		t.Errorf("a child that died before ready was restarted:\n%s", out)
	}
}

// TestStopOrder: stopAll stops the first-marked child (the router) and
// waits for it before it signals the others, and kills what ignores
// SIGTERM after the stop timeout.
func TestStopOrder(t *testing.T) {
	dir := t.TempDir()
	order := filepath.Join(dir, "order")
	s := newSupervisor("/bin/sh", dir, 2*time.Second, Backoff{}, &lines{}, nil)
	// The router takes a while to drain; the node notes when it is told
	// to stop; the stubborn one ignores SIGTERM.
	script := func(name string, drain string) []string {
		return []string{"-c", fmt.Sprintf(`trap 'sleep %s; echo %s >> %s; exit 0' TERM; while :; do sleep 0.05; done`, drain, name, order)}
	}
	for _, c := range []struct {
		name  string
		first bool
		args  []string
	}{
		{"node", false, script("node", "0")},
		{"stubborn", false, []string{"-c", `trap '' TERM; while :; do sleep 0.05; done`}},
		{"router", true, script("router", "0.3")},
	} {
		if err := s.start(c.name, c.first, c.args); err != nil {
			t.Fatal(err)
		}
	}
	s.arm()
	time.Sleep(200 * time.Millisecond) // let the shells set their traps
	t0 := time.Now()
	s.stopAll()
	took := time.Since(t0)
	got, _ := readFile(order)
	if got != "router\nnode\n" {
		t.Errorf("stop order %q, want router then node", got)
	}
	if took > 6*time.Second {
		t.Errorf("stopAll took %v with a 2s stop timeout per stage", took)
	}
	for _, c := range s.children {
		select {
		case <-c.done:
		default:
			t.Errorf("%s still runs after stopAll", c.name)
		}
	}
}

func readFile(path string) (string, error) {
	b, err := os.ReadFile(path)
	return string(b), err
}
