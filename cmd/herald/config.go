package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/heraldmq/herald/internal/config"
)

func newConfigCmd() *cobra.Command {
	return newConfigCmdWithEnv(os.Environ)
}

// newConfigCmdWithEnv takes the environment as a function so tests can run
// in parallel without touching the process environment.
func newConfigCmdWithEnv(environ func() []string) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "config",
		Short: "Inspect herald serve's configuration",
		Args:  cobra.NoArgs,
	}

	var path string
	check := &cobra.Command{
		Use:   "check",
		Short: "Validate the configuration and print it, secrets redacted",
		Long: `Validate the configuration herald serve would use and print it.

The configuration is read in layers, each overriding the one before: built-in
defaults, the YAML file given with --config, HERALD_* environment variables
(HERALD_DATA_DIR is data_dir, HERALD_KINDS__BILLING__CONCURRENCY is
kinds.billing.concurrency), then the flags below.

On success the effective configuration is printed as YAML with tokens and
secrets redacted, and the exit status is 0. Otherwise every problem is
printed on its own line to stderr and the exit status is 1.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := config.Load(path, environ(), cmd.Flags())
			if err == nil {
				err = c.Validate()
			}
			if err != nil {
				if !errors.Is(err, config.ErrInvalid) {
					return err // cannot read the file: main prints it
				}
				problems := config.Problems(err)
				for _, p := range problems {
					fmt.Fprintln(cmd.ErrOrStderr(), p)
				}
				if len(problems) == 1 {
					return errors.New("configuration is invalid: 1 problem")
				}
				return fmt.Errorf("configuration is invalid: %d problems", len(problems))
			}
			out, err := c.Redacted().YAML()
			if err != nil {
				return err
			}
			_, err = cmd.OutOrStdout().Write(out)
			return err
		},
	}
	check.Flags().StringVar(&path, "config", "", "YAML configuration file (optional)")
	config.RegisterFlags(check.Flags())
	cmd.AddCommand(check)
	return cmd
}
