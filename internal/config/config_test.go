package config_test

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/config"
)

func TestRedacted(t *testing.T) {
	t.Parallel()
	c := validConfig()
	c.Tokens = []string{"tok-1", "tok-2"}
	c.Store = "postgres://herald:pa55word@db.internal:5432/herald?sslmode=require"
	c.Kinds["billing"].Webhook.Secret = "hmac-key"
	c.Kinds["billing"].Webhook.Headers = map[string]string{"Authorization": "Bearer abc", "X-Api-Key": "k", "X-Source": "herald"}
	c.Kinds["unsigned"] = config.Kind{Type: "webhook", OnDiscard: "continue", Webhook: &config.Webhook{URL: "https://x.test/", Method: "POST"}}

	r := c.Redacted()
	if diff := cmp.Diff([]string{"REDACTED", "REDACTED"}, r.Tokens); diff != "" {
		t.Errorf("tokens (-want +got):\n%s", diff)
	}
	if w := r.Kinds["billing"].Webhook; w.Secret != "REDACTED" || w.Headers["Authorization"] != "REDACTED" ||
		w.Headers["X-Api-Key"] != "REDACTED" || w.Headers["X-Source"] != "herald" {
		t.Errorf("billing webhook = %+v, want secret and credential headers redacted, others kept", w)
	}
	if s := r.Kinds["unsigned"].Webhook.Secret; s != "" {
		t.Errorf("an empty secret became %q: whether requests are signed must stay visible", s)
	}
	if r.Store != "postgres://herald:"+config.Redaction+"@db.internal:5432/herald?sslmode=require" {
		t.Errorf("store = %q, want the password redacted", r.Store)
	}
	if len(config.Default().Redacted().Tokens) != 0 {
		t.Error("no tokens became some tokens")
	}

	// The original is untouched: maps and the webhook are copied.
	if c.Tokens[0] != "tok-1" || c.Kinds["billing"].Webhook.Secret != "hmac-key" || c.Kinds["billing"].Webhook.Headers["Authorization"] != "Bearer abc" {
		t.Errorf("Redacted modified its receiver: %+v", c)
	}
	b, err := r.YAML()
	if err != nil {
		t.Fatal(err)
	}
	for _, secret := range []string{"tok-1", "hmac-key", "Bearer abc", "pa55word"} {
		if strings.Contains(string(b), secret) {
			t.Errorf("redacted YAML contains %q:\n%s", secret, b)
		}
	}
}

func TestLibraryMapping(t *testing.T) {
	t.Parallel()
	c := config.Default()
	c.Workers, c.NodeName, c.DataDir, c.MaxPayloadBytes, c.Lease = 8, "node-a", "/d", 4096, 2*time.Second
	want := herald.Config{DataDir: "/d", Workers: 8, NodeName: "node-a", MaxPayloadBytes: 4096, LeaseDuration: 2 * time.Second}
	if diff := cmp.Diff(want, c.ClientConfig()); diff != "" {
		t.Errorf("ClientConfig (-want +got):\n%s", diff)
	}
	k := config.Kind{Type: "sleep", Concurrency: 3, Timeout: time.Second, MaxAttempts: 4, BackoffBase: time.Millisecond, BackoffCap: time.Minute, OnDiscard: "block"}
	wantKind := herald.KindConfig{Concurrency: 3, Timeout: time.Second, MaxAttempts: 4, BackoffBase: time.Millisecond, BackoffCap: time.Minute, OnDiscard: herald.DiscardBlock}
	if diff := cmp.Diff(wantKind, k.KindConfig()); diff != "" {
		t.Errorf("KindConfig (-want +got):\n%s", diff)
	}
	if got := (config.Kind{OnDiscard: "continue"}).KindConfig().OnDiscard; got != herald.DiscardContinue {
		t.Errorf("on_discard continue mapped to %v", got)
	}
}
