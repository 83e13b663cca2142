// Package integration holds the tests that run the whole data path: a real
// embedded etcd, the coordinator, expert nodes (in this process or as child
// processes that can be killed) and the router, all on loopback, checked
// against the in-process model.
package integration
