//go:build e2e

package k8stest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	mrand "math/rand/v2"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// containerTLS runs the container cluster as deploy/k8s runs the pods: mutual
// TLS between all of them and to etcd, an encrypted gossip ring.
const containerTLS = true

// The container cluster: what each container runs and where.
const (
	nExperts     = 8
	minReplicas  = 2 // every expert on two nodes: a killed node loses no expert
	nodeLeaseTTL = "4s"
	// coordinatorLeaseTTL is the coordinators' election lease.
	coordinatorLeaseTTL = 5 * time.Second
	prompt              = "1,415,2936,9060,285,1142" // token ids: BOS and a short prompt
	genTokens           = 12
)

// dockerCluster is a moegrid cluster in containers on a private network.
type dockerCluster struct {
	ctx     context.Context
	image   string
	etcd    string
	label   string // every container and the network carry it
	prefix  string // container name prefix
	network string
	subnet  string // "10.213.N"
	model   string // host directory with the synthetic checkpoint
	// certs is the host directory of every member's certificate, the CA
	// certificate and the gossip key, mounted read-only at certsDir; empty
	// without containerTLS.
	certs string
	// endpoints are the etcd client URLs every member is given.
	endpoints string
	// admin is the role whose container runs the moegrid CLI, and
	// coordinators the addresses, seen from there, `moegrid nodes` asks in
	// turn.
	admin        string
	coordinators []string
}

// certMember is a member of the cluster that gets a certificate: its role,
// its name (the certificate's file name and identity) and its addresses.
type certMember struct {
	role, name string
	hosts      []string
}

// certsDir is where the containers find their certificates.
const certsDir = "/etc/moegrid/tls"

// makeCerts makes the cluster's CA and gossip key with the moegrid binary
// and issues each member (and an admin) a certificate for its addresses,
// as an operator would with `moegrid certs`. The CA key is removed
// afterwards: no container needs it.
func (c *dockerCluster) makeCerts(t *testing.T, dir string, members []certMember) {
	t.Helper()
	bin := moegridBinary(t)
	if out, err := run(c.ctx, cleanEnv(), bin, "certs", "init", "--dir", dir, "--ca-days", "2"); err != nil {
		t.Fatal(err, out)
	}
	issue := func(role, name string, hosts ...string) {
		args := []string{"certs", "issue", "--dir", dir, "--role", role, "--name", name, "--days", "1"}
		if len(hosts) > 0 {
			args = append(args, "--hosts", strings.Join(hosts, ","))
		}
		if out, err := run(c.ctx, cleanEnv(), bin, args...); err != nil {
			t.Fatal(err, out)
		}
	}
	for _, m := range members {
		issue(m.role, m.name, m.hosts...)
	}
	issue("admin", "admin")
	if err := os.Remove(filepath.Join(dir, "ca.key")); err != nil {
		t.Fatal(err)
	}
	// The servers run as user 65532, not as the owner of these files.
	if err := makeWorldReadable(dir); err != nil {
		t.Fatal(err)
	}
	c.certs = dir
}

// tlsFlags are the flags that give a member (or a client) the identity
// name from the certificates directory.
func (c *dockerCluster) tlsFlags(name string) []string {
	if c.certs == "" {
		return nil
	}
	return []string{
		"--tls-cert", certsDir + "/" + name + ".crt", "--tls-key", certsDir + "/" + name + ".key",
		"--tls-ca", certsDir + "/ca.crt",
	}
}

func (c *dockerCluster) etcdScheme() string {
	if c.certs == "" {
		return "http"
	}
	return "https"
}

// etcdArgs are the flags of an etcd member named name, reached at host, that
// serves clients as deploy/k8s/base/etcd.yaml does: on TLS with client
// certificates required when the cluster has certificates. Its metrics are
// in plaintext on port 2381.
func (c *dockerCluster) etcdArgs(name, host string) []string {
	args := []string{"--name=" + name, "--data-dir=/var/lib/etcd/data",
		"--listen-client-urls=" + c.etcdScheme() + "://0.0.0.0:2379", "--advertise-client-urls=" + c.etcdScheme() + "://" + host + ":2379",
		"--listen-metrics-urls=http://0.0.0.0:2381"}
	if c.certs != "" {
		args = append(args, "--cert-file="+certsDir+"/"+name+".crt", "--key-file="+certsDir+"/"+name+".key",
			"--trusted-ca-file="+certsDir+"/ca.crt", "--client-cert-auth")
	}
	return args
}

func (c *dockerCluster) name(role string) string { return c.prefix + role }
func (c *dockerCluster) ip(host int) string      { return fmt.Sprintf("%s.%d", c.subnet, host) }

