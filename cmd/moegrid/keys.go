package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/metadata"

	"github.com/moegrid/moegrid/internal/apikey"
)

func newKeysCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "keys",
		Short: "Create and list the API keys a router's clients authenticate with (router --api-keys FILE)",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(newKeysCreateCmd(), newKeysListCmd())
	return cmd
}

func newKeysCreateCmd() *cobra.Command {
	var (
		file, id string
		e        apikey.Entry
	)
	cmd := &cobra.Command{
		Use:   "create --file FILE --id ID [--max-in-flight N] [--tokens-per-minute N] [--allow API,...]",
		Short: "Make a key, print it once and store its hash in FILE (created 0600 if missing)",
		Long: `Make a key for ID, print it once on stdout and add its hash and limits to
FILE, replacing the entry of the same id, written atomically with mode 0600.
Only the hash is stored: a lost key cannot be recovered, only replaced.
A running router picks the change up within seconds.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := apikey.ReadFile(file)
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return err
			}
			key, entry, err := apikey.NewKey(id)
			if err != nil {
				return err
			}
			entry.MaxInFlight, entry.TokensPerMinute, entry.Allow = e.MaxInFlight, e.TokensPerMinute, e.Allow
			f.Keys = slices.DeleteFunc(f.Keys, func(old apikey.Entry) bool { return old.ID == id })
			f.Keys = append(f.Keys, entry)
			if err := apikey.WriteFile(file, f); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), key)
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&file, "file", "", "key file")
	f.StringVar(&id, "id", "", "key id, named in logs and metrics (letters, digits, '.', '-')")
	f.IntVar(&e.MaxInFlight, "max-in-flight", 0, "requests the key may have running at once (0: unlimited)")
	f.IntVar(&e.TokensPerMinute, "tokens-per-minute", 0, "prompt and completion tokens per minute (0: unlimited)")
	f.StringSliceVar(&e.Allow, "allow", nil, "APIs the key may call: generate, completions, chat, models (default: all)")
	cmd.MarkFlagRequired("file")
	cmd.MarkFlagRequired("id")
	return cmd
}

func newKeysListCmd() *cobra.Command {
	var file string
	cmd := &cobra.Command{
		Use:   "list --file FILE",
		Short: "List the keys in FILE: ids and limits",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			f, err := apikey.ReadFile(file)
			if err != nil {
				return err
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tMAX IN FLIGHT\tTOKENS/MIN\tALLOW\tDISABLED")
			for _, e := range f.Keys {
				allow := "all"
				if len(e.Allow) > 0 {
					allow = strings.Join(e.Allow, ",")
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\n", e.ID, limit(e.MaxInFlight), limit(e.TokensPerMinute), allow, e.Disabled)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&file, "file", "", "key file")
	cmd.MarkFlagRequired("file")
	return cmd
}

func limit(n int) string {
	if n == 0 {
		return "unlimited"
	}
	return fmt.Sprint(n)
}

// withAPIKey returns ctx sending key as a bearer token on its gRPC calls;
// an empty key sends none.
func withAPIKey(ctx context.Context, key string) context.Context {
	if key == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+key)
}
