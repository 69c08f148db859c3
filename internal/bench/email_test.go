package bench

import (
	"testing"

	"github.com/heraldmq/herald/internal/smtptest"
)

// TestEmailScenario at toy size, against the in-process sink and against
// an external one given by address: every message arrives over at most
// conns connections, and the result adds up.
func TestEmailScenario(t *testing.T) {
	t.Parallel()
	t.Run("in-process sink", func(t *testing.T) {
		t.Parallel()
		res, err := Email(t.Context(), Options{}, "", 300, 4, "")
		if err != nil {
			t.Fatal(err)
		}
		if res.Failed != 0 || res.SentPerS <= 0 || res.Dials < 1 || res.Dials > 4 || res.CPUMicrosPerMsg <= 0 || res.Err() != nil {
			t.Errorf("implausible result %+v", res)
		}
	})
	t.Run("external sink", func(t *testing.T) {
		t.Parallel()
		sink, err := smtptest.Start(smtptest.Options{Discard: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = sink.Close() })
		res, err := Email(t.Context(), Options{}, sink.Addr(), 300, 3, "")
		if err != nil {
			t.Fatal(err)
		}
		if sink.Count() != 300 || sink.Conns() > 3 || res.Failed != 0 || res.SMTP != sink.Addr() {
			t.Errorf("sink got %d messages over %d connections; result %+v", sink.Count(), sink.Conns(), res)
		}
	})
}