const (
	ipEtcd        = 2
	ipCoordinator = 3
	ipRouter      = 4
	ipExpert0     = 10
)

func (c *dockerCluster) docker(args ...string) (string, error) {
	return run(c.ctx, nil, "docker", args...)
}

func (c *dockerCluster) mustDocker(t *testing.T, args ...string) string {
	t.Helper()
	out, err := c.docker(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// newDockerCluster creates the network and registers the cleanup that
// removes every container and the network, whatever happens.
func newDockerCluster(t *testing.T, ctx context.Context, image, etcdImage, model string) *dockerCluster {
	t.Helper()
	if _, err := run(ctx, nil, "docker", "version", "--format", "{{.Server.Version}}"); err != nil {
		t.Fatalf("Docker is needed for the container cluster test (MOEGRID_E2E_SKIP=docker skips it): %v", err)
	}
	b := make([]byte, 4)
	rand.Read(b)
	id := hex.EncodeToString(b)
	c := &dockerCluster{
		ctx: ctx, image: image, etcd: etcdImage, model: model,
		admin:   "coordinator",
		label:   "moegrid-e2e=" + id,
		prefix:  "moegrid-e2e-" + id + "-",
		network: "moegrid-e2e-" + id,
	}
	t.Cleanup(func() { c.cleanup(t) })
	// A private (--internal: no way out) network with a subnet of our own,
	// so that every member has a fixed address, as a pod IP in Kubernetes,
	// and keeps it across disconnect and reconnect.
	var err error
	for range 10 {
		c.subnet = fmt.Sprintf("10.213.%d", mrand.IntN(256))
		_, err = c.docker("network", "create", "--internal", "--driver", "bridge", "--label", c.label,
			"--subnet", c.subnet+".0/24", c.network)
		if err == nil {
			return c
		}
		if !strings.Contains(err.Error(), "overlap") {
			break
		}
	}
	t.Fatalf("creating the network: %v", err)
	return nil
}

// cleanup removes what the test made, found by its label, even when the
// test failed half way.
func (c *dockerCluster) cleanup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.ctx), 2*time.Minute)
	defer cancel()
	if t.Failed() {
		c.dumpLogs(t, ctx)
	}
	ids, _ := run(ctx, nil, "docker", "ps", "-aq", "--filter", "label="+c.label)
	if ids := strings.Fields(ids); len(ids) > 0 {
		if _, err := run(ctx, nil, "docker", append([]string{"rm", "-f", "-v"}, ids...)...); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	if _, err := run(ctx, nil, "docker", "network", "rm", c.network); err != nil && !strings.Contains(err.Error(), "No such network") && !strings.Contains(err.Error(), "not found") {
		t.Errorf("cleanup: %v", err)
	}
}

func (c *dockerCluster) dumpLogs(t *testing.T, ctx context.Context) {
	names, _ := run(ctx, nil, "docker", "ps", "-a", "--filter", "label="+c.label, "--format", "{{.Names}}")
	for _, n := range strings.Fields(names) {
		cmd := exec.CommandContext(ctx, "docker", "logs", "--tail", "25", n)
		out, _ := cmd.CombinedOutput()
		t.Logf("--- docker logs %s ---\n%s", n, out)
	}
}

// start runs a container of the cluster, locked down as the Kubernetes
// manifests lock the pods down: read-only root, no capabilities, no
// privilege escalation, the image's non-root user.
func (c *dockerCluster) start(t *testing.T, role string, ip int, image string, extra []string, args ...string) {
	t.Helper()
	run := []string{"run", "-d", "--pull", "never", "--name", c.name(role), "--hostname", role, "--label", c.label,
		"--network", c.network, "--ip", c.ip(ip),
		"--read-only", "--tmpfs", "/tmp:rw,size=16m,mode=1777",
		"--cap-drop", "ALL", "--security-opt", "no-new-privileges",
		"--memory", "512m", "--pids-limit", "256",
		"-e", "MOEGRID_LOG_LEVEL=debug"}
	if c.endpoints != "" {
		run = append(run, "-e", "MOEGRID_ETCD_ENDPOINTS="+c.endpoints)
	}
	if c.certs != "" {
		run = append(run, "-v", c.certs+":"+certsDir+":ro")
	}
	run = append(run, extra...)
	run = append(run, image)
	c.mustDocker(t, append(run, args...)...)
}

