package config_test

import (
	"bytes"
	"errors"
	"flag"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/spf13/pflag"

	"github.com/heraldmq/herald/internal/config"
)

var update = flag.Bool("update", false, "rewrite golden files")

// writeConfig writes a YAML file into a fresh temp dir and returns its path.
func writeConfig(t *testing.T, yaml string) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "herald.yaml")
	if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

// flagSet returns the registered flags parsed from args.
func flagSet(t *testing.T, args ...string) *pflag.FlagSet {
	t.Helper()
	flags := pflag.NewFlagSet("serve", pflag.ContinueOnError)
	config.RegisterFlags(flags)
	if err := flags.Parse(args); err != nil {
		t.Fatal(err)
	}
	return flags
}

func TestLoadDefaults(t *testing.T) {
	t.Parallel()
	c, err := config.Load("", nil, flagSet(t))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(config.Default(), c); diff != "" {
		t.Errorf("Load with nothing set differs from Default (-want +got):\n%s", diff)
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
	for _, want := range []struct {
		name, field string
		got, exp    any
	}{
		{"listen", "Listen", c.Listen, "127.0.0.1:8080"},
		{"data_dir", "DataDir", c.DataDir, "./herald-data"},
		{"store", "Store", c.Store, ""},
		{"workers", "Workers", c.Workers, 1000},
		{"lease", "Lease", c.Lease, 15 * time.Second},
		{"shutdown_timeout", "ShutdownTimeout", c.ShutdownTimeout, 30 * time.Second},
		{"max_payload_bytes", "MaxPayloadBytes", c.MaxPayloadBytes, 1 << 20},
		{"max_request_bytes", "MaxRequestBytes", c.MaxRequestBytes, int64(32 << 20)},
		{"max_backlog", "MaxBacklog", c.MaxBacklog, int64(0)},
		{"insecure", "Insecure", c.Insecure, false},
		{"log.level", "Log.Level", c.Log.Level, "info"},
		{"log.format", "Log.Format", c.Log.Format, "auto"},
		{"kinds.noop.type", "Kinds[noop].Type", c.Kinds["noop"].Type, "noop"},
		{"kinds.sleep.type", "Kinds[sleep].Type", c.Kinds["sleep"].Type, "sleep"},
		{"kinds.noop.on_discard", "Kinds[noop].OnDiscard", c.Kinds["noop"].OnDiscard, "continue"},
	} {
		if want.got != want.exp {
			t.Errorf("default %s (%s) = %v, want %v", want.name, want.field, want.got, want.exp)
		}
	}
}

// Each layer overrides the one below it, and only for the keys it sets.
func TestLoadLayers(t *testing.T) {
	t.Parallel()
	const file = "listen: 127.0.0.1:7001\nworkers: 7\nlog: {level: warn}\nkinds: {noop: {concurrency: 3}}\n"
	for _, tt := range []struct {
		name    string
		file    string
		environ []string
		args    []string
		check   func(t *testing.T, c config.Config)
	}{
		{
			name: "file over defaults",
			file: file,
			check: func(t *testing.T, c config.Config) {
				t.Helper()
				if c.Listen != "127.0.0.1:7001" || c.Workers != 7 || c.Log.Level != "warn" {
					t.Errorf("file not applied: listen %q workers %d level %q", c.Listen, c.Workers, c.Log.Level)
				}
				if c.DataDir != "./herald-data" || c.Log.Format != "auto" {
					t.Errorf("keys the file does not set lost their defaults: data_dir %q format %q", c.DataDir, c.Log.Format)
				}
				if k := c.Kinds["noop"]; k.Type != "noop" || k.Concurrency != 3 {
					t.Errorf("kinds.noop = %+v, want the built-in type with the file's concurrency", k)
				}
			},
		},
		{
			name:    "env over file",
			file:    file,
			environ: []string{"HERALD_WORKERS=9", "HERALD_LOG__LEVEL=error", "HERALD_KINDS__NOOP__CONCURRENCY=4"},
			check: func(t *testing.T, c config.Config) {
				t.Helper()
				if c.Workers != 9 || c.Log.Level != "error" || c.Kinds["noop"].Concurrency != 4 {
					t.Errorf("env not applied over the file: workers %d level %q noop %+v", c.Workers, c.Log.Level, c.Kinds["noop"])
				}
				if c.Listen != "127.0.0.1:7001" {
					t.Errorf("listen = %q: a key the env does not set must keep the file's value", c.Listen)
				}
			},
		},
		{
			name:    "flags over env",
			file:    file,
			environ: []string{"HERALD_WORKERS=9", "HERALD_LISTEN=127.0.0.1:7002", "HERALD_LOG__FORMAT=text"},
			args:    []string{"--workers=11", "--log-format=json", "--data-dir=/srv/herald", "--shutdown-timeout=5s", "--insecure"},
			check: func(t *testing.T, c config.Config) {
				t.Helper()
				if c.Workers != 11 || c.Log.Format != "json" || c.DataDir != "/srv/herald" || c.ShutdownTimeout != 5*time.Second || !c.Insecure {
					t.Errorf("flags not applied over env: %+v", c)
				}
				if c.Listen != "127.0.0.1:7002" || c.Log.Level != "warn" {
					t.Errorf("unset flags overrode lower layers: listen %q level %q", c.Listen, c.Log.Level)
				}
			},
		},
		{
			name:    "unset flags keep env and file",
			file:    file,
			environ: []string{"HERALD_STORE=/tmp/x.db"},
			check: func(t *testing.T, c config.Config) {
				t.Helper()
				if c.Workers != 7 || c.Store != "/tmp/x.db" || c.Listen != "127.0.0.1:7001" {
					t.Errorf("flag defaults leaked into the config: %+v", c)
				}
			},
		},
		{
			name:    "env mapping",
			environ: []string{"HERALD_DATA_DIR=/d", "HERALD_MAX_PAYLOAD_BYTES=2048", "HERALD_TOKENS=a-token, b-token", "HERALD_KINDS__BILLING__TYPE=webhook", "HERALD_KINDS__BILLING__WEBHOOK__URL=http://x.test/h", "HERALD_KINDS__BILLING__RATE_LIMIT=2.5", "HERALD_INSECURE=true"},
			check: func(t *testing.T, c config.Config) {
				t.Helper()
				if c.DataDir != "/d" || c.MaxPayloadBytes != 2048 || !c.Insecure {
					t.Errorf("env scalars not mapped: %+v", c)
				}
				if diff := cmp.Diff([]string{"a-token", "b-token"}, c.Tokens); diff != "" {
					t.Errorf("HERALD_TOKENS (-want +got):\n%s", diff)
				}
				b := c.Kinds["billing"]
				if b.Type != "webhook" || b.Webhook == nil || b.Webhook.URL != "http://x.test/h" || b.RateLimit != 2.5 || b.RateBurst != 1 {
					t.Errorf("kinds.billing from env = %+v (webhook %+v), want a webhook with rate 2.5 and the default burst 1", b, b.Webhook)
				}
				if b.Webhook != nil && (b.Webhook.Method != http.MethodPost || b.Webhook.Timeout != 10*time.Second) {
					t.Errorf("webhook defaults not applied: %+v", b.Webhook)
				}
			},
		},
		{
			name:    "foreign HERALD_ variables are ignored",
			environ: []string{"HERALD_REQUIRE_SERVICES=1", "PATH=/bin", "HERALD_=x", "NOT_HERALD_WORKERS=5"},
			check: func(t *testing.T, c config.Config) {
				t.Helper()
				if diff := cmp.Diff(config.Default(), c); diff != "" {
					t.Errorf("unrelated variables changed the config (-want +got):\n%s", diff)
				}
			},
		},
		{
			name: "file redefines a built-in kind",
			file: "kinds:\n  sleep:\n    type: webhook\n    webhook: {url: 'https://x.test/'}\n",
			check: func(t *testing.T, c config.Config) {
				t.Helper()
				if c.Kinds["sleep"].Type != "webhook" || c.Kinds["noop"].Type != "noop" {
					t.Errorf("kinds = %+v, want sleep redefined and noop kept", c.Kinds)
				}
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := ""
			if tt.file != "" {
				path = writeConfig(t, tt.file)
			}
			c, err := config.Load(path, tt.environ, flagSet(t, tt.args...))
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}

func TestLoadDurations(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, "shutdown_timeout: 1.5s\nkinds:\n  k:\n    type: noop\n    timeout: 1h30m\n    backoff_base: 250ms\n    backoff_cap: 0\n")
	c, err := config.Load(path, []string{"HERALD_KINDS__K__BACKOFF_CAP=2m"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	k := c.Kinds["k"]
	for _, d := range []struct {
		key       string
		got, want time.Duration
	}{
		{"shutdown_timeout", c.ShutdownTimeout, 1500 * time.Millisecond},
		{"kinds.k.timeout", k.Timeout, 90 * time.Minute},
		{"kinds.k.backoff_base", k.BackoffBase, 250 * time.Millisecond},
		{"kinds.k.backoff_cap (env)", k.BackoffCap, 2 * time.Minute},
	} {
		if d.got != d.want {
			t.Errorf("%s = %s, want %s", d.key, d.got, d.want)
		}
	}
}

// Problems in the sources fail Load, every one named with its key and
// where it came from.
func TestLoadRejects(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name    string
		file    string
		environ []string
		want    []string
	}{
		{
			name: "unknown top-level key",
			file: "listen: 127.0.0.1:1\nwokers: 5\n",
			want: []string{`wokers: unknown key; did you mean "workers"? (file `},
		},
		{
			name: "unknown key in a kind",
			file: "kinds:\n  billing:\n    type: noop\n    concurency: 5\n",
			want: []string{`kinds.billing.concurency: unknown key; did you mean "concurrency"?`},
		},
		{
			name: "unknown key in a webhook and in log",
			file: "log: {lvl: debug}\nkinds:\n  b:\n    type: webhook\n    webhook: {url: 'http://x.test', sekret: s}\n",
			want: []string{"log.lvl: unknown key", "kinds.b.webhook.sekret: unknown key"},
		},
		{
			name: "unknown key in a topic",
			file: "topics:\n  t:\n    kind: noop\n    key: id\n",
			want: []string{"topics.t.key: unknown key"},
		},
		{
			name:    "unknown key under a known env section",
			environ: []string{"HERALD_KINDS__BILLING__CONCURENCY=5"},
			want:    []string{`kinds.billing.concurency: unknown key; did you mean "concurrency"? (env HERALD_KINDS__BILLING__CONCURENCY)`},
		},
		{
			name:    "wrong types from env and file",
			file:    "workers: many\ninsecure: 1\ntokens: {a: b}\n",
			environ: []string{"HERALD_MAX_BACKLOG=lots"},
			want: []string{
				`workers: expected an integer, got "many" (file `,
				"insecure: expected true or false, got 1",
				"tokens: expected a list, got a mapping",
				`max_backlog: expected an integer, got "lots" (env HERALD_MAX_BACKLOG)`,
			},
		},
		{
			name:    "durations need a unit",
			file:    "shutdown_timeout: 30\nkinds: {k: {type: noop, timeout: soon}}\n",
			environ: []string{"HERALD_KINDS__K__BACKOFF_CAP=10"},
			want: []string{
				"shutdown_timeout: expected a duration with a unit such as 30s, got 30",
				`kinds.k.timeout: invalid duration "soon"`,
				`kinds.k.backoff_cap: invalid duration "10"`,
			},
		},
		{
			name: "a section that is not a mapping",
			file: "kinds: [noop]\nlog: debug\n",
			want: []string{"kinds: expected a mapping, got a list", `log: expected a mapping, got "debug"`},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			path := ""
			if tt.file != "" {
				path = writeConfig(t, tt.file)
			}
			_, err := config.Load(path, tt.environ, nil)
			if err == nil {
				t.Fatal("Load succeeded")
			}
			if !errors.Is(err, config.ErrInvalid) {
				t.Errorf("error %v does not match ErrInvalid", err)
			}
			for _, want := range tt.want {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error does not mention %q:\n%v", want, err)
				}
			}
			if n := len(config.Problems(err)); n < len(tt.want) {
				t.Errorf("%d problems reported, want at least %d:\n%v", n, len(tt.want), err)
			}
		})
	}
}

// Names in map-valued sections are the user's, not keys to check.
func TestLoadAcceptsAnyMapNames(t *testing.T) {
	t.Parallel()
	path := writeConfig(t, `kinds:
  email.send-v2:
    type: webhook
    webhook:
      url: https://x.test/
      headers: {X-Anything-At-All: "1", Api-Version: 2}
topics:
  user.signed_up: {kind: email.send-v2}
`)
	c, err := config.Load(path, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Validate(); err != nil {
		t.Fatal(err)
	}
	if got := c.Kinds["email.send-v2"].Webhook.Headers["Api-Version"]; got != "2" {
		t.Errorf("numeric header value = %q, want \"2\"", got)
	}
	if c.Topics["user.signed_up"].Kind != "email.send-v2" {
		t.Errorf("topics = %+v", c.Topics)
	}
}

func TestLoadFileErrors(t *testing.T) {
	t.Parallel()
	_, err := config.Load(filepath.Join(t.TempDir(), "missing.yaml"), nil, nil)
	if !errors.Is(err, fs.ErrNotExist) || errors.Is(err, config.ErrInvalid) {
		t.Errorf("missing file: got %v, want a not-exist error that is not ErrInvalid", err)
	}
	_, err = config.Load(writeConfig(t, "listen: [unclosed\n"), nil, nil)
	if !errors.Is(err, config.ErrInvalid) || !strings.Contains(err.Error(), "herald.yaml") {
		t.Errorf("syntax error: got %v, want ErrInvalid naming the file", err)
	}
	c, err := config.Load(writeConfig(t, "# nothing but a comment\n"), nil, nil)
	if err != nil || c.Workers != 1000 {
		t.Errorf("empty file: got %+v, %v; want the defaults", c, err)
	}
}

// What YAML renders, Load reads back unchanged.
func TestYAMLRoundTrip(t *testing.T) {
	t.Parallel()
	want, err := config.Load("testdata/full.yaml", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := want.YAML()
	if err != nil {
		t.Fatal(err)
	}
	got, err := config.Load(writeConfig(t, string(b)), nil, nil)
	if err != nil {
		t.Fatalf("loading YAML output: %v\n%s", err, b)
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("round trip changed the config (-want +got):\n%s", diff)
	}
}

// The effective configuration of testdata/full.yaml, redacted, as
// `herald config check` prints it. Run with -update to rewrite.
func TestYAMLGolden(t *testing.T) {
	t.Parallel()
	c, err := config.Load("testdata/full.yaml", nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	got, err := c.Redacted().YAML()
	if err != nil {
		t.Fatal(err)
	}
	const golden = "testdata/full.golden.yaml"
	if *update {
		if err := os.WriteFile(golden, got, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("YAML differs from %s (-want +got):\n%s", golden, cmp.Diff(string(want), string(got)))
	}
}
