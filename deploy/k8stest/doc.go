// Package k8stest tests moegrid's deployment: the Kustomize manifests in
// deploy/k8s and the container image in deploy/docker.
//
// The ordinary tests (go test ./deploy/k8stest) run offline in seconds: they
// render the base, both overlays and the optional components with the
// kustomize Go API, decode every object strictly into the k8s.io/api types,
// and check what a typo would break and the API server would not notice:
// selectors against pod labels, probe ports against container ports and the
// listen flags, and every argument and MOEGRID_* setting against the flags
// the moegrid binary itself defines (read from its --help, then parsed by
// the binary).
//
// The end-to-end tests carry the e2e build tag (deploy/k8stest/e2e.sh runs
// them):
//
//   - TestKubernetes starts a real control plane on loopback (etcd,
//     kube-apiserver, kube-controller-manager, kube-scheduler, built from
//     the Go module proxy by tools/build.sh) with kwok's fake nodes, runs
//     `kubectl apply --dry-run=server` on every overlay, then applies the gpu
//     overlay onto 8 fake GPU machines and checks that the scheduler puts
//     the 8 expert nodes on 8 machines, and that with 7 the 8th stays
//     Pending for the anti-affinity.
//   - TestContainerCluster runs etcd, a coordinator, 8 expert nodes and a
//     router as containers of the images built from deploy/docker on a
//     private Docker network, generates through the router while an expert
//     container is killed and another is cut off the network, and checks the
//     coordinator's view (moegrid nodes --output json) at each step, all on
//     mutual TLS with certificates the binary made.
//   - TestFaultSchedule runs a bigger cluster of the same containers (3
//     etcd members, 2 coordinators, 2 routers) under a sustained `moegrid
//     bench` load and injects issue 10's faults one by one (expert kill,
//     hang and blackholed port, coordinator and etcd leader kill, router
//     kill, a 30k-token prompt, no holder possible), asserting its targets
//     and writing the table of what each cost; with MOEGRID_SOAK it repeats
//     them and asserts memory, goroutines and etcd's size stay flat.
//   - TestEtcdManifest runs the etcd StatefulSet's three members as the
//     manifest configures them, on TLS with the Secret of `moegrid certs
//     secrets`, and a coordinator that must lead through them.
//
// Neither skips because something is missing: a missing Docker or a failed
// build fails the test. MOEGRID_E2E_SKIP=kubernetes,docker skips them by
// name, and says so.
package k8stest
