package httpapi

import (
	"cmp"
	"log"
	"net/http"
	"time"
)

// Timeouts bound how long one client may hold a connection, so that slow
// or stalled clients (slowloris) cannot pile up connections and
// goroutines. Zero fields take the defaults.
type Timeouts struct {
	// ReadHeader bounds reading a request's headers. Defaults to 5s.
	ReadHeader time.Duration
	// Read bounds reading a whole request, body included; a batch of the
	// largest allowed size must fit in it on a slow link. Defaults to 60s.
	Read time.Duration
	// Write bounds writing the answer, from the end of the headers read.
	// Defaults to 60s.
	Write time.Duration
	// Idle bounds a kept-alive connection between requests.
	// Defaults to 2m.
	Idle time.Duration
}

func (t Timeouts) withDefaults() Timeouts {
	t.ReadHeader = cmp.Or(t.ReadHeader, 5*time.Second)
	t.Read = cmp.Or(t.Read, 60*time.Second)
	t.Write = cmp.Or(t.Write, 60*time.Second)
	t.Idle = cmp.Or(t.Idle, 2*time.Minute)
	return t
}

// MaxHeaderBytes caps a request's headers; larger ones get 431.
const MaxHeaderBytes = 64 << 10

// NewHTTPServer returns the http.Server that serves h: every timeout set
// and headers capped. errorLog receives net/http's own complaints (TLS
// handshakes, malformed requests); nil means the standard logger.
func NewHTTPServer(h http.Handler, t Timeouts, errorLog *log.Logger) *http.Server {
	t = t.withDefaults()
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: t.ReadHeader,
		ReadTimeout:       t.Read,
		WriteTimeout:      t.Write,
		IdleTimeout:       t.Idle,
		MaxHeaderBytes:    MaxHeaderBytes,
		ErrorLog:          errorLog,
	}
}
