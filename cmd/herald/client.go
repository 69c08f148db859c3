package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
)

const (
	defaultServer = "http://127.0.0.1:8080"
	// maxResponseBytes bounds what the CLI reads of one answer: a full page
	// of 1,000 jobs with large payloads fits with room to spare.
	maxResponseBytes = 256 << 20
)

// clientFlags are the connection flags every API command takes. The server
// and token fall back to HERALD_SERVER and HERALD_TOKEN when their flag is
// not given; they are resolved when the command runs, so the token never
// appears in --help as a default.
type clientFlags struct {
	server  string
	token   string
	timeout time.Duration
	// lookupEnv reads the environment; tests replace it.
	lookupEnv func(string) (string, bool)
}

// newClientFlags registers the connection flags as persistent flags of cmd,
// so that its subcommands take them too.
func newClientFlags(cmd *cobra.Command) *clientFlags {
	cf := &clientFlags{lookupEnv: os.LookupEnv}
	fs := cmd.PersistentFlags()
	fs.StringVar(&cf.server, "server", "", "herald API base URL (default $HERALD_SERVER, else "+defaultServer+")")
	fs.StringVar(&cf.token, "token", "", "bearer token for the API (default $HERALD_TOKEN); never printed")
	fs.DurationVar(&cf.timeout, "timeout", 30*time.Second, "timeout of each HTTP request")
	return cf
}

// client builds an API client from the flags, falling back to the
// environment for flags not given on the command line.
func (cf *clientFlags) client(cmd *cobra.Command) (*apiClient, error) {
	server, token := cf.server, cf.token
	if !flagChanged(cmd, "server") {
		if v, ok := cf.lookupEnv("HERALD_SERVER"); ok && v != "" {
			server = v
		} else {
			server = defaultServer
		}
	}
	if !flagChanged(cmd, "token") {
		if v, ok := cf.lookupEnv("HERALD_TOKEN"); ok {
			token = v
		}
	}
	base, err := parseServer(server)
	if err != nil {
		return nil, err
	}
	if cf.timeout <= 0 {
		return nil, fmt.Errorf("--timeout must be positive, got %s", cf.timeout)
	}
	return newAPIClient(base, strings.TrimSpace(token), cf.timeout), nil
}

func flagChanged(cmd *cobra.Command, name string) bool {
	f := cmd.Flags().Lookup(name)
	return f != nil && f.Changed
}

// parseServer accepts "http://host:port[/prefix]", "https://..." or a bare
// "host:port" (taken as http).
func parseServer(s string) (*url.URL, error) {
	s = strings.TrimSpace(s)
	if !strings.Contains(s, "://") {
		s = "http://" + s
	}
	u, err := url.Parse(s)
	if err != nil || u.Host == "" || (u.Scheme != "http" && u.Scheme != "https") {
		return nil, fmt.Errorf("--server: %q is not an http or https URL such as %s", s, defaultServer)
	}
	if u.User != nil {
		return nil, errors.New("--server: put credentials in --token or HERALD_TOKEN, not in the URL")
	}
	u.Path = strings.TrimSuffix(u.Path, "/")
	u.RawQuery, u.Fragment = "", ""
	return u, nil
}

// apiClient calls herald's HTTP API.
type apiClient struct {
	base  *url.URL
	token string
	http  *http.Client
}

func newAPIClient(base *url.URL, token string, timeout time.Duration) *apiClient {
	transport, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		transport = &http.Transport{}
	}
	return &apiClient{
		base:  base,
		token: token,
		// Its own transport, so close can drop its idle connections.
		http: &http.Client{Timeout: timeout, Transport: transport.Clone()},
	}
}

// close releases the client's idle connections.
func (c *apiClient) close() { c.http.CloseIdleConnections() }

// apiError is an error answer of the API: {"error":{"code","message","field"}}.
type apiError struct {
	Status  int    // HTTP status
	Code    string // machine-readable, e.g. "not_found"
	Message string
	Field   string // the request field at fault, if any
	// hint is advice from the CLI, not from the server.
	hint string
}

func (e *apiError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "server answered %d %s", e.Status, e.Code)
	if e.Field != "" {
		fmt.Fprintf(&b, " (field %s)", e.Field)
	}
	if e.Message != "" {
		b.WriteString(": " + e.Message)
	}
	if e.hint != "" {
		b.WriteString("; " + e.hint)
	}
	return b.String()
}

