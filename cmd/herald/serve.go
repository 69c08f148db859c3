package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/config"
	"github.com/heraldmq/herald/internal/gctune"
	"github.com/heraldmq/herald/internal/handlers"
	"github.com/heraldmq/herald/internal/httpapi"
	"github.com/heraldmq/herald/internal/metrics"
)

func newServeCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the service: HTTP API and workers on the configured store",
		Long: `Run the service: the HTTP API and the workers, on the embedded SQLite store
in --data-dir unless --store names another: a SQLite file, or a PostgreSQL
database (postgres://user@host/db?schema=herald) that several herald serve
processes share. A PostgreSQL schema is created and migrated on start.

With no configuration it listens on 127.0.0.1:8080 with the built-in kinds
noop and sleep. Configuration layers: --config file < HERALD_* environment <
flags. SIGINT or SIGTERM stops it gracefully (running jobs get
shutdown_timeout to finish, the rest go back to their lines); a second
signal exits at once, which loses nothing acknowledged either.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path, os.Environ(), cmd.Flags())
			if err != nil {
				return err
			}
			if err := cfg.Validate(); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			return serve(ctx, cfg, cmd.ErrOrStderr(), nil)
		},
	}
	cmd.Flags().StringVar(&path, "config", "", "YAML configuration file")
	config.RegisterFlags(cmd.Flags())
	return cmd
}

// serve runs until ctx is done, then shuts down gracefully. ready, if set,
// receives the listening address once the API accepts connections.
func serve(ctx context.Context, cfg config.Config, logOut io.Writer, ready chan<- string) error {
	log := newLogger(cfg.Log, logOut)
	exp := metrics.New()
	defer gctune.Start(int64(cfg.GCHeadroomMiB) << 20).Stop()

	ccfg := cfg.ClientConfig()
	ccfg.Logger = log
	ccfg.OnAttempt = exp.ObserveAttempt
	if cfg.Store != "" {
		drv, err := openStore(ctx, cfg.Store, log)
		if err != nil {
			return err
		}
		defer func() {
			if err := drv.Close(); err != nil {
				log.Error("close store", "err", err)
			}
		}()
		ccfg.Store = drv
	}
	client, err := herald.New(ccfg)
	if err != nil {
		return err
	}
	prepare := map[string]func(*herald.EnqueueParams) error{}
	var emailKinds []*emailKind
	// Closed after the client stopped (defers run last): no job uses them then.
	defer func() {
		for _, ek := range emailKinds {
			_ = ek.sender.Close()
		}
	}()
	for name, k := range cfg.Kinds {
		var h herald.HandlerFunc
		var err error
		if k.Type == config.TypeEmail && k.Email != nil {
			var ek *emailKind
			if ek, err = newEmailKind(*k.Email, log); err == nil {
				emailKinds = append(emailKinds, ek)
				h, prepare[name] = ek.handler, ek.prepare
			}
		} else {
			h, err = handlerFor(k)
		}
		if err != nil {
			return fmt.Errorf("kinds.%s: %w", name, err)
		}
		if err := client.Register(name, handlers.RateLimited(h, k.RateLimit, k.RateBurst), k.KindConfig()); err != nil {
			return fmt.Errorf("kinds.%s: %w", name, err)
		}
	}
	// The client starts before the API listens, and stops after the API has
	// stopped answering: every acknowledged job is in the store by then.
	if err := client.Start(ctx); err != nil {
		return err
	}
	exp.Attach(client)

	topics := make(map[string]httpapi.Topic, len(cfg.Topics))
	for name, t := range cfg.Topics {
		topics[name] = httpapi.Topic{Kind: t.Kind, KeyField: t.KeyField}
	}
	api := httpapi.New(client, httpapi.Options{
		Logger: log, Tokens: cfg.Tokens, MaxRequestBytes: cfg.MaxRequestBytes,
		MaxBacklog: cfg.MaxBacklog, Topics: topics, Metrics: exp.Handler(),
		Prepare: prepare, MailingsKind: cfg.Mailings.Kind,
	})
	srv := httpapi.NewHTTPServer(exp.Middleware(api.Handler()), httpapi.Timeouts{},
		slog.NewLogLogger(log.Handler(), slog.LevelWarn))
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", cfg.Listen)
	if err != nil {
		_ = client.Stop(context.Background())
		return fmt.Errorf("listen on %s: %w", cfg.Listen, err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	log.Info("herald serving", "addr", ln.Addr().String(), "store", storeName(cfg), "store_loops", client.StoreLoops(),
		"kinds", len(cfg.Kinds), "auth", len(cfg.Tokens) > 0)
	if ready != nil {
		ready <- ln.Addr().String()
	}

	select {
	case err := <-served:
		_ = client.Stop(context.Background())
		return fmt.Errorf("http server: %w", err)
	case <-ctx.Done():
	}
	log.Info("shutting down: no new work; running jobs get up to the shutdown timeout", "timeout", cfg.ShutdownTimeout)
	api.SetDraining(true)
	// No job starts from now on, not even while the requests in flight
	// finish below; enqueues among them are still stored.
	client.Drain()
	// A second signal ends the process at once: every acknowledged job is
	// already durable, and running ones run again after restart.
	second := make(chan os.Signal, 1)
	signal.Notify(second, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(second)
	go func() {
		if _, ok := <-second; ok {
			log.Warn("second signal: exiting now")
			os.Exit(1)
		}
	}()

	sctx, cancel := context.WithTimeout(context.Background(), cfg.ShutdownTimeout)
	defer cancel()
	var errs []error
	if err := srv.Shutdown(sctx); err != nil {
		errs = append(errs, fmt.Errorf("http shutdown: %w", err))
	}
	if err := client.Stop(sctx); err != nil {
		// Jobs still running at the deadline were released: not an error
		// for the operator, just worth a line.
		log.Warn("stopped with running jobs released", "err", err)
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	log.Info("herald stopped")
	return nil
}

func handlerFor(k config.Kind) (herald.HandlerFunc, error) {
	switch k.Type {
	case config.TypeNoop:
		return handlers.Noop(), nil
	case config.TypeSleep:
		return handlers.Sleep(), nil
	case config.TypeWebhook:
		if k.Webhook == nil {
			return nil, errors.New("webhook: url is required")
		}
		return handlers.Webhook(handlers.WebhookConfig{
			URL: k.Webhook.URL, Method: k.Webhook.Method, Headers: k.Webhook.Headers,
			Secret: k.Webhook.Secret, Timeout: k.Webhook.Timeout,
		})
	}
	return nil, fmt.Errorf("unknown type %q", k.Type)
}

func storeName(cfg config.Config) string {
	if cfg.Store != "" {
		return cfg.Redacted().Store
	}
	return filepath.Join(cfg.DataDir, "herald.db")
}

// newLogger logs text to a terminal and JSON otherwise, unless configured.
func newLogger(c config.Log, out io.Writer) *slog.Logger {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.Level)); err != nil {
		level = slog.LevelInfo
	}
	opts := &slog.HandlerOptions{Level: level}
	format := strings.ToLower(c.Format)
	if format == "" || format == "auto" {
		format = "json"
		if f, ok := out.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	if format == "text" {
		return slog.New(slog.NewTextHandler(out, opts))
	}
	return slog.New(slog.NewJSONHandler(out, opts))
}