// startMember runs a moegrid role with the flags the Kubernetes manifests
// give it ($(POD_IP) is the fixed address here).
func (c *dockerCluster) startMember(t *testing.T, role string, ip int, args ...string) {
	t.Helper()
	addr := c.ip(ip)
	common := []string{"--id", role, "--gossip-addr", "0.0.0.0:7946", "--gossip-advertise", addr + ":7946"}
	if c.certs != "" {
		common = append(append(common, c.tlsFlags(role)...), "--gossip-key-file", certsDir+"/gossip.key")
	}
	model := []string{"-v", c.model + ":/models/current:ro"}
	switch args[0] {
	case "coordinator":
		model = nil
	}
	c.start(t, role, ip, c.image, model, append(args, common...)...)
}

// moegrid runs moegrid inside the admin container, so that its calls go
// over the cluster's private network, as an admin.
func (c *dockerCluster) moegrid(args ...string) (string, error) {
	return c.docker(append(append([]string{"exec", c.name(c.admin), "/usr/local/bin/moegrid"}, args...), c.tlsFlags("admin")...)...)
}

type shardJSON struct {
	Expert     int `json:"expert"`
	FirstLayer int `json:"firstLayer"`
	EndLayer   int `json:"endLayer"`
}

// statusJSON is `moegrid nodes --output json`: moegrid.v1.StatusResponse
// in the protobuf JSON mapping.
type statusJSON struct {
	Leader           string `json:"leader"`
	PlacementVersion string `json:"placementVersion"`
	PlacementError   string `json:"placementError"`
	Nodes            []struct {
		ID       string      `json:"id"`
		GRPCAddr string      `json:"grpcAddr"`
		State    string      `json:"state"`
		Alive    bool        `json:"alive"`
		Assigned []shardJSON `json:"assigned"`
		Loaded   []shardJSON `json:"loaded"`
	} `json:"nodes"`
	Shards []struct {
		Shard    shardJSON `json:"shard"`
		Nodes    []string  `json:"nodes"`
		LoadedOn []string  `json:"loadedOn"`
	} `json:"shards"`
	Model struct {
		Experts int `json:"experts"`
		Layers  int `json:"layers"`
	} `json:"model"`
}

// status asks the coordinators in turn; every replica answers, so one
// killed or stopped is no failure.
func (c *dockerCluster) status() (*statusJSON, error) {
	var out string
	var err error
	for _, addr := range c.coordinators {
		if out, err = c.moegrid("nodes", "--coordinator", addr, "--output", "json", "--timeout", "5s"); err == nil {
			break
		}
	}
	if err != nil {
		return nil, err
	}
	var st statusJSON
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		return nil, fmt.Errorf("moegrid nodes --output json: %w\n%s", err, out)
	}
	return &st, nil
}

// healthy says whether every expert is assigned to and loaded on at least
// minReplicas live, ready nodes, none of them in exclude; it returns the
// status it judged.
func healthy(st *statusJSON, exclude ...string) error {
	if st.Leader == "" {
		return errors.New("no leader")
	}
	if st.PlacementError != "" {
		return fmt.Errorf("placement error: %s", st.PlacementError)
	}
	live := map[string]bool{}
	for _, n := range st.Nodes {
		if n.Alive && n.State == "ready" && !slices.Contains(exclude, n.ID) {
			live[n.ID] = true
		}
	}
	covered := map[int]int{}
	for _, s := range st.Shards {
		for _, n := range s.Nodes {
			if slices.Contains(exclude, n) {
				return fmt.Errorf("expert %d is still assigned to %s", s.Shard.Expert, n)
			}
		}
		if s.Shard.FirstLayer != 0 || s.Shard.EndLayer != st.Model.Layers {
			return fmt.Errorf("shard %+v is split; the tiny model fits whole", s.Shard)
		}
		for _, n := range s.LoadedOn {
			if live[n] {
				covered[s.Shard.Expert]++
			}
		}
	}
	for e := range nExperts {
		if covered[e] < minReplicas {
			return fmt.Errorf("expert %d is loaded on %d live nodes, want %d (placement v%s)", e, covered[e], minReplicas, st.PlacementVersion)
		}
	}
	return nil
}

// expertCerts are the certificate members of the nExperts expert nodes,
// expert-I at address ip0+I.
func (c *dockerCluster) expertCerts(ip0 int) []certMember {
	var ms []certMember
	for i := range nExperts {
		ms = append(ms, certMember{"expertnode", fmt.Sprintf("expert-%d", i), []string{c.ip(ip0 + i)}})
	}
	return ms
}

