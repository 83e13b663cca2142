package up

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/moegrid/moegrid/internal/retry"
)

// supervisor owns the child processes: it starts them, restarts the ones
// that die once it is armed, and stops them all.
type supervisor struct {
	exe         string
	logs        string
	stopTimeout time.Duration
	backoff     Backoff
	out         io.Writer // safe for concurrent use
	log         *slog.Logger

	// ctx ends the restart loops; stopAll cancels it and waits on loops.
	ctx    context.Context
	cancel context.CancelFunc
	loops  sync.WaitGroup

	mu sync.Mutex
	// children holds the current process of every child, in start order;
	// a restart replaces the entry. Protected by mu.
	children []*child
	// armed is set once the cluster is ready: from then on a dead child is
	// restarted, before it the death is reported by exited. Protected by mu.
	armed bool
}

// child is one run of one child process.
type child struct {
	name  string
	args  []string
	first bool // stopped first, before the others: the router
	cmd   *exec.Cmd
	start time.Time
	done  chan struct{}
	err   error // set before done is closed
}

// newSupervisor returns a supervisor of children running exe, logging to
// files in logs; out receives the exits and restarts and must be safe for
// concurrent use; log may be nil.
func newSupervisor(exe, logs string, stopTimeout time.Duration, b Backoff, out io.Writer, log *slog.Logger) *supervisor {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	b.setDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	return &supervisor{exe: exe, logs: logs, stopTimeout: stopTimeout, backoff: b, out: out, log: log, ctx: ctx, cancel: cancel}
}

func (s *supervisor) logPath(name string) string { return filepath.Join(s.logs, name+".log") }

// start starts a child and the loop that keeps it running. first marks the
// child that stopAll stops before all others.
func (s *supervisor) start(name string, first bool, args []string) error {
	c, err := s.spawn(&child{name: name, args: args, first: first}, false)
	if err != nil {
		return err
	}
	s.mu.Lock()
	s.children = append(s.children, c)
	s.mu.Unlock()
	s.loops.Add(1)
	go s.keep(c)
	return nil
}

// spawn starts a process for the child described by spec, appending to its
// log when it is a restart.
func (s *supervisor) spawn(spec *child, restart bool) (*child, error) {
	flags := os.O_WRONLY | os.O_CREATE | os.O_TRUNC
	if restart {
		flags = os.O_WRONLY | os.O_CREATE | os.O_APPEND
	}
	logf, err := os.OpenFile(s.logPath(spec.name), flags, 0o644)
	if err != nil {
		return nil, fmt.Errorf("up: %w", err)
	}
	if restart {
		fmt.Fprintf(logf, "--- moegrid up restarts %s at %s ---\n", spec.name, time.Now().UTC().Format(time.RFC3339))
	}
	cmd := exec.Command(s.exe, spec.args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("up: start %s: %w", spec.name, err)
	}
	c := &child{name: spec.name, args: spec.args, first: spec.first, cmd: cmd, start: time.Now(), done: make(chan struct{})}
	go func() {
		c.err = cmd.Wait()
		logf.Close()
		close(c.done)
	}()
	s.log.Debug("started", "child", c.name, "pid", cmd.Process.Pid)
	return c, nil
}

// keep restarts c whenever it dies after the supervisor is armed, until
// stopAll. Each restart waits the backoff: it doubles with every death that
// follows a run shorter than backoff.Reset and starts over after a longer
// one.
func (s *supervisor) keep(c *child) {
	defer s.loops.Done()
	delay := retry.Delay{Min: s.backoff.Min, Max: s.backoff.Max}
	restarts := 0
	for {
		select {
		case <-c.done:
		case <-s.ctx.Done():
			return
		}
		s.mu.Lock()
		armed := s.armed
		s.mu.Unlock()
		if !armed || s.ctx.Err() != nil {
			return // before ready, exited reports it; after stopAll it was asked to
		}
		ran := time.Since(c.start).Round(time.Millisecond)
		if ran >= s.backoff.Reset {
			delay.Reset()
		}
		for {
			wait := delay.Next()
			restarts++
			s.log.Warn("child exited; restarting it", "child", c.name, "err", c.err, "ran", ran, "restart_in", wait, "restarts", restarts)
			fmt.Fprintf(s.out, "%s exited after %v: %v; restart %d in %v (log %s)\n", c.name, ran, c.err, restarts, wait, s.logPath(c.name))
			if !retry.Sleep(s.ctx, wait) {
				return
			}
			n, err := s.spawn(c, true)
			if err != nil {
				s.log.Error("restart failed", "child", c.name, "err", err)
				fmt.Fprintf(s.out, "%s: %v\n", c.name, err)
				ran = 0
				continue
			}
			s.mu.Lock()
			for i, old := range s.children {
				if old == c {
					s.children[i] = n
				}
			}
			s.mu.Unlock()
			fmt.Fprintf(s.out, "%s restarted (pid %d)\n", n.name, n.cmd.Process.Pid)
			c = n
			break
		}
	}
}

// exited returns the name and error of a child that has exited, if any.
func (s *supervisor) exited() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.exitedLocked()
}

func (s *supervisor) exitedLocked() (string, error) {
	for _, c := range s.children {
		select {
		case <-c.done:
			return c.name, fmt.Errorf("%v; last lines: %s", c.err, tail(s.logPath(c.name)))
		default:
		}
	}
	return "", nil
}

// arm turns restarts on, unless a child has already exited: then it
// returns that child, whose loop has ended, as exited does.
func (s *supervisor) arm() (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if name, err := s.exitedLocked(); name != "" {
		return name, err
	}
	s.armed = true
	return "", nil
}

// stopAll ends the restart loops, then sends SIGTERM to the router and
// waits for it, so that it finishes its streams while the nodes still
// answer, then does the same for every other child; what outlives
// stopTimeout is killed. It returns once every child is gone.
func (s *supervisor) stopAll() {
	s.cancel()
	s.loops.Wait()
	s.mu.Lock()
	children := s.children
	s.mu.Unlock()
	var first, rest []*child
	for _, c := range children {
		if c.first {
			first = append(first, c)
		} else {
			rest = append(rest, c)
		}
	}
	s.stop(first)
	s.stop(rest)
}

// stop sends SIGTERM to children, waits up to stopTimeout, then kills what
// is left and waits for it.
func (s *supervisor) stop(children []*child) {
	for _, c := range children {
		c.cmd.Process.Signal(syscall.SIGTERM)
	}
	timer := time.NewTimer(s.stopTimeout)
	defer timer.Stop()
	for _, c := range children {
		select {
		case <-c.done:
			continue
		case <-timer.C:
		}
		// Out of time: kill whatever is still running.
		for _, k := range children {
			select {
			case <-k.done:
			default:
				s.log.Warn("child did not stop in time; killing it", "child", k.name)
				k.cmd.Process.Kill()
			}
		}
		break
	}
	for _, c := range children {
		<-c.done
	}
}

// waitReady polls url until it answers 200, a child exits, or the timeout.
func waitReady(ctx context.Context, client *http.Client, url string, timeout time.Duration, sup *supervisor) error {
	deadline := time.Now().Add(timeout)
	for {
		if name, err := sup.exited(); name != "" {
			return fmt.Errorf("%s exited before the cluster was ready: %v", name, err)
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("router not ready after %v", timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// tail returns the last lines of a log file.
func tail(path string) string {
	f, err := os.Open(path)
	if err != nil {
		return ""
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 5 {
			lines = lines[1:]
		}
	}
	b, _ := json.Marshal(lines)
	return string(b)
}
