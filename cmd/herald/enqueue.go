package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
)

const (
	defaultBatchSize = 1000
	maxBatchSize     = 10_000 // the API's limit per POST /v1/jobs/batch
	// maxLineBytes bounds one NDJSON line: the API's default request limit.
	maxLineBytes = 32 << 20
)

// enqueueBody is the body of POST /v1/jobs.
type enqueueBody struct {
	Kind           string          `json:"kind"`
	Key            string          `json:"key,omitempty"`
	Payload        json.RawMessage `json:"payload"`
	RunAt          string          `json:"run_at,omitempty"`
	Delay          string          `json:"delay,omitempty"`
	MaxAttempts    int             `json:"max_attempts,omitempty"`
	IdempotencyKey string          `json:"idempotency_key,omitempty"`
}

type enqueueFlags struct {
	body        enqueueBody
	payload     string
	payloadFile string
	delay       time.Duration
	ndjson      string
	batchSize   int
	progress    bool
}

func newEnqueueCmd() *cobra.Command {
	var f enqueueFlags
	cmd := &cobra.Command{
		Use:   "enqueue",
		Short: "Enqueue one job, or many from an NDJSON file",
		Long: `Enqueue one job and print it as JSON, or enqueue many from NDJSON.

One job: --kind is required; --key orders it after earlier jobs of the same
key; --payload (or --payload-file, "-" for stdin) is its JSON payload,
null when omitted; --delay or --run-at schedules it. With --idempotency-key,
sending the same job again returns the job already stored (a note on stderr
says so) instead of adding another.

Many jobs: --ndjson FILE (or "-" for stdin) holds one job object per line with
the API's fields: {"kind","key","payload","run_at","delay","max_attempts",
"idempotency_key"}. Blank lines are skipped. Jobs are sent in batches of
--batch-size with POST /v1/jobs/batch; each batch is stored all or nothing,
in file order. A progress bar is drawn on stderr when it is a terminal (or
with --progress). At the end a summary is printed: jobs sent, batches,
elapsed time and rate.

A bad line (not a JSON object, or a job the server refuses) stops the run
with an error naming the line. Nothing from that line's batch is stored;
the error says how many jobs from earlier batches already were. Give each
job an idempotency_key to make re-running the whole file safe.`,
		Example: `  herald enqueue --kind sleep --key account-42 --payload '{"ms": 200}'
  herald enqueue --kind process-event --payload-file event.json --delay 30s --idempotency-key evt-9f1c
  herald enqueue --ndjson jobs.ndjson --batch-size 5000
  generate-jobs | herald enqueue --ndjson -`,
		Args: cobra.NoArgs,
	}
	cf := newClientFlags(cmd)
	fs := cmd.Flags()
	fs.StringVar(&f.body.Kind, "kind", "", "job kind (required unless --ndjson)")
	fs.StringVar(&f.body.Key, "key", "", "ordering key: jobs of one key run one at a time, in order")
	fs.StringVar(&f.payload, "payload", "", "JSON payload (default null)")
	fs.StringVar(&f.payloadFile, "payload-file", "", `file holding the JSON payload ("-" for stdin)`)
	fs.DurationVar(&f.delay, "delay", 0, "run the job this long from now, e.g. 30s or 1h30m")
	fs.StringVar(&f.body.RunAt, "run-at", "", "run the job at this RFC 3339 time, e.g. 2030-01-02T15:04:05Z")
	fs.IntVar(&f.body.MaxAttempts, "max-attempts", 0, "attempts before the job is discarded (default: the kind's)")
	fs.StringVar(&f.body.IdempotencyKey, "idempotency-key", "", "enqueue at most once per this key: a repeat returns the stored job")
	fs.StringVar(&f.ndjson, "ndjson", "", `enqueue the jobs in this NDJSON file, one per line ("-" for stdin)`)
	fs.IntVar(&f.batchSize, "batch-size", defaultBatchSize, "with --ndjson: jobs per request, 1 to 10000")
	fs.BoolVar(&f.progress, "progress", false, "with --ndjson: draw a progress bar on stderr (default: when stderr is a terminal)")

	cmd.MarkFlagsMutuallyExclusive("payload", "payload-file")
	cmd.MarkFlagsMutuallyExclusive("delay", "run-at")
	for _, single := range []string{"kind", "key", "payload", "payload-file", "delay", "run-at", "max-attempts", "idempotency-key"} {
		cmd.MarkFlagsMutuallyExclusive("ndjson", single)
	}
	_ = cmd.MarkFlagFilename("payload-file", "json")
	_ = cmd.MarkFlagFilename("ndjson", "ndjson", "jsonl", "json")

	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := cf.client(cmd)
		if err != nil {
			return err
		}
		defer c.close()
		if f.ndjson != "" {
			return enqueueNDJSON(cmd, c, &f)
		}
		for _, name := range []string{"batch-size", "progress"} {
			if flagChanged(cmd, name) {
				return fmt.Errorf("--%s applies only with --ndjson", name)
			}
		}
		return enqueueOne(cmd, c, &f)
	}
	return cmd
}

