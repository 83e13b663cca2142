package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/moegrid/moegrid/model/kernel"
)

func newRootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:           "moegrid",
		Short:         "Serve Mixtral-style Mixture-of-Experts models across machines",
		Version:       buildVersion(),
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			if err := applyEnv(cmd.Flags()); err != nil {
				return err
			}
			return applyCompute(cmd.Flags())
		},
	}
	root.PersistentFlags().String("log-level", "info", "log level: debug, info, warn, error")
	root.PersistentFlags().String("compute", string(kernel.ComputeExact),
		"how matrix products treat activations: exact (float32, the reference numerics), bf16 (BF16 weights times activations rounded to bfloat16, AVX-512 BF16) or int8 (quantized weights times activations quantized to 8 bits per 32, per 256 for the K formats, integer dot products, AVX2); every process of a cluster must agree")
	for _, c := range []*cobra.Command{
		{
			Use:   "version",
			Short: "Print the version",
			Args:  cobra.NoArgs,
			Run:   func(cmd *cobra.Command, _ []string) { fmt.Fprintln(cmd.OutOrStdout(), "moegrid", buildVersion()) },
		},
		newUpCmd(),
		newCoordinatorCmd(),
		newExpertnodeCmd(),
		newRouterCmd(),
		newGenerateCmd(),
		newPlanCmd(),
		newBenchCmd(),
		newNodesCmd(),
		newDrainCmd(),
		newModelCmd(),
		newEvalGroupCmd(),
		newTokenizeCmd(),
		newCertsCmd(),
		newKeysCmd(),
	} {
		root.AddCommand(c)
	}
	return root
}

// applyEnv fills every flag the command line left unset from its MOEGRID_*
// environment variable (--etcd-endpoints reads MOEGRID_ETCD_ENDPOINTS), so
// that containers can be configured either way with the flag winning.
func applyEnv(flags *pflag.FlagSet) error {
	var errs []string
	flags.VisitAll(func(f *pflag.Flag) {
		if f.Changed {
			return
		}
		name := "MOEGRID_" + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		v, ok := os.LookupEnv(name)
		if !ok {
			return
		}
		if err := flags.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Sprintf("%s=%q: %v", name, v, err))
		}
	})
	if len(errs) > 0 {
		return fmt.Errorf("environment: %s", strings.Join(errs, "; "))
	}
	return nil
}

// applyCompute sets the process's compute mode from --compute and exports
// it, so that the processes moegrid up starts run the same mode.
func applyCompute(flags *pflag.FlagSet) error {
	c, _ := flags.GetString("compute")
	if err := kernel.SetCompute(kernel.Compute(c)); err != nil {
		return fmt.Errorf("--compute: %w", err)
	}
	return os.Setenv("MOEGRID_COMPUTE", c)
}

// newLogger builds the process logger from --log-level; logs go to stderr as
// text so that stdout stays free for command output (JSON, tables).
func newLogger(cmd *cobra.Command) (*slog.Logger, error) {
	lvl, _ := cmd.Flags().GetString("log-level")
	var level slog.Level
	if err := level.UnmarshalText([]byte(lvl)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level})), nil
}