// transportError means no answer came back: the request may or may not
// have been carried out.
type transportError struct {
	server string
	err    error
}

func (e *transportError) Error() string {
	return fmt.Sprintf("no answer from herald at %s (is `herald serve` running there? see --server): %v", e.server, e.err)
}

func (e *transportError) Unwrap() error { return e.err }

// do sends a request and decodes a 2xx answer's JSON into out (unless out
// is nil). Other answers become an *apiError. path must be escaped;
// query may be nil.
func (c *apiClient) do(ctx context.Context, method, path string, query url.Values, body []byte, out any) error {
	raw, err := c.doRaw(ctx, method, path, query, body)
	if err != nil || out == nil {
		return err
	}
	if err := json.Unmarshal(raw, out); err != nil {
		return fmt.Errorf("%s %s: cannot decode the answer: %w", method, path, err)
	}
	return nil
}

// doRaw is do returning the 2xx answer's body as it came.
func (c *apiClient) doRaw(ctx context.Context, method, path string, query url.Values, body []byte) ([]byte, error) {
	_, raw, err := c.send(ctx, method, path, query, body)
	return raw, err
}

// send is doRaw also returning the 2xx status.
func (c *apiClient) send(ctx context.Context, method, path string, query url.Values, body []byte) (int, []byte, error) {
	// path is already escaped (segments go through url.PathEscape).
	target := c.base.String() + path
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, target, rd)
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Accept", "application/json")
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if c.token != "" {
		req.Header.Set("Authorization", "Bearer "+c.token)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		// *url.Error names the URL, never the Authorization header.
		return 0, nil, &transportError{server: c.base.String(), err: err}
	}
	defer func() { _ = resp.Body.Close() }() // read to the end or limit; nothing to recover
	raw, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return 0, nil, &transportError{server: c.base.String(), err: fmt.Errorf("reading the answer: %w", err)}
	}
	if resp.StatusCode/100 == 2 {
		return resp.StatusCode, raw, nil
	}
	return 0, nil, c.decodeError(resp, raw)
}

// decodeError turns a non-2xx answer into an *apiError, whether or not its
// body has herald's error shape (a proxy in between may answer instead).
func (c *apiClient) decodeError(resp *http.Response, raw []byte) error {
	var body struct {
		Error *struct {
			Code    string `json:"code"`
			Message string `json:"message"`
			Field   string `json:"field"`
		} `json:"error"`
	}
	e := &apiError{Status: resp.StatusCode}
	if json.Unmarshal(raw, &body) == nil && body.Error != nil {
		e.Code, e.Message, e.Field = body.Error.Code, body.Error.Message, body.Error.Field
	} else {
		e.Code = strings.ToLower(strings.ReplaceAll(http.StatusText(resp.StatusCode), " ", "_"))
		e.Message = strings.TrimSpace(string(raw[:min(len(raw), 200)]))
	}
	switch {
	case resp.StatusCode == http.StatusUnauthorized && c.token == "":
		e.hint = "no token was sent: pass --token or set HERALD_TOKEN"
	case resp.StatusCode == http.StatusUnauthorized:
		e.hint = "the token was refused: check --token or HERALD_TOKEN"
	case resp.Header.Get("Retry-After") != "":
		e.hint = "retry after " + resp.Header.Get("Retry-After") + "s"
	}
	return e
}

// printJSON writes raw JSON to w, indented for reading.
func printJSON(w io.Writer, raw []byte) error {
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(raw), "", "  "); err != nil {
		return fmt.Errorf("the server sent invalid JSON: %w", err)
	}
	buf.WriteByte('\n')
	_, err := w.Write(buf.Bytes())
	return err
}

// jobAction returns the RunE of a command that takes a job id, sends one
// request about it and prints the job the server answers with.
func jobAction(cf *clientFlags, method, suffix string) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		id, err := parseJobID(args[0])
		if err != nil {
			return err
		}
		c, err := cf.client(cmd)
		if err != nil {
			return err
		}
		defer c.close()
		raw, err := c.doRaw(cmd.Context(), method, "/v1/jobs/"+id+suffix, nil, nil)
		if err != nil {
			return fmt.Errorf("job %s: %w", id, err)
		}
		return printJSON(cmd.OutOrStdout(), raw)
	}
}