func enqueueOne(cmd *cobra.Command, c *apiClient, f *enqueueFlags) error {
	if f.body.Kind == "" {
		return errors.New("--kind is required (or give --ndjson FILE to enqueue many jobs)")
	}
	payload := []byte(f.payload)
	if f.payloadFile != "" {
		var err error
		if payload, err = readInput(cmd, f.payloadFile); err != nil {
			return fmt.Errorf("--payload-file: %w", err)
		}
	}
	payload = bytes.TrimSpace(payload)
	switch {
	case len(payload) == 0:
		payload = []byte("null")
	case !json.Valid(payload):
		var v any
		err := json.Unmarshal(payload, &v)
		return fmt.Errorf("the payload is not valid JSON: %w", err)
	}
	f.body.Payload = payload
	if flagChanged(cmd, "delay") {
		if f.delay < 0 {
			return fmt.Errorf("--delay must not be negative, got %s", f.delay)
		}
		f.body.Delay = f.delay.String()
	}
	if f.body.RunAt != "" {
		if _, err := time.Parse(time.RFC3339Nano, f.body.RunAt); err != nil {
			return fmt.Errorf("--run-at must be an RFC 3339 time such as 2030-01-02T15:04:05Z, got %q", f.body.RunAt)
		}
	}
	if f.body.MaxAttempts < 0 {
		return fmt.Errorf("--max-attempts must not be negative, got %d", f.body.MaxAttempts)
	}
	body, err := json.Marshal(f.body)
	if err != nil {
		return err
	}
	status, raw, err := c.send(cmd.Context(), http.MethodPost, "/v1/jobs", nil, body)
	if err != nil {
		return fmt.Errorf("enqueue: %w", err)
	}
	if status == http.StatusOK {
		fmt.Fprintln(cmd.ErrOrStderr(), "note: a job with this idempotency key already exists; it was not enqueued again")
	}
	return printJSON(cmd.OutOrStdout(), raw)
}

// readInput reads a file, or stdin for "-".
func readInput(cmd *cobra.Command, name string) ([]byte, error) {
	if name == "-" {
		return io.ReadAll(cmd.InOrStdin())
	}
	return os.ReadFile(name)
}

// batchSender sends NDJSON jobs in batches and keeps the tally the summary
// and the error messages report.
type batchSender struct {
	cmd  *cobra.Command
	c    *apiClient
	bar  *progressbar.ProgressBar // nil: no progress bar
	unit string                   // what the bar counts: "bytes" or "jobs"

	// The batch being filled.
	body      bytes.Buffer
	lines     []int // line number of each job in body
	bodyBytes int64 // input bytes of those lines, for a byte-counting bar

	stored  int // jobs the server acknowledged
	batches int // batches the server acknowledged
}

