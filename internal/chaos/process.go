package chaos

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// process is one child process the harness runs: a herald node or the
// sink. It keeps its address across restarts, so clients and herald's
// webhook configuration stay valid.
type process struct {
	name string
	addr string
	args []string // after the binary; the harness adds nothing
	bin  string
	logf string // stderr and stdout go here, appended across restarts
	// readyPath is polled with GET until it answers 2xx; "" waits for a
	// TCP connection only.
	readyPath string

	cmd  *exec.Cmd
	done chan struct{} // closed when cmd has exited
	err  error         // cmd.Wait's result, set before done closes
}

// freeAddr returns a loopback address nobody listens on right now.
func freeAddr(ctx context.Context) (string, error) {
	ln, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := ln.Addr().String()
	return addr, ln.Close()
}

func (p *process) running() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// start runs the process and waits until it is ready.
func (p *process) start(ctx context.Context, timeout time.Duration) error {
	out, err := os.OpenFile(p.logf, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	// Not CommandContext: the harness decides how each process dies.
	cmd := exec.Command(p.bin, p.args...) //nolint:gosec,noctx // the configured herald binary
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		_ = out.Close()
		return fmt.Errorf("start %s: %w", p.name, err)
	}
	p.cmd, p.done, p.err = cmd, make(chan struct{}), nil
	done := p.done
	go func() {
		p.err = cmd.Wait()
		_ = out.Close()
		close(done)
	}()
	return p.waitReady(ctx, timeout)
}

func (p *process) waitReady(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	for {
		if p.ready(ctx, client) {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited while starting: %w (see %s)", p.name, p.err, p.logf)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s not ready after %s (see %s)", p.name, timeout, p.logf)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (p *process) ready(ctx context.Context, client *http.Client) bool {
	if p.readyPath == "" {
		c, err := (&net.Dialer{Timeout: time.Second}).DialContext(ctx, "tcp", p.addr)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+p.addr+p.readyPath, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	_ = resp.Body.Close()
	return resp.StatusCode/100 == 2
}

// signal sends sig to a running process.
func (p *process) signal(sig syscall.Signal) error {
	if !p.running() {
		return fmt.Errorf("%s is not running", p.name)
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("signal %s %s: %w", p.name, sig, err)
	}
	return nil
}

// wait waits up to timeout for the process to exit.
func (p *process) wait(timeout time.Duration) error {
	if p.cmd == nil {
		return nil
	}
	select {
	case <-p.done:
		return nil
	case <-time.After(timeout):
		return fmt.Errorf("%s still running %s after being told to stop", p.name, timeout)
	}
}

// kill ends the process at once (SIGCONT first in case it is stopped, so
// nothing waits on a frozen process) and waits for it.
func (p *process) kill() error {
	if !p.running() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	return p.wait(10 * time.Second)
}

// terminate asks the process to stop (SIGTERM), waiting up to grace before
// killing it.
func (p *process) terminate(grace time.Duration) error {
	if !p.running() {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGCONT)
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	if err := p.wait(grace); err != nil {
		return errors.Join(err, p.kill())
	}
	return nil
}
