package postgres

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listen calls wake whenever another node may have made work ready: every
// transaction that inserts or finishes jobs (and every operator retry,
// cancel or rescue) sends a NOTIFY on the schema's channel. The store holds
// one dedicated connection outside the pool for all its listeners (a
// client's store loops each listen); when that connection drops it
// reconnects with backoff and wakes every listener once, since
// notifications sent while it was away are lost. A listener is woken once
// when it starts, too. Listen returns when ctx ends. In PollOnly mode it
// only waits for ctx: engines poll.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	if s.pollOnly {
		<-ctx.Done()
		return nil
	}
	d := &debouncer{wake: wake, every: wakeEvery}
	s.listeners.add(s, d)
	<-ctx.Done()
	s.listeners.remove(d)
	d.stop()
	return nil
}

// listenHub shares the store's LISTEN connection among its listeners: it
// runs while any listener does.
type listenHub struct {
	mu   sync.Mutex
	subs map[*debouncer]struct{}
	stop context.CancelFunc // ends the connection's goroutine; nil if none runs
	done chan struct{}      // closed when that goroutine has ended
}

// add registers d, starting the connection for the first listener; a
// listener that joins a running connection is woken at once for what it
// may have missed.
func (h *listenHub) add(s *Store, d *debouncer) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.subs == nil {
		h.subs = map[*debouncer]struct{}{}
	}
	h.subs[d] = struct{}{}
	if h.stop != nil {
		d.kick()
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	h.stop, h.done = cancel, done
	go func() {
		defer close(done)
		s.listenLoop(ctx, h.kick)
	}()
}

// remove unregisters d and, with it the last listener, ends the
// connection and waits for it.
func (h *listenHub) remove(d *debouncer) {
	h.mu.Lock()
	delete(h.subs, d)
	var stop context.CancelFunc
	var done chan struct{}
	if len(h.subs) == 0 && h.stop != nil {
		stop, done = h.stop, h.done
		h.stop, h.done = nil, nil
	}
	h.mu.Unlock()
	if stop != nil {
		stop()
		<-done
	}
}

// kick passes a notification to every listener.
func (h *listenHub) kick() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for d := range h.subs {
		d.kick()
	}
}

// listenLoop keeps a LISTEN connection until ctx ends, reconnecting with
// backoff.
func (s *Store) listenLoop(ctx context.Context, wake func()) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, wake, func() { backoff = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return // the connection ended because ctx did: not a failure
		}
		s.log.Warn("postgres notifications interrupted; reconnecting", "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
}

// listenOnce listens on one connection until it fails or ctx ends.
// connected is called once LISTEN is in place.
func (s *Store) listenOnce(ctx context.Context, wake, connected func()) error {
	conn, err := pgx.ConnectConfig(ctx, s.connCfg)
	if err != nil {
		return fmt.Errorf("connect: %w", wrap(err))
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	if _, err := conn.Exec(ctx, `LISTEN `+pgx.Identifier{s.channel}.Sanitize()); err != nil {
		return fmt.Errorf("listen: %w", wrap(err))
	}
	connected()
	wake() // whatever was sent while no one listened
	for {
		if _, err := conn.WaitForNotification(ctx); err != nil {
			return wrap(err)
		}
		wake()
	}
}

// Elect makes owner the maintenance leader for ttl if nobody else holds
// an unexpired term, or extends owner's own term. Terms are measured on
// the database's clock, so nodes' clocks need not agree.
func (s *Store) Elect(ctx context.Context, owner string, ttl time.Duration) (bool, error) {
	ctx, cancel := s.bound(ctx)
	defer cancel()
	var got string
	err := s.pool.QueryRow(ctx, s.sql.elect, owner, ttl.Milliseconds()).Scan(&got)
	if errNoRows(err) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("postgres: elect: %w", wrap(err))
	}
	return got == owner, nil
}

// wakeEvery is the shortest interval between wake-ups from notifications.
// Every commit that inserts or finishes jobs notifies every node; under
// load that is hundreds of notifications a second, and waking for each
// would send each node to claim (mostly nothing) just as often. The first
// notification after a quiet spell still wakes at once, so an idle node's
// pickup latency does not change.
const wakeEvery = 5 * time.Millisecond

// debouncer passes the first kick on at once and folds the kicks of the
// next interval into one wake-up at its end.
type debouncer struct {
	wake  func()
	every time.Duration

	mu      sync.Mutex
	timer   *time.Timer // set while cooling down
	pending bool
	stopped bool
}

func (d *debouncer) kick() {
	d.mu.Lock()
	if d.timer != nil || d.stopped {
		d.pending = true
		d.mu.Unlock()
		return
	}
	d.timer = time.AfterFunc(d.every, d.cool)
	d.mu.Unlock()
	d.wake()
}

// cool ends an interval, waking once more if kicks came during it.
func (d *debouncer) cool() {
	d.mu.Lock()
	if !d.pending || d.stopped {
		d.timer = nil
		d.mu.Unlock()
		return
	}
	d.pending = false
	d.timer = time.AfterFunc(d.every, d.cool)
	d.mu.Unlock()
	d.wake()
}

func (d *debouncer) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopped = true
	if d.timer != nil {
		d.timer.Stop()
	}
}
