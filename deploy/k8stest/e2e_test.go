//go:build e2e

package k8stest

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"
)

// skipIf skips a test only when MOEGRID_E2E_SKIP names it, and says so:
// these tests never skip because something they need is missing.
func skipIf(t *testing.T, name string) {
	t.Helper()
	if slices.Contains(strings.Split(os.Getenv("MOEGRID_E2E_SKIP"), ","), name) {
		t.Skipf("skipped: MOEGRID_E2E_SKIP=%s", os.Getenv("MOEGRID_E2E_SKIP"))
	}
}

// proc is a child process whose output goes to a log file, stopped at the
// end of the test (SIGTERM, then SIGKILL after a grace period).
type proc struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
	err  error
}

func startProc(t *testing.T, dir, name, bin string, args ...string) *proc {
	t.Helper()
	logPath := filepath.Join(dir, name+".log")
	f, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Dir = dir
	// Its own process group: a signal to the test's group does not reach
	// it before the cleanup does, and the cleanup can stop it alone.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		t.Fatalf("starting %s: %v", name, err)
	}
	// e2e.sh stops what a test binary that died left behind: it kills the
	// processes listed here whose executable is still the one started.
	if pf := os.Getenv("MOEGRID_E2E_PIDFILE"); pf != "" {
		if f, err := os.OpenFile(pf, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644); err == nil {
			fmt.Fprintf(f, "%d %s\n", cmd.Process.Pid, bin)
			f.Close()
		}
	}
	p := &proc{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		f.Close()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.stop(10 * time.Second)
		if t.Failed() {
			t.Logf("--- last lines of %s ---\n%s", name, tail(logPath, 30))
		}
	})
	return p
}

func (p *proc) stop(grace time.Duration) {
	select {
	case <-p.done:
		return
	default:
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
	case <-time.After(grace):
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func tail(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// run runs a command and returns its stdout; stderr goes into the error.
func run(ctx context.Context, env []string, name string, args ...string) (string, error) {
	out, _, err := run2(ctx, env, name, args...)
	return out, err
}

// run2 is run that also returns stderr.
func run2(ctx context.Context, env []string, name string, args ...string) (string, string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	if env != nil {
		cmd.Env = env
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String(), errb.String(), fmt.Errorf("%s %s: %w\n%s%s", filepath.Base(name), strings.Join(args, " "), err, errb.String(), out.String())
	}
	return out.String(), errb.String(), nil
}

// eventually polls fn every interval until it returns nil or the timeout
// passes, then fails with fn's last error.
func eventually(t *testing.T, timeout, interval time.Duration, what string, fn func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var err error
	for {
		if err = fn(); err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v: %v", what, timeout, err)
		}
		time.Sleep(interval)
	}
}

// testContext is the test's context with a deadline short of the test
// binary's own, so that cleanups still run when it is hit.
func testContext(t *testing.T, d time.Duration) context.Context {
	ctx := t.Context()
	if dl, ok := t.Deadline(); ok && time.Until(dl)-30*time.Second < d {
		d = time.Until(dl) - 30*time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, d)
	t.Cleanup(cancel)
	return ctx
}

// docs joins YAML documents into one stream.
func docs(parts ...[]byte) []byte { return bytes.Join(parts, []byte("\n---\n")) }
