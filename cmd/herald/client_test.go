package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/httpapi"
)

// cliBundle is the real API over a real client on its own SQLite database,
// served by httptest, for the CLI commands to talk to.
type cliBundle struct {
	client  *herald.Client
	url     string
	token   string        // sent by runCLI unless the args give --token
	release chan struct{} // closing it lets "slow" jobs finish

	mu       sync.Mutex
	requests map[string]int // "METHOD /path" → count
}

// setupCLI starts a client with the kinds
//   - noop, which completes at once, and
//   - slow, which runs until the test ends,
//
// and serves the API for it; tokens, if given, are required.
func setupCLI(t *testing.T, tokens ...string) *cliBundle {
	t.Helper()
	client, err := herald.New(herald.Config{DataDir: t.TempDir(), PollInterval: 10 * time.Millisecond})
	if err != nil {
		t.Fatalf("herald.New: %v", err)
	}
	b := &cliBundle{client: client, release: make(chan struct{}), requests: map[string]int{}}
	if len(tokens) > 0 {
		b.token = tokens[0]
	}
	noop := herald.HandlerFunc(func(context.Context, *herald.Job) error { return nil })
	slow := herald.HandlerFunc(func(ctx context.Context, _ *herald.Job) error {
		select {
		case <-b.release:
		case <-ctx.Done():
		}
		return nil
	})
	for name, h := range map[string]herald.HandlerFunc{"noop": noop, "slow": slow} {
		if err := client.Register(name, h, herald.KindConfig{}); err != nil {
			t.Fatalf("Register(%q): %v", name, err)
		}
	}
	if err := client.Start(context.Background()); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := client.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	api := httpapi.New(client, httpapi.Options{Tokens: tokens})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.requests[r.Method+" "+r.URL.Path]++
		b.mu.Unlock()
		api.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	t.Cleanup(func() { close(b.release) }) // before Stop and Close: cleanups run last first
	b.url = srv.URL
	return b
}

// count returns how many requests "METHOD /path" the server has had.
func (b *cliBundle) count(route string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.requests[route]
}

// runCLI executes herald with args against the bundle's server.
func (b *cliBundle) runCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	args = append(args, "--server", b.url)
	if b.token != "" && !strings.Contains(strings.Join(args, " "), "--token") {
		args = append(args, "--token", b.token)
	}
	return execCLI(t, stdin, args...)
}

// execCLI executes herald with args as they are.
func execCLI(t *testing.T, stdin string, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	cmd := newRootCmd()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	err = cmd.ExecuteContext(t.Context())
	return out.String(), errOut.String(), err
}

// enqueue stores jobs directly through the library and returns their ids.
func (b *cliBundle) enqueue(t *testing.T, ps ...herald.EnqueueParams) []int64 {
	t.Helper()
	res, err := b.client.EnqueueMany(t.Context(), ps)
	if err != nil {
		t.Fatalf("EnqueueMany: %v", err)
	}
	ids := make([]int64, len(res))
	for i, r := range res {
		ids[i] = r.Job.ID
	}
	return ids
}

// waitState waits until job id is in state.
func (b *cliBundle) waitState(t *testing.T, id int64, state herald.JobState) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		j, err := b.client.Get(t.Context(), id)
		if err != nil {
			t.Fatalf("Get(%d): %v", id, err)
		}
		if j.State == state {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("job %d is %s after 10s, want %s", id, j.State, state)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// jobCount returns how many jobs the store holds.
func (b *cliBundle) jobCount(t *testing.T) int {
	t.Helper()
	jobs, err := b.client.List(t.Context(), herald.ListParams{Limit: 100_000})
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	return len(jobs)
}

// decodeJob parses a job the CLI printed.
func decodeJob(t *testing.T, out string) map[string]any {
	t.Helper()
	var j map[string]any
	if err := json.Unmarshal([]byte(out), &j); err != nil {
		t.Fatalf("output is not a JSON object: %v\n%s", err, out)
	}
	return j
}

func TestClientFlagsFromEnvironment(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name      string
		env       map[string]string
		args      []string
		wantURL   string
		wantToken string
		wantErr   string
	}{
		{name: "defaults", wantURL: "http://127.0.0.1:8080"},
		{name: "environment", env: map[string]string{"HERALD_SERVER": "https://q.example.com/herald/", "HERALD_TOKEN": "env-token"},
			wantURL: "https://q.example.com/herald", wantToken: "env-token"},
		{name: "flags override the environment", env: map[string]string{"HERALD_SERVER": "http://a:1", "HERALD_TOKEN": "env-token"},
			args: []string{"--server", "b:2", "--token", "flag-token"}, wantURL: "http://b:2", wantToken: "flag-token"},
		{name: "an empty --token overrides HERALD_TOKEN", env: map[string]string{"HERALD_TOKEN": "env-token"},
			args: []string{"--token", ""}, wantURL: "http://127.0.0.1:8080"},
		{name: "not http", args: []string{"--server", "ftp://x"}, wantErr: "not an http or https URL"},
		{name: "credentials in the URL", args: []string{"--server", "http://u:secret@x"}, wantErr: "put credentials in --token"},
		{name: "zero timeout", args: []string{"--timeout", "0s"}, wantErr: "--timeout must be positive"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			cmd := &cobra.Command{Use: "x", RunE: func(*cobra.Command, []string) error { return nil }}
			cf := newClientFlags(cmd)
			cf.lookupEnv = func(k string) (string, bool) { v, ok := tt.env[k]; return v, ok }
			if err := cmd.ParseFlags(tt.args); err != nil {
				t.Fatal(err)
			}
			c, err := cf.client(cmd)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("client() error = %v, want one containing %q", err, tt.wantErr)
				}
				if strings.Contains(err.Error(), "secret") {
					t.Errorf("error %q shows the password", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.close()
			if c.base.String() != tt.wantURL || c.token != tt.wantToken {
				t.Errorf("client for %s with token %q, want %s with %q", c.base, c.token, tt.wantURL, tt.wantToken)
			}
		})
	}
}