func enqueueNDJSON(cmd *cobra.Command, c *apiClient, f *enqueueFlags) error {
	if f.batchSize < 1 || f.batchSize > maxBatchSize {
		return fmt.Errorf("--batch-size must be from 1 to %d, got %d", maxBatchSize, f.batchSize)
	}
	in, size, err := openNDJSON(cmd, f.ndjson)
	if err != nil {
		return err
	}
	defer func() { _ = in.Close() }() // opened for reading only

	s := &batchSender{cmd: cmd, c: c}
	showBar := f.progress
	if !flagChanged(cmd, "progress") {
		showBar = isTerminal(cmd.ErrOrStderr())
	}
	if showBar {
		s.bar, s.unit = newProgressBar(cmd.ErrOrStderr(), size)
	}
	start := time.Now()
	if err := s.run(in, f.batchSize); err != nil {
		if s.bar != nil {
			_ = s.bar.Clear()
		}
		return err
	}
	if s.bar != nil {
		_ = s.bar.Finish()
		fmt.Fprintln(cmd.ErrOrStderr())
	}
	elapsed := time.Since(start)
	rate := float64(s.stored) / max(elapsed.Seconds(), 1e-9)
	fmt.Fprintf(cmd.OutOrStdout(), "enqueued %d jobs in %d %s in %s (%.0f jobs/s)\n",
		s.stored, s.batches, plural(s.batches, "batch", "batches"), elapsed.Round(time.Millisecond), rate)
	return nil
}

// openNDJSON opens the input; size is its length when known, else -1.
func openNDJSON(cmd *cobra.Command, name string) (io.ReadCloser, int64, error) {
	if name == "-" {
		return io.NopCloser(cmd.InOrStdin()), -1, nil
	}
	file, err := os.Open(name)
	if err != nil {
		return nil, 0, fmt.Errorf("--ndjson: %w", err)
	}
	size := int64(-1)
	if st, err := file.Stat(); err == nil && st.Mode().IsRegular() {
		size = st.Size()
	}
	return file, size, nil
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// newProgressBar counts bytes of a file of known size, else jobs. The
// spinner has no ticker (interval 0): the bar redraws only when it moves,
// and leaves no goroutine behind.
func newProgressBar(w io.Writer, size int64) (*progressbar.ProgressBar, string) {
	opts := []progressbar.Option{
		progressbar.OptionSetWriter(w),
		progressbar.OptionSetDescription("enqueue"),
		progressbar.OptionThrottle(100 * time.Millisecond),
		progressbar.OptionSetSpinnerChangeInterval(0),
		progressbar.OptionSetWidth(30),
	}
	if size >= 0 {
		opts = append(opts, progressbar.OptionShowBytes(true))
		return progressbar.NewOptions64(size, opts...), "bytes"
	}
	opts = append(opts, progressbar.OptionShowCount(), progressbar.OptionShowIts(),
		progressbar.OptionSetItsString("jobs"), progressbar.OptionSetElapsedTime(true))
	return progressbar.NewOptions64(-1, opts...), "jobs"
}

// run reads in line by line and sends a batch whenever batchSize jobs are
// waiting, and once more at the end.
func (s *batchSender) run(in io.Reader, batchSize int) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 0, 64<<10), maxLineBytes)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		raw := sc.Bytes()
		s.bodyBytes += int64(len(raw)) + 1
		line := bytes.TrimSpace(raw)
		if len(line) == 0 {
			continue
		}
		if err := checkJobLine(line); err != nil {
			return s.fail(fmt.Errorf("line %d: %w", lineNo, err), batchNotSent, lineNo)
		}
		if len(s.lines) == 0 {
			s.body.Reset()
			s.body.WriteString(`{"jobs":[`)
		} else {
			s.body.WriteByte(',')
		}
		s.body.Write(line)
		s.lines = append(s.lines, lineNo)
		if len(s.lines) == batchSize {
			if err := s.flush(); err != nil {
				return err
			}
		}
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			err = fmt.Errorf("longer than %d MiB", maxLineBytes>>20)
		}
		return s.fail(fmt.Errorf("line %d: %w", lineNo+1, err), batchNotSent, lineNo+1)
	}
	if len(s.lines) > 0 {
		return s.flush()
	}
	return nil
}

