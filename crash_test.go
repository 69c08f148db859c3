package herald_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/history"
)

// The crash child is this test binary re-executed with crashChildEnv set:
// it runs only TestHelperProcess, which opens a client on HERALD_CRASH_DIR,
// enqueues jobs and runs them, reporting every step on stdout, one line per
// write(2) so that a line the parent reads was written before the kill:
//
//	P key seq                   about to enqueue (key, seq)
//	A id key seq                Enqueue returned nil: acknowledged
//	S id key seq attempt ns     an attempt starts
//	E id attempt ok|fail ns     the attempt ends (before its outcome is stored)
//	X message                   something went wrong
//
// The parent kills it with SIGKILL mid-run.
const crashChildEnv = "HERALD_CRASH_CHILD"

type crashPayload struct {
	Key string `json:"key"`
	Seq int64  `json:"seq"`
}

// crashFails makes the first attempt of about one job in seven fail, the
// same way in every process.
func crashFails(id int64, attempt int) bool {
	h := fnv.New32a()
	_, _ = fmt.Fprintf(h, "%d", id) // hash.Hash writes never fail
	return attempt == 1 && h.Sum32()%7 == 0
}

func envInt(name string) int {
	n, err := strconv.Atoi(os.Getenv(name))
	if err != nil {
		fmt.Printf("X bad %s: %v\n", name, err)
		os.Exit(3)
	}
	return n
}

// TestHelperProcess is the crash child; it does nothing in a normal run.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(crashChildEnv) != "1" {
		t.Skip("the child process of TestCrashKill9; runs only when re-executed by it")
	}
	var mu sync.Mutex
	emit := func(format string, args ...any) {
		line := fmt.Appendf(nil, format+"\n", args...)
		mu.Lock()
		defer mu.Unlock()
		if _, err := os.Stdout.Write(line); err != nil { // one write per line; unbuffered
			panic(err) // the parent reads this log: a lost line would corrupt the history
		}
	}
	keys, perKey, seqBase := envInt("HERALD_CRASH_KEYS"), envInt("HERALD_CRASH_PER_KEY"), envInt("HERALD_CRASH_SEQ_BASE")

	c, err := herald.New(herald.Config{DataDir: os.Getenv("HERALD_CRASH_DIR"), Workers: 8, PollInterval: 10 * time.Millisecond})
	if err != nil {
		emit("X New: %v", err)
		os.Exit(3)
	}
	err = c.Register("crash", herald.HandlerFunc(func(ctx context.Context, j *herald.Job) error {
		var p crashPayload
		if err := json.Unmarshal(j.Payload, &p); err != nil {
			emit("X payload %s: %v", j.Payload, err)
			return herald.Permanent(err)
		}
		emit("S %d %s %d %d %d", j.ID, p.Key, p.Seq, j.Attempt, time.Now().UnixNano())
		time.Sleep(time.Duration(500+rand.IntN(6000)) * time.Microsecond)
		if crashFails(j.ID, j.Attempt) {
			emit("E %d %d fail %d", j.ID, j.Attempt, time.Now().UnixNano())
			return errors.New("planned failure")
		}
		emit("E %d %d ok %d", j.ID, j.Attempt, time.Now().UnixNano())
		return nil
	}), herald.KindConfig{BackoffBase: time.Millisecond, BackoffCap: 10 * time.Millisecond})
	if err != nil {
		emit("X Register: %v", err)
		os.Exit(3)
	}
	if err := c.Start(context.Background()); err != nil {
		emit("X Start: %v", err)
		os.Exit(3)
	}
	var wg sync.WaitGroup
	for k := range keys {
		key := fmt.Sprintf("acct-%02d", k)
		wg.Go(func() {
			for s := 1; s <= perKey; s++ {
				seq := int64(seqBase + s)
				emit("P %s %d", key, seq)
				res, err := c.Enqueue(context.Background(), herald.EnqueueParams{Kind: "crash", Key: key, Payload: crashPayload{key, seq}})
				if err != nil {
					emit("X Enqueue: %v", err)
					return
				}
				emit("A %d %s %d", res.Job.ID, key, seq)
				time.Sleep(time.Duration(rand.IntN(3000)) * time.Microsecond)
			}
		})
	}
	wg.Wait()
	// Wait to be killed; exit on our own only if the parent is gone.
	time.Sleep(2 * time.Minute)
	os.Exit(4)
}

