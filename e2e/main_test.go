// Package e2e runs real `herald serve` processes and talks to them over
// HTTP, as an application would.
package e2e

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// heraldBin is the binary under test, built once by TestMain.
var heraldBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "herald-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	heraldBin = filepath.Join(dir, "herald")
	build := exec.CommandContext(context.Background(), "go", "build", "-o", heraldBin, "github.com/heraldmq/herald/cmd/herald") //nolint:gosec // fixed arguments and a temp path
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build herald:", err)
		os.Exit(1)
	}
	code := func() int {
		defer os.RemoveAll(dir) //nolint:errcheck // temp dir
		// A leak check that runs only when the tests passed would say
		// nothing new; run it always.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak before tests:", err)
		}
		c := m.Run()
		if c == 0 {
			if err := goleak.Find(); err != nil {
				fmt.Fprintln(os.Stderr, "goleak:", err)
				return 1
			}
		}
		return c
	}()
	os.Exit(code)
}

// server is one running `herald serve` process.
type server struct {
	t    *testing.T
	cmd  *exec.Cmd
	addr string
	logs *strings.Builder
	done chan error
	// exited is closed once the process has exited and been waited for.
	exited chan struct{}
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := (&net.ListenConfig{}).Listen(t.Context(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	if err := ln.Close(); err != nil {
		t.Fatal(err)
	}
	return addr
}

// startServer runs herald serve with the YAML config and waits for /readyz.
func startServer(t *testing.T, dataDir, yaml string, extra ...string) *server {
	t.Helper()
	cfgPath := filepath.Join(t.TempDir(), "herald.yaml")
	if err := os.WriteFile(cfgPath, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	addr := freeAddr(t)
	args := append([]string{"serve", "--config", cfgPath, "--listen", addr, "--data-dir", dataDir, "--log-format", "json"}, extra...)
	cmd := exec.CommandContext(context.Background(), heraldBin, args...) //nolint:gosec // the binary this test built
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	s := &server{t: t, cmd: cmd, addr: addr, logs: &strings.Builder{}, done: make(chan error, 1), exited: make(chan struct{})}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	logsDone := make(chan struct{})
	go func() {
		defer close(logsDone)
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			s.logs.WriteString(sc.Text() + "\n")
		}
	}()
	go func() {
		<-logsDone
		err := cmd.Wait()
		close(s.exited)
		s.done <- err
	}()
	t.Cleanup(func() {
		// Not cmd.ProcessState: Wait writes it on the goroutine above,
		// and a process that exited by itself (a crash) is not waited
		// for by the test.
		select {
		case <-s.exited:
			return
		default:
		}
		if err := cmd.Process.Kill(); err == nil {
			t.Logf("killed herald serve left running by the test: %v", <-s.done)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, "http://"+addr+"/readyz", nil)
		if err != nil {
			t.Fatal(err)
		}
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close() //nolint:errcheck // probe
			if resp.StatusCode == http.StatusOK {
				return s
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("herald serve not ready after 20s:\n%s", s.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// stop sends sig and waits for the process to exit, returning its error.
func (s *server) stop(sig syscall.Signal, timeout time.Duration) error {
	s.t.Helper()
	if err := s.cmd.Process.Signal(sig); err != nil {
		// It exited on its own before the signal: say how, and what it logged.
		select {
		case exit := <-s.done:
			s.t.Fatalf("signal %s: %v (it had exited: %v):\n%s", sig, err, exit, s.logs.String())
		case <-time.After(timeout):
			s.t.Fatalf("signal %s: %v:\n%s", sig, err, s.logs.String())
		}
	}
	select {
	case err := <-s.done:
		return err
	case <-time.After(timeout):
		s.t.Fatalf("herald serve did not exit within %s after %s:\n%s", timeout, sig, s.logs.String())
		return nil
	}
}

func (s *server) url(path string) string { return "http://" + s.addr + path }

func post(ctx context.Context, client *http.Client, url, body string) (int, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close() //nolint:errcheck // read fully below
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, b, err
}