// startCoordinator runs a coordinator replica that keeps every expert on
// minReplicas nodes.
func (c *dockerCluster) startCoordinator(t *testing.T, role string, ip int) {
	t.Helper()
	c.startMember(t, role, ip, "coordinator", "--grpc-addr", "0.0.0.0:7070", "--http-addr", "0.0.0.0:7071",
		"--min-replicas", fmt.Sprint(minReplicas), "--lease-ttl", coordinatorLeaseTTL.String())
}

// startExperts runs the nExperts expert nodes, expert-I at address ip0+I.
func (c *dockerCluster) startExperts(t *testing.T, ip0 int) {
	t.Helper()
	for i := range nExperts {
		id := fmt.Sprintf("expert-%d", i)
		c.startMember(t, id, ip0+i, "expertnode", "--model", "/models/current",
			"--grpc-addr", "0.0.0.0:7100", "--http-addr", "0.0.0.0:9100", "--advertise-addr", c.ip(ip0+i)+":7100",
			"--lease-ttl", nodeLeaseTTL, "--capacity", "1GiB")
	}
}

// startRouter runs a router; extra flags follow the common ones.
func (c *dockerCluster) startRouter(t *testing.T, role string, ip int, extra ...string) {
	t.Helper()
	c.startMember(t, role, ip, append([]string{"router", "--model", "/models/current",
		"--grpc-addr", "0.0.0.0:7400", "--http-addr", "0.0.0.0:8400",
		"--lease-ttl", nodeLeaseTTL, "--wait-for-holder", "45s"}, extra...)...)
}

func (c *dockerCluster) node(st *statusJSON, id string) (state string, alive, found bool) {
	for _, n := range st.Nodes {
		if n.ID == id {
			return n.State, n.Alive, true
		}
	}
	return "", false, false
}

