package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"

	"github.com/moegrid/moegrid/coordinator"
	"github.com/moegrid/moegrid/coordinator/placement"
	"github.com/moegrid/moegrid/expertnode"
	"github.com/moegrid/moegrid/model"
	"github.com/moegrid/moegrid/model/kernel"
	"github.com/moegrid/moegrid/model/synth"
)

func newPlanCmd() *cobra.Command {
	var (
		dir, preset, dtype, output string
		nodes                      int
		capacity                   = byteSize(80 << 30)
		extra                      []string
		opts                       placement.Options
	)
	cmd := &cobra.Command{
		Use:   "plan (--model DIR | --preset NAME) --nodes N --capacity SIZE",
		Short: "Compute the placement a cluster would get, without a cluster: for capacity planning",
		Long: `Compute the placement the coordinator would write for a model on a set of
nodes, with the same function it uses, and print which node holds which
shards and how full each node is. Nodes are node-0 … node-(N-1) with
--capacity each, plus any --node ID=SIZE. When the nodes cannot hold the
model the command fails with "insufficient capacity: need X, have Y".

Examples:
  moegrid plan --preset mixtral-8x7b --dtype bf16 --nodes 8 --capacity 80GiB
  moegrid plan --preset mixtral-8x7b --nodes 8 --capacity 80GiB --min-replicas 2
  moegrid plan --model /models/mixtral --nodes 16 --capacity 10GB`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			shape, err := planShape(dir, preset, dtype)
			if err != nil {
				return err
			}
			var ns []placement.Node
			for i := range nodes {
				ns = append(ns, placement.Node{ID: fmt.Sprintf("node-%d", i), CapacityBytes: int64(capacity)})
			}
			for _, spec := range extra {
				id, size, ok := strings.Cut(spec, "=")
				var b byteSize
				if !ok || id == "" {
					return fmt.Errorf("--node %q: want ID=SIZE, e.g. gpu-9=40GiB", spec)
				}
				if err := b.Set(size); err != nil {
					return fmt.Errorf("--node %q: %w", spec, err)
				}
				ns = append(ns, placement.Node{ID: id, CapacityBytes: int64(b)})
			}
			if len(ns) == 0 {
				return errors.New("no nodes: give --nodes N or --node ID=SIZE")
			}
			p, err := placement.Compute(placement.Input{Nodes: ns, Model: shape, Options: opts})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			switch output {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(p)
			case "table":
			default:
				return fmt.Errorf("--output %q: want table or json", output)
			}
			fmt.Fprintf(out, "model: %d experts × %d layers × %s per expert-layer (%s per expert, %s of experts); min replicas %d\n\n",
				shape.Experts, shape.Layers, bytesString(shape.BytesPerExpertLayer),
				bytesString(shape.BytesPerExpertLayer*int64(shape.Layers)),
				bytesString(shape.BytesPerExpertLayer*int64(shape.Layers*shape.Experts)), max(opts.MinReplicas, 1))
			return coordinator.WritePlacementTable(out, p, ns)
		},
	}
	f := cmd.Flags()
	f.StringVar(&dir, "model", "", "checkpoint directory or GGUF file to plan for, with the bytes its experts really hold")
	f.StringVar(&preset, "preset", "", "a named shape instead of --model: tiny, small or mixtral-8x7b")
	f.StringVar(&dtype, "dtype", "bf16", "weight format of --preset: f32, bf16, f16")
	f.IntVar(&nodes, "nodes", 8, "number of equal nodes")
	f.Var(&capacity, "capacity", "memory each of the --nodes offers for expert weights")
	f.StringSliceVar(&extra, "node", nil, "more nodes as ID=SIZE, e.g. --node big-0=160GiB (repeatable)")
	f.IntVar(&opts.MinReplicas, "min-replicas", 1, "distinct nodes every shard is held on")
	f.IntVar(&opts.MaxReplicas, "max-replicas", 0, "cap on the replicas of a shard (0: no cap)")
	f.StringVarP(&output, "output", "o", "table", "output format: table or json (the placement record)")
	return cmd
}

// planShape is the model shape to plan for: a checkpoint's, with the bytes
// its expert tensors really hold, or a preset's in a weight format.
func planShape(dir, preset, format string) (placement.Model, error) {
	var (
		cfg      model.Config
		perLayer int64
		err      error
	)
	switch {
	case dir != "" && preset != "":
		return placement.Model{}, errors.New("give --model or --preset, not both")
	case dir != "":
		if cfg, err = model.LoadConfig(dir); err != nil {
			return placement.Model{}, err
		}
		if perLayer, err = model.CheckpointExpertLayerBytes(dir, cfg); err != nil {
			return placement.Model{}, err
		}
	case preset != "":
		p, err := synth.PresetByName(preset)
		if err != nil {
			return placement.Model{}, err
		}
		f, err := parseFormat(format)
		if err != nil {
			return placement.Model{}, err
		}
		cfg = p.Config()
		if perLayer, err = cfg.ExpertLayerBytes(f); err != nil {
			return placement.Model{}, err
		}
	default:
		return placement.Model{}, errors.New("give --model DIR or --preset NAME")
	}
	return expertnode.ModelInfo(cfg, perLayer, "").Shape, nil
}

// parseFormat reads a weight format name: f32, bf16, f16 (or float32,
// bfloat16, float16), or any other format the kernels support by its name.
func parseFormat(s string) (kernel.Format, error) {
	aliases := map[string]kernel.Format{"float32": kernel.F32, "bfloat16": kernel.BF16, "float16": kernel.F16}
	f, ok := aliases[strings.ToLower(s)]
	if !ok {
		f = kernel.Format(strings.ToUpper(s))
	}
	if !f.Valid() {
		names := make([]string, 0)
		for _, g := range kernel.Formats() {
			names = append(names, strings.ToLower(string(g)))
		}
		slices.Sort(names)
		return "", fmt.Errorf("--dtype %q: want one of %s", s, strings.Join(names, ", "))
	}
	return f, nil
}