// checkJobLine checks that line is one JSON object; the server checks its
// fields.
func checkJobLine(line []byte) error {
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(line, &obj); err != nil {
		if _, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
			return errors.New("not a JSON object; each line must be one job object such as {\"kind\":\"noop\",\"payload\":null}")
		}
		return fmt.Errorf("invalid JSON: %w", err)
	}
	if obj == nil {
		return errors.New("null is not a job; each line must be one job object")
	}
	return nil
}

// flush sends the waiting batch.
func (s *batchSender) flush() error {
	s.body.WriteString("]}")
	err := s.c.do(s.cmd.Context(), http.MethodPost, "/v1/jobs/batch", nil, s.body.Bytes(), nil)
	if err != nil {
		outcome := batchRefused
		if _, ok := errors.AsType[*transportError](err); ok {
			outcome = batchUnknown
		}
		return s.fail(s.nameLine(err), outcome, 0)
	}
	s.stored += len(s.lines)
	s.batches++
	if s.bar != nil {
		if s.unit == "bytes" {
			_ = s.bar.Add64(s.bodyBytes)
			s.bar.Describe(fmt.Sprintf("enqueue (%d jobs)", s.stored))
		} else {
			_ = s.bar.Add(len(s.lines))
		}
	}
	s.lines, s.bodyBytes = s.lines[:0], 0
	return nil
}

// nameLine turns the server's jobs[i].field into the line number of job i.
func (s *batchSender) nameLine(err error) error {
	ae, ok := errors.AsType[*apiError](err)
	if !ok {
		return fmt.Errorf("batch %d (%s): %w", s.batches+1, s.lineRange(), err)
	}
	rest, ok := strings.CutPrefix(ae.Field, "jobs[")
	if !ok {
		return fmt.Errorf("batch %d (%s): %w", s.batches+1, s.lineRange(), err)
	}
	idx, field, _ := strings.Cut(rest, "]")
	i, convErr := strconv.Atoi(idx)
	if convErr != nil || i < 0 || i >= len(s.lines) {
		return fmt.Errorf("batch %d (%s): %w", s.batches+1, s.lineRange(), err)
	}
	named := *ae
	named.Field = strings.TrimPrefix(field, ".")
	named.Message = strings.ReplaceAll(named.Message, "jobs["+idx+"].", "") // the line number says which job
	return fmt.Errorf("line %d: the server refused the job: %w", s.lines[i], &named)
}

func (s *batchSender) lineRange() string {
	if len(s.lines) == 0 {
		return "no lines"
	}
	return fmt.Sprintf("lines %d-%d", s.lines[0], s.lines[len(s.lines)-1])
}

// batchOutcome says what became of the batch a run stopped on.
type batchOutcome int

const (
	batchNotSent batchOutcome = iota // a bad line stopped it before it was sent
	batchRefused                     // the server answered with an error: nothing stored
	batchUnknown                     // sent, but no answer came back
)

// fail adds to err what became of the current batch and what was stored
// before it. badLine is the line that stopped a batch that was not sent.
func (s *batchSender) fail(err error, outcome batchOutcome, badLine int) error {
	var what string
	switch outcome {
	case batchNotSent:
		first := badLine
		if len(s.lines) > 0 {
			first = s.lines[0]
		}
		what = fmt.Sprintf("batch %d (lines %d-%d) was not sent", s.batches+1, first, badLine)
	case batchRefused:
		what = fmt.Sprintf("nothing from batch %d (%s) was stored", s.batches+1, s.lineRange())
	case batchUnknown:
		what = fmt.Sprintf("batch %d (%s) may or may not have been stored", s.batches+1, s.lineRange())
	}
	return fmt.Errorf("%w; %s; already stored: %d %s from %d earlier %s",
		err, what, s.stored, plural(s.stored, "job", "jobs"), s.batches, plural(s.batches, "batch", "batches"))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}