// crashKey identifies an attempt across processes: an attempt cut short by
// a crash is not counted, so its number repeats in the next process.
type crashAttempt struct {
	cycle   int
	id      int64
	attempt int
}

// crashLog is what the parent learned from its children.
type crashLog struct {
	acks    []history.Ack
	sent    map[crashPayload]bool // P lines
	recs    map[crashAttempt]*history.Record
	order   []crashAttempt
	okIDs   map[int]map[int64]bool // per cycle: ids with an attempt that ended ok
	noEnd   map[int]int            // per cycle: attempts started without an end
	killed  map[int]time.Time
	success map[int]int
}

// runCrashChild runs one child on dir, kills it with SIGKILL once it has
// logged killAfter successful attempts, and records what it printed.
func runCrashChild(t *testing.T, log *crashLog, dir string, cycle, keys, perKey, killAfter int) {
	t.Helper()
	cmd := exec.CommandContext(t.Context(), os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.timeout=5m") //nolint:gosec // re-runs this test binary
	cmd.Env = append(os.Environ(), crashChildEnv+"=1", "HERALD_CRASH_DIR="+dir,
		fmt.Sprintf("HERALD_CRASH_KEYS=%d", keys), fmt.Sprintf("HERALD_CRASH_PER_KEY=%d", perKey),
		fmt.Sprintf("HERALD_CRASH_SEQ_BASE=%d", cycle*1000))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	kill := sync.OnceFunc(func() {
		if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
			t.Errorf("kill: %v", err)
		}
	})
	// A child that never gets far enough is killed anyway.
	timeout := time.AfterFunc(60*time.Second, func() {
		t.Errorf("cycle %d: child did not log %d successes in time; killing it", cycle, killAfter)
		kill()
	})
	defer timeout.Stop()

	nano := func(s string) time.Time {
		n, _ := strconv.ParseInt(s, 10, 64)
		return time.Unix(0, n)
	}
	num := func(s string) int64 {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			t.Errorf("cycle %d: bad number %q", cycle, s)
		}
		return n
	}
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 0 {
			continue
		}
		switch {
		case f[0] == "P" && len(f) == 3:
			log.sent[crashPayload{f[1], num(f[2])}] = true
		case f[0] == "A" && len(f) == 4:
			log.acks = append(log.acks, history.Ack{ID: num(f[1]), Key: f[2], Seq: num(f[3])})
		case f[0] == "S" && len(f) == 6:
			k := crashAttempt{cycle, num(f[1]), int(num(f[4]))}
			if log.recs[k] != nil {
				t.Errorf("cycle %d: attempt %+v started twice in one process", cycle, k)
			}
			log.recs[k] = &history.Record{ID: k.id, Key: f[2], Seq: num(f[3]), Attempt: k.attempt, Start: nano(f[5])}
			log.order = append(log.order, k)
		case f[0] == "E" && len(f) == 5:
			k := crashAttempt{cycle, num(f[1]), int(num(f[2]))}
			r := log.recs[k]
			if r == nil {
				t.Errorf("cycle %d: end of attempt %+v that never started", cycle, k)
				continue
			}
			r.End = nano(f[4])
			r.Outcome = history.Failed
			if f[3] == "ok" {
				r.Outcome = history.Succeeded
				log.okIDs[cycle][k.id] = true
				log.success[cycle]++
				if log.success[cycle] >= killAfter {
					kill()
				}
			}
		default:
			t.Errorf("cycle %d: child said %q", cycle, sc.Text())
		}
	}
	// EOF: the child is gone and everything it wrote has been read.
	killedAt := time.Now().Round(0)
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) {
		t.Fatalf("cycle %d: child exited with %v; want killed by SIGKILL; stderr:\n%s", cycle, err, stderr.String())
	}
	if ws, ok := ee.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("cycle %d: child ended with %v, not by SIGKILL; stderr:\n%s", cycle, err, stderr.String())
	}
	log.killed[cycle] = killedAt
	for _, k := range log.order {
		if r := log.recs[k]; k.cycle == cycle && r.End.IsZero() {
			r.CrashedAt = killedAt
			log.noEnd[cycle]++
		}
	}
}