// generate asks the router for a greedy completion of the prompt.
func (c *dockerCluster) generate() ([]int, error) {
	out, err := c.moegrid("generate", "--addr", c.ip(ipRouter)+":7400", "--ids", prompt,
		"--max-tokens", fmt.Sprint(genTokens), "--ignore-eos", "--output", "json", "--timeout", "60s")
	if err != nil {
		return nil, err
	}
	var res struct {
		IDs          []int  `json:"ids"`
		FinishReason string `json:"finish_reason"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		return nil, fmt.Errorf("moegrid generate --output json: %w\n%s", err, out)
	}
	if len(res.IDs) != genTokens {
		return nil, fmt.Errorf("%d tokens (finish %q), want %d", len(res.IDs), res.FinishReason, genTokens)
	}
	return res.IDs, nil
}

func (c *dockerCluster) waitHealthy(t *testing.T, what string, timeout time.Duration, exclude ...string) *statusJSON {
	t.Helper()
	var st *statusJSON
	eventually(t, timeout, time.Second, what, func() error {
		s, err := c.status()
		if err != nil {
			return err
		}
		st = s
		return healthy(s, exclude...)
	})
	return st
}

// TestContainerCluster runs etcd, a coordinator, 8 expert nodes and a router
// as containers of the images from deploy/docker on a private Docker
// network, serving a synthetic checkpoint from a read-only mount, and
// checks that generation survives an expert container killed and another
// cut off the network, that the coordinator re-places their experts, and
// that the cut-off node rejoins when reconnected.
func TestContainerCluster(t *testing.T) {
	skipIf(t, "docker")
	ctx := testContext(t, 12*time.Minute)
	image, etcdImage := images(t, ctx)

	// The model, generated on the host and mounted read-only; the servers
	// run as user 65532, so it must be world-readable.
	model := filepath.Join(t.TempDir(), "tiny")
	if out, err := run(ctx, cleanEnv(), moegridBinary(t), "model", "synth", "--preset", "tiny", "--seed", "7", "--out", model); err != nil {
		t.Fatal(err, out)
	}
	if err := makeWorldReadable(model); err != nil {
		t.Fatal(err)
	}
	// What the in-process model says, for the distributed == local check.
	localOut, err := run(ctx, cleanEnv(), moegridBinary(t), "model", "generate", "--model", model, "--ids", prompt,
		"--max-tokens", fmt.Sprint(genTokens), "--ignore-eos")
	if err != nil {
		t.Fatal(err)
	}
	var local struct{ IDs []int }
	if err := json.Unmarshal([]byte(localOut), &local); err != nil {
		t.Fatal(err, localOut)
	}

	c := newDockerCluster(t, ctx, image, etcdImage, model)
	// moegrid nodes runs inside the coordinator's container and dials it
	// on loopback.
	c.coordinators = []string{"127.0.0.1:7070"}
	if containerTLS {
		c.makeCerts(t, filepath.Join(t.TempDir(), "tls"), append([]certMember{
			{"etcd", "etcd", []string{c.ip(ipEtcd)}},
			{"coordinator", "coordinator", []string{c.ip(ipCoordinator), "127.0.0.1"}},
			{"router", "router", []string{c.ip(ipRouter)}},
		}, c.expertCerts(ipExpert0)...))
	}
	c.endpoints = c.etcdScheme() + "://" + c.ip(ipEtcd) + ":2379"
	start := time.Now()
	// The one member's peer URL is on loopback.
	c.start(t, "etcd", ipEtcd, c.etcd, []string{"--mount", "type=tmpfs,destination=/var/lib/etcd,tmpfs-mode=1777"},
		append(c.etcdArgs("etcd", c.ip(ipEtcd)), "--listen-peer-urls=http://127.0.0.1:2380")...)
	c.startCoordinator(t, "coordinator", ipCoordinator)
	c.startExperts(t, ipExpert0)
	c.startRouter(t, "router", ipRouter, "--call-timeout", "5s")

	st := c.waitHealthy(t, "every expert loaded on 2 nodes", 2*time.Minute)
	if len(st.Nodes) != nExperts {
		t.Fatalf("%d nodes, want %d", len(st.Nodes), nExperts)
	}
	var want []int
	eventually(t, time.Minute, time.Second, "first generation through the router", func() error {
		ids, err := c.generate()
		want = ids
		return err
	})
	t.Logf("cluster up and generating in %v: %v", time.Since(start).Round(time.Second), want)
	if !slices.Equal(want, local.IDs) {
		t.Fatalf("the cluster generated %v, the in-process model %v", want, local.IDs)
	}
	if c.certs != "" {
		c.checkRefusals(t)
	}

	// 1. Kill an expert container (SIGKILL: no drain, no goodbye) while
	// requests run: each completes, with the same tokens, from the replica
	// of its experts; then the coordinator re-places its shards.
	var killed string
	t.Run("kill", func(t *testing.T) {
		victim := holderOf(t, st, 0)
		killed = victim
		var wg sync.WaitGroup
		stop := make(chan struct{})
		var reqErr error
		var n int
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				ids, err := c.generate()
				n++
				if err == nil && !slices.Equal(ids, want) {
					err = fmt.Errorf("generated %v, want %v", ids, want)
				}
				if err != nil {
					reqErr = fmt.Errorf("request %d: %w", n, err)
					return
				}
			}
		}()
		time.Sleep(500 * time.Millisecond)
		c.mustDocker(t, "kill", c.name(victim))
		killed := time.Now()
		c.waitHealthy(t, "the killed node's experts re-placed", 90*time.Second, victim)
		t.Logf("%s killed; its experts re-placed in %v", victim, time.Since(killed).Round(100*time.Millisecond))
		close(stop)
		wg.Wait()
		if reqErr != nil {
			t.Fatal(reqErr)
		}
		t.Logf("%d requests completed during the kill", n)
		if _, err := c.generate(); err != nil {
			t.Fatal(err)
		}
		s, err := c.status()
		if err != nil {
			t.Fatal(err)
		}
		if state, alive, found := c.node(s, victim); found && (alive || state == "ready") {
			t.Errorf("killed node %s still reported %s, alive=%v", victim, state, alive)
		}
		st = s
	})
	if t.Failed() {
		return
	}

	// 2. Cut an expert off the network: it still runs, but nobody reaches
	// it. Gossip declares it dead, its lease expires, its shards move.
	var cut string
	t.Run("disconnect", func(t *testing.T) {
		cut = holderOf(t, st, 1)
		c.mustDocker(t, "network", "disconnect", c.network, c.name(cut))
		from := time.Now()
		eventually(t, 60*time.Second, time.Second, cut+" declared dead", func() error {
			s, err := c.status()
			if err != nil {
				return err
			}
			if _, alive, found := c.node(s, cut); found && alive {
				return fmt.Errorf("%s still alive", cut)
			}
			return nil
		})
		t.Logf("%s declared dead %v after the disconnect", cut, time.Since(from).Round(100*time.Millisecond))
		st = c.waitHealthy(t, "the cut-off node's experts re-placed", 90*time.Second, cut)
		t.Logf("its experts re-placed %v after the disconnect", time.Since(from).Round(100*time.Millisecond))
		// The etcd lease is the authority: wait for the registration to
		// expire too, so that rejoining means registering afresh.
		eventually(t, 60*time.Second, time.Second, cut+" unregistered", func() error {
			s, err := c.status()
			if err != nil {
				return err
			}
			if state, alive, found := c.node(s, cut); found {
				return fmt.Errorf("%s still registered: %s, alive=%v", cut, state, alive)
			}
			return nil
		})
		t.Logf("its registration expired %v after the disconnect", time.Since(from).Round(100*time.Millisecond))
		ids, err := c.generate()
		if err != nil || !slices.Equal(ids, want) {
			t.Fatalf("generate with %s cut off: %v %v, want %v", cut, ids, err, want)
		}
	})
	if t.Failed() {
		return
	}

	// 3. Reconnect it (same address): it rejoins, registered, alive and
	// ready, with whatever the placement now gives it loaded.
	t.Run("reconnect", func(t *testing.T) {
		c.mustDocker(t, "network", "connect", "--ip", c.ip(ipExpert0+expertIndex(t, cut)), c.network, c.name(cut))
		from := time.Now()
		eventually(t, 90*time.Second, time.Second, cut+" rejoined", func() error {
			s, err := c.status()
			if err != nil {
				return err
			}
			for _, n := range s.Nodes {
				if n.ID != cut {
					continue
				}
				if !n.Alive || n.State != "ready" {
					return fmt.Errorf("%s is %s, alive=%v", cut, n.State, n.Alive)
				}
				if !slices.Equal(n.Assigned, n.Loaded) {
					return fmt.Errorf("%s has %v assigned, %v loaded", cut, n.Assigned, n.Loaded)
				}
				st = s
				return healthy(s)
			}
			return fmt.Errorf("%s is not registered", cut)
		})
		t.Logf("%s rejoined %v after the reconnect, holding %v", cut, time.Since(from).Round(100*time.Millisecond), assigned(st, cut))
		ids, err := c.generate()
		if err != nil || !slices.Equal(ids, want) {
			t.Fatalf("generate after the reconnect: %v %v, want %v", ids, err, want)
		}
	})
	if t.Failed() {
		return
	}

	// 4. Restart the killed container: the node comes back under its ID.
	t.Run("restart", func(t *testing.T) {
		c.restartExpert(t, killed)
		from := time.Now()
		eventually(t, 90*time.Second, time.Second, killed+" back", func() error {
			s, err := c.status()
			if err != nil {
				return err
			}
			if state, alive, found := c.node(s, killed); !found || !alive || state != "ready" {
				return fmt.Errorf("%s: registered=%v, %s, alive=%v", killed, found, state, alive)
			}
			st = s
			return healthy(s)
		})
		t.Logf("%s back %v after the restart, holding %v", killed, time.Since(from).Round(100*time.Millisecond), assigned(st, killed))
		ids, err := c.generate()
		if err != nil || !slices.Equal(ids, want) {
			t.Fatalf("generate after the restart: %v %v, want %v", ids, err, want)
		}
		if len(st.Nodes) != nExperts {
			t.Errorf("%d nodes registered, want %d", len(st.Nodes), nExperts)
		}
	})
}

// restartExpert starts a stopped expert node's container again once its
// registration has expired, so that it registers afresh.
func (c *dockerCluster) restartExpert(t *testing.T, id string) {
	t.Helper()
	eventually(t, time.Minute, 500*time.Millisecond, id+"'s registration expired", func() error {
		s, err := c.status()
		if err != nil {
			return err
		}
		if state, _, found := c.node(s, id); found {
			return fmt.Errorf("%s still registered (%s)", id, state)
		}
		return nil
	})
	c.mustDocker(t, "start", c.name(id))
}

// checkRefusals checks that the cluster's TLS is no decoration: a client
// without a certificate, and one whose certificate is another CA's, get
// nothing from the coordinator or the router.
func (c *dockerCluster) checkRefusals(t *testing.T) {
	t.Helper()
	exec := func(args ...string) (string, error) {
		return c.docker(append([]string{"exec", c.name("coordinator"), "/usr/local/bin/moegrid"}, args...)...)
	}
	status := []string{"nodes", "--coordinator", "127.0.0.1:7070", "--output", "json", "--timeout", "5s"}
	gen := []string{"generate", "--addr", c.ip(ipRouter) + ":7400", "--ids", prompt, "--max-tokens", "1", "--timeout", "10s"}
	// A certificate of another CA, with the cluster's CA trusted so that
	// only the server's refusal can fail the call.
	rogue := filepath.Join(c.certs, "rogue")
	if out, err := run(c.ctx, cleanEnv(), moegridBinary(t), "certs", "all", "--dir", rogue, "--days", "1", "--ca-days", "2"); err != nil {
		t.Fatal(err, out)
	}
	if err := makeWorldReadable(rogue); err != nil {
		t.Fatal(err)
	}
	other := []string{"--tls-cert", certsDir + "/rogue/admin.crt", "--tls-key", certsDir + "/rogue/admin.key", "--tls-ca", certsDir + "/ca.crt"}
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"status in plaintext", append(slices.Clone(status), "--insecure")},
		{"status with another CA's certificate", append(slices.Clone(status), other...)},
		{"generate in plaintext", append(slices.Clone(gen), "--insecure")},
		{"generate with another CA's certificate", append(slices.Clone(gen), other...)},
	} {
		out, err := exec(tc.args...)
		switch {
		case err == nil:
			t.Errorf("%s: succeeded:\n%s", tc.name, out)
		case !refusal.MatchString(err.Error()) || strings.Contains(err.Error(), "connection refused"):
			t.Errorf("%s: failed, but not for TLS: %v", tc.name, err)
		default:
			t.Logf("%s: refused: %s", tc.name, refusal.FindString(err.Error()))
		}
	}
}

// refusal is how a refused handshake shows in the CLI's error: the server
// drops a plaintext client before the HTTP/2 preface, and one with an
// unknown CA's certificate after its last handshake message (TLS 1.3), so
// the client sees the connection closed under it; a server that is not
// listening says "connection refused" instead.
var refusal = regexp.MustCompile(`[^\n]*Unavailable[^\n]*(server preface|broken pipe|connection reset|EOF|certificate|handshake)[^\n]*`)

// holderOf picks a node holding the given expert.
func holderOf(t *testing.T, st *statusJSON, expert int) string {
	t.Helper()
	for _, s := range st.Shards {
		if s.Shard.Expert == expert && len(s.LoadedOn) > 0 {
			return s.LoadedOn[0]
		}
	}
	t.Fatalf("no node holds expert %d", expert)
	return ""
}

func assigned(st *statusJSON, id string) []string {
	var out []string
	for _, n := range st.Nodes {
		if n.ID == id {
			for _, s := range n.Assigned {
				out = append(out, fmt.Sprintf("e%d", s.Expert))
			}
		}
	}
	return out
}

func expertIndex(t *testing.T, id string) int {
	var i int
	if _, err := fmt.Sscanf(id, "expert-%d", &i); err != nil {
		t.Fatal(err)
	}
	return i
}

func makeWorldReadable(dir string) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		mode := os.FileMode(0o644)
		if d.IsDir() {
			mode = 0o755
		}
		return os.Chmod(path, mode)
	})
}

// images returns the moegrid and etcd images to run: MOEGRID_E2E_IMAGE and
// MOEGRID_E2E_ETCD_IMAGE when set (e2e.sh builds them with `make image`),
// else it builds moegrid:dev and moegrid-etcd:dev with deploy/docker/build.sh.
func images(t *testing.T, ctx context.Context) (string, string) {
	t.Helper()
	image, etcdImage := os.Getenv("MOEGRID_E2E_IMAGE"), os.Getenv("MOEGRID_E2E_ETCD_IMAGE")
	if image != "" && etcdImage != "" {
		return image, etcdImage
	}
	image, etcdImage = "moegrid:dev", "moegrid-etcd:dev"
	env := append(os.Environ(), "IMAGE="+image, "ETCD_IMAGE="+etcdImage)
	if out, err := run(ctx, env, filepath.Join(repoRoot(t), "deploy", "docker", "build.sh")); err != nil {
		t.Fatalf("building the images: %v\n%s", err, out)
	}
	return image, etcdImage
}

// TestEtcdManifest runs the etcd StatefulSet of deploy/k8s/base as it is:
// three members in containers, each with the arguments the manifest gives
// its pod, reachable under its pod's DNS name, with the moegrid-etcd-tls
// Secret of `moegrid certs secrets` mounted where the manifest mounts it.
// The members must form a cluster over peer TLS, and a coordinator with the
// manifests' etcd endpoints and its own Secret must reach it and lead.
func TestEtcdManifest(t *testing.T) {
	skipIf(t, "docker")
	ctx := testContext(t, 5*time.Minute)
	image, etcdImage := images(t, ctx)
	o := decodeAll(t, render(t, "base"))
	sts := o.statefulSet("moegrid-etcd")
	if sts == nil {
		t.Fatal("no moegrid-etcd StatefulSet")
	}
	pod := &sts.Spec.Template.Spec
	etcd := &pod.Containers[0]
	mounts := map[string]string{} // Secret → mount path
	for _, m := range etcd.VolumeMounts {
		for _, v := range pod.Volumes {
			if v.Name == m.Name && v.Secret != nil {
				mounts[v.Secret.SecretName] = m.MountPath
			}
		}
	}
	if mounts[tlsSecret("etcd")] == "" {
		t.Fatalf("etcd mounts no %s", tlsSecret("etcd"))
	}
	secrets := writeSecrets(t, ctx, t.TempDir())

	c := newDockerCluster(t, ctx, image, etcdImage, "")
	for i := range int(deref(sts.Spec.Replicas, 1)) {
		name := fmt.Sprintf("%s-%d", sts.Name, i)
		var args []string
		for _, a := range etcd.Args {
			args = append(args, strings.ReplaceAll(a, "$(POD_NAME)", name))
		}
		c.start(t, name, ipExpert0+i, c.etcd, []string{
			"--network-alias", name + "." + sts.Spec.ServiceName,
			"--mount", "type=tmpfs,destination=/var/lib/etcd,tmpfs-mode=1777",
			"-v", secrets[tlsSecret("etcd")] + ":" + mounts[tlsSecret("etcd")] + ":ro",
		}, args...)
	}
	endpoints := o.configMap(findConfigMap(t, o, "moegrid")).Data["MOEGRID_ETCD_ENDPOINTS"]
	c.start(t, "coordinator", ipCoordinator, c.image, []string{
		"-v", secrets[tlsSecret("coordinator")] + ":/etc/moegrid/tls:ro",
		"-v", secrets[gossipSecret] + ":/etc/moegrid/gossip:ro",
		"-v", secrets[tlsSecret("admin")] + ":/etc/moegrid/admin:ro",
	}, "coordinator", "--id", "coordinator", "--grpc-addr", "0.0.0.0:7070", "--http-addr", "0.0.0.0:7071",
		"--gossip-addr", "0.0.0.0:7946", "--gossip-advertise", c.ip(ipCoordinator)+":7946",
		"--etcd-endpoints", endpoints,
		"--tls-cert", "/etc/moegrid/tls/tls.crt", "--tls-key", "/etc/moegrid/tls/tls.key", "--tls-ca", "/etc/moegrid/tls/ca.crt",
		"--gossip-key-file", "/etc/moegrid/gossip/gossip.key")
	start := time.Now()
	eventually(t, 2*time.Minute, time.Second, "the coordinator leads through the TLS etcd cluster", func() error {
		out, err := c.docker("exec", c.name("coordinator"), "/usr/local/bin/moegrid", "nodes", "--coordinator", "127.0.0.1:7070",
			"--output", "json", "--timeout", "5s",
			"--tls-cert", "/etc/moegrid/admin/tls.crt", "--tls-key", "/etc/moegrid/admin/tls.key", "--tls-ca", "/etc/moegrid/admin/ca.crt")
		if err != nil {
			return err
		}
		var st statusJSON
		if err := json.Unmarshal([]byte(out), &st); err != nil {
			return err
		}
		if st.Leader != "coordinator" {
			return fmt.Errorf("leader %q", st.Leader)
		}
		return nil
	})
	t.Logf("3 etcd members on TLS, coordinator leading in %v (endpoints %s)", time.Since(start).Round(100*time.Millisecond), endpoints)
	// etcd logs to stderr.
	stdout, logs, err := run2(ctx, nil, "docker", "logs", c.name(sts.Name+"-0"))
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(stdout+logs, `"peer became active"`); n < 2 {
		t.Errorf("%s saw %d peers become active, want 2", sts.Name+"-0", n)
	}
}

// writeSecrets writes the Secrets of `moegrid certs secrets` (namespace
// moegrid) as a kubelet mounts them, one directory per Secret with a file
// per key, readable by the containers' user; it returns the directories by
// Secret name.
func writeSecrets(t *testing.T, ctx context.Context, dir string) map[string]string {
	t.Helper()
	out, err := run(ctx, cleanEnv(), moegridBinary(t), "certs", "secrets", "--dir", filepath.Join(dir, "ca"), "--namespace", "moegrid")
	if err != nil {
		t.Fatal(err)
	}
	dirs := map[string]string{}
	for _, doc := range strings.Split(out, "\n---\n") {
		var s corev1.Secret
		if err := yaml.UnmarshalStrict([]byte(doc), &s); err != nil {
			t.Fatal(err)
		}
		d := filepath.Join(dir, s.Name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		for k, v := range s.Data {
			if err := os.WriteFile(filepath.Join(d, k), v, 0o644); err != nil {
				t.Fatal(err)
			}
		}
		dirs[s.Name] = d
	}
	return dirs
}
