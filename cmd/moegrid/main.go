// Command moegrid runs every part of a moegrid cluster: the coordinator, the
// expert nodes, the router, a whole local cluster (up), and the tools around
// them (model synth/inspect/eval, generate, nodes, tokenize).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCmd().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "moegrid:", err)
		os.Exit(1)
	}
}
