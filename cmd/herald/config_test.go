package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// runConfig executes `config args...` with environ as the environment and
// returns stdout, stderr and the error.
func runConfig(t *testing.T, environ []string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newConfigCmdWithEnv(func() []string { return environ })
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SilenceUsage = true
	cmd.SilenceErrors = true
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

// The command the root command adds: `config check` with --config and the
// serve flags.
func TestConfigCommand(t *testing.T) {
	t.Parallel()
	cmd := newConfigCmd()
	check, _, err := cmd.Find([]string{"check"})
	if err != nil || check.Name() != "check" {
		t.Fatalf("config has no check subcommand: %v", err)
	}
	for _, name := range []string{"config", "listen", "data-dir", "store", "workers", "insecure", "log-level", "log-format", "shutdown-timeout"} {
		if check.Flags().Lookup(name) == nil {
			t.Errorf("config check has no --%s flag", name)
		}
	}
}

// `herald config check` prints the effective config, redacted; the golden
// file is shared with internal/config's TestYAMLGolden (-update there).
func TestConfigCheckGolden(t *testing.T) {
	t.Parallel()
	const dir = "../../internal/config/testdata"
	out, errOut, err := runConfig(t, []string{"HERALD_REQUIRE_SERVICES=1"}, "check", "--config", filepath.Join(dir, "full.yaml"))
	if err != nil {
		t.Fatalf("config check: %v\n%s", err, errOut)
	}
	want, err := os.ReadFile(filepath.Join(dir, "full.golden.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(string(want), out); diff != "" {
		t.Errorf("config check output (-want +got):\n%s", diff)
	}
	if errOut != "" {
		t.Errorf("stderr = %q, want nothing", errOut)
	}
}

func TestConfigCheck(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name       string
		file       string
		environ    []string
		args       []string
		wantErr    string
		wantOut    []string // substrings of stdout
		wantStderr []string // stderr lines, in order
	}{
		{
			name:    "defaults",
			wantOut: []string{"listen: 127.0.0.1:8080\n", "workers: 1000\n", "    noop:\n"},
		},
		{
			name:    "flags and env override",
			file:    "workers: 5\n",
			environ: []string{"HERALD_WORKERS=6", "HERALD_TOKENS=abc"},
			args:    []string{"--listen", "0.0.0.0:9000", "--log-level", "debug"},
			wantOut: []string{"workers: 6\n", "listen: 0.0.0.0:9000\n", "level: debug\n", "    - REDACTED\n"},
		},
		{
			name:    "source problems are reported before validation",
			file:    "listen: 0.0.0.0:80\nwokers: 3\nkinds: {hook: {type: webhook, webhook: {url: /x}}}\ntopics: {t: {kind: nope}}\n",
			wantErr: "configuration is invalid: 1 problem",
			wantStderr: []string{
				`wokers: unknown key; did you mean "workers"? (file `,
			},
		},
		{
			name:    "validation problems together",
			file:    "listen: 0.0.0.0:80\nkinds: {hook: {type: webhook, webhook: {url: /x}}}\ntopics: {t: {kind: nope}}\n",
			args:    []string{"--workers", "0"},
			wantErr: "configuration is invalid: 4 problems",
			wantStderr: []string{
				`listen: "0.0.0.0:80" is not a loopback address`,
				"workers: must be at least 1, got 0",
				`kinds.hook.webhook.url: must be an absolute http or https URL, got "/x"`,
				`topics.t.kind: no kind named "nope" is configured`,
			},
		},
		{
			name:    "missing file",
			args:    []string{"--config", "/nonexistent/herald.yaml"},
			wantErr: "no such file",
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			args := append([]string{"check"}, tt.args...)
			if tt.file != "" {
				path := filepath.Join(t.TempDir(), "herald.yaml")
				if err := os.WriteFile(path, []byte(tt.file), 0o600); err != nil {
					t.Fatal(err)
				}
				args = append(args, "--config", path)
			}
			out, errOut, err := runConfig(t, tt.environ, args...)
			if tt.wantErr == "" && err != nil {
				t.Fatalf("config check: %v\n%s", err, errOut)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("config check error = %v, want one containing %q", err, tt.wantErr)
			}
			for _, want := range tt.wantOut {
				if !strings.Contains(out, want) {
					t.Errorf("stdout does not contain %q:\n%s", want, out)
				}
			}
			if tt.wantStderr == nil {
				return
			}
			if out != "" {
				t.Errorf("an invalid config printed %q to stdout", out)
			}
			lines := strings.Split(strings.TrimSuffix(errOut, "\n"), "\n")
			if len(lines) != len(tt.wantStderr) {
				t.Fatalf("stderr has %d lines, want %d:\n%s", len(lines), len(tt.wantStderr), errOut)
			}
			for i, want := range tt.wantStderr {
				if !strings.HasPrefix(lines[i], want) {
					t.Errorf("stderr line %d = %q, want prefix %q", i+1, lines[i], want)
				}
			}
		})
	}
}
