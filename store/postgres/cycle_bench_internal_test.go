package postgres

import (
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/heraldmq/herald/store"
	"github.com/heraldmq/herald/store/postgres/pgtest"
)

// BenchmarkExchangeCycle runs the engine's busy-cycle mix against one
// connection: each exchange inserts up to 1000 ordered jobs (over 1000
// keys), completes every job the previous exchange claimed, and claims up
// to 1000. Besides time per job it reports the PostgreSQL backend's CPU per
// job (server_us/job) when the server runs on this machine. It moves less
// than wall time when other work shares the CPU, but still by some 10%
// on a busy 2-core machine: alternate the builds compared and take the
// median of several runs.
//
//	go test -run '^$' -bench ExchangeCycle -benchtime 50000x ./store/postgres/
func BenchmarkExchangeCycle(b *testing.B) {
	s, err := Open(b.Context(), pgtest.SchemaURL(b), Options{MaxConns: 1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = s.Close() })
	var pid int
	if err := s.pool.QueryRow(b.Context(), `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	var (
		running  []*store.Job
		inserted int
		done     int
	)
	limits := []store.KindLimit{{Kind: "k", Max: 1000}}
	cpu0, cpuOK := backendCPU(pid)
	b.ResetTimer()
	for done < b.N {
		now := time.Now()
		p := store.ExchangeParams{Now: now, IdempotencySince: now.Add(-time.Hour),
			Claim: &store.ClaimParams{Now: now, Owner: "bench", LeaseUntil: now.Add(time.Minute), Limits: limits, Max: 1000}}
		for range min(1000, b.N-inserted) {
			p.Inserts = append(p.Inserts, store.InsertParams{Kind: "k", Key: "key" + strconv.Itoa(rng.IntN(1000)), MaxAttempts: 3})
		}
		inserted += len(p.Inserts)
		for _, j := range running {
			p.Finishes = append(p.Finishes, store.FinishParams{ID: j.ID, Owner: "bench", LeaseToken: j.LeaseToken,
				Outcome: store.OutcomeCompleted})
		}
		res, err := s.Exchange(b.Context(), p)
		if err != nil {
			b.Fatal(err)
		}
		for _, f := range res.Finished {
			if f.Fenced {
				b.Fatalf("job %d fenced", f.ID)
			}
		}
		done += len(p.Finishes)
		running = res.Claimed
		if len(p.Inserts) == 0 && len(p.Finishes) == 0 && len(running) == 0 {
			b.Fatalf("stuck after %d of %d jobs", done, b.N)
		}
	}
	b.StopTimer()
	if cpu1, ok := backendCPU(pid); ok && cpuOK {
		b.ReportMetric(float64(cpu1-cpu0)*1e6/100/float64(done), "server_us/job")
	}
}

// backendCPU returns a local process's CPU time (user + system) in clock
// ticks (1/100 s on Linux).
func backendCPU(pid int) (int64, bool) {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, false
	}
	s := string(raw)
	// Fields after the command name, which is in parentheses.
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	if len(f) < 13 {
		return 0, false
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	return u + st, err1 == nil && err2 == nil
}
