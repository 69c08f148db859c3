package storetest

import (
	"context"
	"sync"

	"github.com/heraldmq/herald/store"
)

// tokenDriver remembers the lease token of every claim it sees and fills it
// into finishes that carry none, so tests can name a claim by job id and
// owner as most of them do. Tests about fencing pass explicit tokens, or
// use the raw driver (bundle.raw) to send none at all.
type tokenDriver struct {
	store.Driver
	mu     sync.Mutex
	tokens map[int64]int64 // job id -> token of its latest claim
}

func newTokenDriver(d store.Driver) *tokenDriver {
	return &tokenDriver{Driver: d, tokens: map[int64]int64{}}
}

func (d *tokenDriver) remember(jobs []*store.Job) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, j := range jobs {
		d.tokens[j.ID] = j.LeaseToken
	}
}

func (d *tokenDriver) fill(fs []store.FinishParams) []store.FinishParams {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make([]store.FinishParams, len(fs))
	for i, f := range fs {
		if f.LeaseToken == 0 {
			f.LeaseToken = d.tokens[f.ID]
		}
		out[i] = f
	}
	return out
}

func (d *tokenDriver) Claim(ctx context.Context, p store.ClaimParams) ([]*store.Job, error) {
	jobs, err := d.Driver.Claim(ctx, p)
	d.remember(jobs)
	return jobs, err
}

func (d *tokenDriver) FinishMany(ctx context.Context, p store.FinishManyParams) ([]store.FinishResult, error) {
	p.Finishes = d.fill(p.Finishes)
	return d.Driver.FinishMany(ctx, p)
}

func (d *tokenDriver) Exchange(ctx context.Context, p store.ExchangeParams) (*store.ExchangeResult, error) {
	p.Finishes = d.fill(p.Finishes)
	res, err := d.Driver.Exchange(ctx, p)
	if res != nil {
		d.remember(res.Claimed)
	}
	return res, err
}
