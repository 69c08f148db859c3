package postgres

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Listen calls wake whenever another node may have made work ready: every
// transaction that inserts or finishes jobs (and every operator retry,
// cancel or rescue) sends a NOTIFY on the schema's channel. It holds one
// dedicated connection outside the pool; when that connection drops it
// reconnects with backoff and wakes once, since notifications sent while
// it was away are lost. It returns when ctx ends. In PollOnly mode it
// only waits for ctx: engines poll.
func (s *Store) Listen(ctx context.Context, wake func()) error {
	if s.pollOnly {
		<-ctx.Done()
		return nil
	}
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.listenOnce(ctx, wake, func() { backoff = 100 * time.Millisecond })
		if ctx.Err() != nil {
			return nil //nolint:nilerr // the connection ended because ctx did: not a failure
		}
		s.log.Warn("postgres notifications interrupted; reconnecting", "err", err, "in", backoff)
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		backoff = min(2*backoff, 5*time.Second)
	}
	return nil
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