// TestCrashKill9 kills child processes with SIGKILL while they enqueue and
// run jobs, restarts on the same data directory, and checks that every
// acknowledged job runs to completion, in per-key order, without overlaps;
// jobs may run twice only if they were in flight at a kill.
func TestCrashKill9(t *testing.T) {
	t.Parallel()
	keys, perKey, cycles := 12, 15, 3
	if testing.Short() {
		keys, perKey, cycles = 6, 10, 2
	}
	dir := t.TempDir()
	log := &crashLog{
		sent: map[crashPayload]bool{}, recs: map[crashAttempt]*history.Record{},
		okIDs: map[int]map[int64]bool{}, noEnd: map[int]int{}, killed: map[int]time.Time{}, success: map[int]int{},
	}
	// Successes logged but not stored when the process died: the only
	// attempts that may legitimately run again to success.
	uncommitted := map[int64]bool{}
	inFlight := 0
	for cycle := 1; cycle <= cycles; cycle++ {
		log.okIDs[cycle] = map[int64]bool{}
		killAfter := keys * perKey * (2 + cycle%3) / 10 // 30%, 40%, 20% of a cycle's new jobs
		runCrashChild(t, log, dir, cycle, keys, perKey, killAfter)

		// Which logged successes did the store not record?
		c := reopen(t, dir)
		n := 0
		for id := range log.okIDs[cycle] {
			j, err := c.Get(t.Context(), id)
			if err != nil {
				t.Fatalf("Get(%d) after the kill: %v", id, err)
			}
			if j.State != herald.StateCompleted {
				uncommitted[id] = true
				n++
			}
		}
		stopClient(t, c)
		inFlight += log.noEnd[cycle] + n
		t.Logf("cycle %d: killed after %d successes; %d attempts running, %d successes not yet stored",
			cycle, log.success[cycle], log.noEnd[cycle], n)
	}

	// Drain in-process and record the remaining attempts.
	rec := history.NewRecorder()
	cfg := testConfig(t)
	cfg.DataDir = dir
	c := newClient(t, cfg)
	mustRegister(t, c, "crash", func(_ context.Context, j *herald.Job) error {
		var p crashPayload
		if err := json.Unmarshal(j.Payload, &p); err != nil {
			return herald.Permanent(err)
		}
		done := rec.Start(j.ID, p.Key, p.Seq, j.Attempt)
		time.Sleep(200 * time.Microsecond)
		if crashFails(j.ID, j.Attempt) {
			done(history.Failed)
			return errors.New("planned failure")
		}
		done(history.Succeeded)
		return nil
	}, herald.KindConfig{BackoffBase: time.Millisecond, BackoffCap: 10 * time.Millisecond})
	mustStart(t, c)
	waitErr(t, 30*time.Second, func() error {
		st, err := c.Stats(t.Context())
		if err != nil {
			return err
		}
		m := st.ByKindState["crash"]
		if n := m[herald.StateScheduled] + m[herald.StateAvailable] + m[herald.StateRunning] + m[herald.StateRetryable]; n > 0 {
			return fmt.Errorf("%d jobs still pending after the crashes", n)
		}
		return nil
	})
	stopClient(t, c)

	recs := rec.Records()
	for _, k := range log.order {
		recs = append(recs, *log.recs[k])
	}
	// A job whose enqueue was under way at a kill may exist without an ack.
	acked := map[int64]bool{}
	for _, a := range log.acks {
		acked[a.ID] = true
	}
	indeterminate := map[int64]bool{}
	for _, r := range recs {
		if !acked[r.ID] && log.sent[crashPayload{r.Key, r.Seq}] {
			indeterminate[r.ID] = true
		}
	}
	rep := history.Check(log.acks, recs, history.Options{Indeterminate: indeterminate, MaxListed: -1})
	t.Logf("%d kills, %d attempts in flight at the kills, %d indeterminate enqueues: %s", cycles, inFlight, len(indeterminate), rep)
	if err := rep.Err(); err != nil {
		t.Fatal(err)
	}
	if rep.Acknowledged < cycles*keys*perKey/5 {
		t.Errorf("only %d acknowledged jobs; the children did too little to test anything", rep.Acknowledged)
	}
	if rep.Duplicates > inFlight {
		t.Errorf("%d duplicates, more than the %d attempts in flight at the kills", rep.Duplicates, inFlight)
	}
	for _, id := range rep.DuplicateIDs {
		if !uncommitted[id] {
			t.Errorf("job %d succeeded twice although its first success was stored before the kill", id)
		}
	}
}