func TestAPIErrorMessage(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		err  *apiError
		want string
	}{
		{&apiError{Status: 404, Code: "not_found", Message: "no job with that id"}, "server answered 404 not_found: no job with that id"},
		{&apiError{Status: 400, Code: "invalid_field", Field: "kind", Message: "kind: is required"},
			"server answered 400 invalid_field (field kind): kind: is required"},
		{&apiError{Status: 401, Code: "unauthorized", Message: "a valid bearer token is required", hint: "no token was sent: pass --token or set HERALD_TOKEN"},
			"server answered 401 unauthorized: a valid bearer token is required; no token was sent: pass --token or set HERALD_TOKEN"},
	} {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

// A token-protected server: no token and a wrong one fail with a message
// about the token (and the token itself never appears); the right one works.
func TestTokenRequired(t *testing.T) {
	t.Parallel()
	const token = "s3cret-token-0123456789"
	b := setupCLI(t, token)
	for _, tt := range []struct {
		name    string
		args    []string
		wantErr string
	}{
		{name: "no token", args: []string{"stats", "--token", ""}, wantErr: "401 unauthorized: a valid bearer token is required; no token was sent: pass --token or set HERALD_TOKEN"},
		{name: "wrong token", args: []string{"jobs", "list", "--token", "wrong-token"}, wantErr: "the token was refused: check --token or HERALD_TOKEN"},
		{name: "enqueue without token", args: []string{"enqueue", "--kind", "noop", "--token", ""}, wantErr: "401 unauthorized"},
		{name: "right token", args: []string{"stats"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			out, errOut, err := b.runCLI(t, "", tt.args...)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("%v: %v", tt.args, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("%v: error = %v, want one containing %q", tt.args, err, tt.wantErr)
			}
			if strings.Contains(err.Error()+out+errOut, token) {
				t.Error("the token appears in the output")
			}
		})
	}
}

func TestServerUnreachable(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close() // nothing listens there now
	_, _, err := execCLI(t, "", "stats", "--server", url, "--timeout", "2s")
	var te *transportError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "no answer from herald at "+url) {
		t.Fatalf("error = %v, want a transport error naming %s", err, url)
	}
}

// An answer without herald's error shape (a proxy's) still gives the status.
func TestNonAPIErrorAnswer(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "7")
		http.Error(w, "upstream is down", http.StatusBadGateway)
	}))
	defer srv.Close()
	_, _, err := execCLI(t, "", "jobs", "get", "1", "--server", srv.URL)
	want := "job 1: server answered 502 bad_gateway: upstream is down; retry after 7s"
	if err == nil || err.Error() != want {
		t.Fatalf("error = %v, want %q", err, want)
	}
}

func TestCompletion(t *testing.T) {
	t.Parallel()
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		t.Run(shell, func(t *testing.T) {
			t.Parallel()
			out, _, err := execCLI(t, "", "completion", shell)
			if err != nil {
				t.Fatalf("completion %s: %v", shell, err)
			}
			if len(out) < 100 {
				t.Errorf("completion %s printed %d bytes", shell, len(out))
			}
		})
	}
	// --state completes to the job states.
	out, _, err := execCLI(t, "", cobra.ShellCompRequestCmd, "jobs", "list", "--state", "")
	if err != nil {
		t.Fatal(err)
	}
	for _, state := range jobStates {
		if !strings.Contains(out, state+"\n") {
			t.Errorf("--state completions lack %q:\n%s", state, out)
		}
	}
}

// Every new command has help texts.
func TestHelpTexts(t *testing.T) {
	t.Parallel()
	root := newRootCmd()
	var walk func(*cobra.Command)
	walk = func(c *cobra.Command) {
		for _, sub := range c.Commands() {
			walk(sub)
		}
		if c.Short == "" {
			t.Errorf("%q has no Short text", c.CommandPath())
		}
		if c.Runnable() && c.Example == "" && c.HasParent() && isClientCommand(c) {
			t.Errorf("%q has no Example", c.CommandPath())
		}
	}
	walk(root)
}

// isClientCommand reports whether c is one of the commands added with the
// API client (the others predate it).
func isClientCommand(c *cobra.Command) bool {
	for p := c; p != nil; p = p.Parent() {
		switch p.Name() {
		case "enqueue", "jobs", "keys", "kinds", "stats", "migrate":
			return true
		}
	}
	return false
}
