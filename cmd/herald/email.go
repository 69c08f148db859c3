package main

import (
	"fmt"
	"log/slog"

	"github.com/heraldmq/herald"
	"github.com/heraldmq/herald/internal/config"
	"github.com/heraldmq/herald/internal/email"
	"github.com/heraldmq/herald/internal/handlers"
)

// emailKind is a configured email kind: its handler, its enqueue check, and
// the sender to close on shutdown.
type emailKind struct {
	handler herald.HandlerFunc
	prepare func(*herald.EnqueueParams) error
	sender  *email.Sender
}

// newEmailKind builds an email kind from its configuration: templates are
// parsed now, so a broken one stops serve instead of failing jobs.
func newEmailKind(e config.Email, log *slog.Logger) (*emailKind, error) {
	servers := make([]email.ServerConfig, len(e.Servers))
	for i, s := range e.Servers {
		servers[i] = email.ServerConfig{
			Addr: s.Addr, TLS: s.TLS, Username: s.Username, Password: s.Password, AuthMechanism: s.Auth,
			HELO: s.HELO, PoolSize: s.PoolSize, IdleTimeout: s.IdleTimeout, Timeout: s.Timeout,
		}
	}
	srcs := make(map[string]email.TemplateSource, len(e.Templates))
	for name, t := range e.Templates {
		srcs[name] = email.TemplateSource{Subject: t.Subject, Text: t.Text, TextFile: t.TextFile, HTML: t.HTML, HTMLFile: t.HTMLFile}
	}
	tpls, err := email.ParseTemplates(srcs)
	if err != nil {
		return nil, fmt.Errorf("email.templates: %w", err)
	}
	sender, err := email.NewSender(email.Config{
		Servers: servers, Rate: e.Rate, Burst: e.RateBurst, DomainRate: e.DomainRate, DomainBurst: e.DomainBurst,
		ThrottlePause: e.ThrottlePause, MaxMessageBytes: e.MaxMessageBytes, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	hc := handlers.EmailConfig{
		Sender: sender, From: e.From, Templates: tpls, Hostname: e.Hostname, MaxRecipients: e.MaxRecipients, Logger: log,
	}
	h, err := handlers.Email(hc)
	if err != nil {
		_ = sender.Close()
		return nil, err
	}
	return &emailKind{handler: h, prepare: handlers.PrepareEmail(hc), sender: sender}, nil
}
