package gctune

import (
	"runtime"
	"runtime/metrics"
	"testing"
	"time"
)

func gogc(t *testing.T) uint64 {
	t.Helper()
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

func TestPercent(t *testing.T) {
	tu := &Tuner{headroom: 128 << 20, base: 100}
	for _, tc := range []struct {
		live uint64
		want int
	}{
		{0, 100},                   // no collection yet: base
		{1 << 10, maxPercent},      // tiny heap: capped
		{32 << 20, 400},            // 128 MiB of room over 32 MiB live
		{128 << 20, 100},           // room equals the default's
		{1 << 30, 100},             // large heap: Go's default growth
		{(128 << 20) / 3, 300},     // rounds down
		{(128 << 20) * 10, 100},    // never below base
		{(128 << 20) / 100, 10000}, // just at the cap
	} {
		if got := tu.Percent(tc.live); got != tc.want {
			t.Errorf("Percent(%d) = %d; want %d", tc.live, got, tc.want)
		}
	}
	if got := (&Tuner{headroom: 128 << 20, base: -1}).Percent(1 << 20); got != -1 {
		t.Errorf("with the collector off (GOGC=-1 set by the program) Percent = %d; want -1", got)
	}
	if got := (&Tuner{headroom: 1, base: 150}).Percent(1 << 20); got != 150 {
		t.Errorf("a base above what headroom asks for = %d; want the base, 150", got)
	}
}

// The tuner follows collections and gives the base back on Stop. Not
// parallel: GOGC is process-wide.
func TestStartFollowsCollectionsAndStopRestores(t *testing.T) {
	tu := Start(256 << 20)
	if tu == nil {
		t.Fatal("Start returned nil with GOGC unset")
	}
	if second := Start(256 << 20); second != nil {
		second.Stop()
		tu.Stop()
		t.Fatal("a second Start tuned while the first runs; they would fight over GOGC")
	}
	keep := make([][]byte, 0, 64) // a few MiB live, far below the headroom
	for range 64 {
		keep = append(keep, make([]byte, 64<<10))
	}
	deadline := time.Now().Add(5 * time.Second)
	for gogc(t) <= 100 {
		if time.Now().After(deadline) {
			t.Fatalf("GOGC still %d after collections; the tuner never adjusted it", gogc(t))
		}
		runtime.GC()
		time.Sleep(time.Millisecond) // finalizers run on their own goroutine
	}
	runtime.KeepAlive(keep)
	tu.Stop()
	runtime.GC()
	time.Sleep(10 * time.Millisecond)
	if got := gogc(t); got != 100 {
		t.Fatalf("GOGC after Stop and a collection = %d; want 100", got)
	}
	again := Start(256 << 20)
	if again == nil {
		t.Fatal("Start after Stop returned nil")
	}
	again.Stop()
}

func TestStartRespectsGOGC(t *testing.T) {
	t.Setenv("GOGC", "100")
	if tu := Start(128 << 20); tu != nil {
		tu.Stop()
		t.Fatal("Start tuned although GOGC is set in the environment")
	}
	if tu := Start(0); tu != nil {
		tu.Stop()
		t.Fatal("Start tuned with no headroom")
	}
	var tu *Tuner
	tu.Stop() // nil-safe
}
