package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/status"

	"github.com/moegrid/moegrid/coordinator"
	moegridv1 "github.com/moegrid/moegrid/proto/moegrid/v1"
)

// coordinatorClient holds the flags of the commands that call a coordinator.
type coordinatorClient struct {
	addr    string
	timeout time.Duration
	tls     dialFlags
}

func (c *coordinatorClient) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&c.addr, "coordinator", "", "gRPC address of any coordinator replica (default: the one moegrid up runs, else 127.0.0.1:7070)")
	cmd.Flags().DurationVar(&c.timeout, "timeout", 10*time.Second, "deadline of the call")
	c.tls.register(cmd.Flags())
}

// call dials the coordinator and runs fn with a deadline.
func (c *coordinatorClient) call(ctx context.Context, fn func(context.Context, moegridv1.ClusterClient) error) error {
	if c.addr == "" {
		c.addr = "127.0.0.1:7070"
		if st, err := readUpState(); err == nil {
			c.addr = st.CoordinatorGRPC
		}
	}
	conn, err := c.tls.dial(c.addr)
	if err != nil {
		return fmt.Errorf("coordinator %s: %w", c.addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	if err := fn(ctx, moegridv1.NewClusterClient(conn)); err != nil {
		if s, ok := status.FromError(err); ok {
			return fmt.Errorf("coordinator %s: %s: %s", c.addr, s.Code(), s.Message())
		}
		return fmt.Errorf("coordinator %s: %w", c.addr, err)
	}
	return nil
}

func newNodesCmd() *cobra.Command {
	var cc coordinatorClient
	var output string
	cmd := &cobra.Command{
		Use:   "nodes [--coordinator ADDR] [--output table|json]",
		Short: "Show the cluster's nodes: state, health, shards, memory, load",
		Long: `Show the cluster's nodes as a coordinator reports them (moegrid.v1.Cluster/Status).

--output table (the default) prints a summary line and one row per node:
  NODE       node ID, followed by INSECURE when the node runs with --insecure
  STATE      joining, ready or draining; down: assigned shards but no longer registered
  ALIVE      the gossip view: no once memberlist declared the node dead
  SHARDS     shards the placement assigns: e3 is expert 3 over every layer, e3:0-15 layers 0 to 15
  LOADED     shards the node reports loaded and serving
  MEMORY     bytes of assigned weights / the node's capacity
  LOAD       recent rows per second and Forward calls in flight
  HEARTBEAT  age of the node's last record update
A node that fails to load its shards (it retries with backoff) has a line
under its row: "load error (attempt N, AGE ago): MESSAGE"; JSON: loadError.

--output json prints the StatusResponse in the protobuf JSON mapping:
lowerCamelCase field names (placementVersion, memoryCapacityBytes, ...),
64-bit integers as strings, lastHeartbeat as an RFC 3339 timestamp, every
field present even when zero (a missing message is null). See
proto/moegrid/v1/cluster.proto for every field.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("--output %q: want table or json", output)
			}
			var resp *moegridv1.StatusResponse
			err := cc.call(cmd.Context(), func(ctx context.Context, c moegridv1.ClusterClient) error {
				var err error
				resp, err = c.Status(ctx, &moegridv1.StatusRequest{})
				return err
			})
			if err != nil {
				return err
			}
			if output == "json" {
				return coordinator.WriteStatusJSON(cmd.OutOrStdout(), resp)
			}
			return coordinator.WriteStatusTable(cmd.OutOrStdout(), resp, time.Now())
		},
	}
	cc.register(cmd)
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func newDrainCmd() *cobra.Command {
	var cc coordinatorClient
	cmd := &cobra.Command{
		Use:   "drain NODE [--coordinator ADDR]",
		Short: "Drain a node: the coordinator moves its shards to other nodes",
		Long: `Drain a node: the coordinator moves its shards to other nodes and routers
stop sending it work. The drain holds until the node leaves; a node that
registers again starts undrained. Fails with NotFound for an unknown node.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			err := cc.call(cmd.Context(), func(ctx context.Context, c moegridv1.ClusterClient) error {
				_, err := c.Drain(ctx, &moegridv1.DrainRequest{NodeId: args[0]})
				return err
			})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s draining\n", args[0])
			return nil
		},
	}
	cc.register(cmd)
	return cmd
}
