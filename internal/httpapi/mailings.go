package httpapi

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"regexp"
	"strconv"
	"strings"

	"github.com/heraldmq/herald"
)

// prepare runs the kind's Prepare hook on p. A refusal is 422 with the
// field, prefixed for batches ("jobs[3].payload.to[0]").
func (s *Server) prepare(p *herald.EnqueueParams, prefix string) *statusError {
	hook, ok := s.opts.Prepare[p.Kind]
	if !ok {
		return nil
	}
	err := hook(p)
	if err == nil {
		return nil
	}
	field, msg := "payload", err.Error()
	if fe, ok := errors.AsType[*herald.FieldError](err); ok {
		field, msg = fe.Field, fe.Message
	}
	return &statusError{status: http.StatusUnprocessableEntity, apiError: apiError{
		Code: "invalid_payload", Field: prefix + field, Message: msg,
	}}
}

// mailing is one element of POST /v1/mailings, seed 001's format,
// unchanged: {"Subject","Body","Addresses":[...],"Token"}.
type mailing struct {
	Subject   string   `json:"Subject"`
	Body      string   `json:"Body"`
	Addresses []string `json:"Addresses"`
	// Token is accepted for compatibility and never stored: it is the
	// producer's secret and has no use in delivery.
	Token string `json:"Token"`
}

// mailingPayload is the email payload a mailing becomes.
type mailingPayload struct {
	To      []string `json:"to,omitempty"`
	Bcc     []string `json:"bcc,omitempty"`
	Subject string   `json:"subject"`
	Text    string   `json:"text"`
}

// Mailing statuses, seed 001's words.
const (
	mailingAwaiting   = "awaiting"
	mailingProcessing = "processing"
	mailingSent       = "sent"
	mailingError      = "error"
)

func mailingStatus(st herald.JobState) string {
	switch st {
	case herald.StateRunning:
		return mailingProcessing
	case herald.StateCompleted:
		return mailingSent
	case herald.StateDiscarded, herald.StateCancelled:
		return mailingError
	default:
		return mailingAwaiting
	}
}

// payloadField maps a field of a mailing's email payload back to the
// request's own names: payload.bcc[2] → [i].Addresses[2] (or the mailing's
// split-off address), payload.subject → [i].Subject.
var payloadIndex = regexp.MustCompile(`^payload\.(?:to|bcc)\[(\d+)\]$`)

func mailingField(i int, field string, addrIndex int) string {
	prefix := fmt.Sprintf("[%d].", i)
	if m := payloadIndex.FindStringSubmatch(field); m != nil {
		j, _ := strconv.Atoi(m[1])
		if addrIndex >= 0 {
			j = addrIndex
		}
		return fmt.Sprintf("%sAddresses[%d]", prefix, j)
	}
	switch field {
	case "payload.to", "payload.bcc":
		return prefix + "Addresses"
	case "payload.subject":
		return prefix + "Subject"
	case "payload.text", "payload":
		return prefix + "Body"
	}
	return prefix + strings.TrimPrefix(field, "payload.")
}

// handleMailings enqueues seed 001's mailings: one job per mailing with the
// addresses in Bcc (as the seed sent them), or with ?split=recipient one
// job per address, each addressed To that recipient alone. All the jobs of
// a request are enqueued together or not at all. With an Idempotency-Key
// header, repeating the request returns the same jobs.
func (s *Server) handleMailings(w http.ResponseWriter, r *http.Request) {
	if s.opts.MailingsKind == "" {
		writeError(w, http.StatusNotFound, apiError{Code: "mailings_disabled", Message: "no mailings kind is configured (mailings.kind)"})
		return
	}
	split := r.URL.Query().Get("split")
	if split != "" && split != "recipient" {
		writeStatusError(w, badRequest("invalid_field", "split", `must be "recipient" or absent`))
		return
	}
	body, serr := readBody(r)
	if serr != nil {
		writeStatusError(w, serr)
		return
	}
	var raws []json.RawMessage
	if err := json.Unmarshal(body, &raws); err != nil {
		writeStatusError(w, badRequest("invalid_type", "", "the body must be a JSON array of mailings [{\"Subject\",\"Body\",\"Addresses\",\"Token\"}]"))
		return
	}
	if len(raws) == 0 {
		writeStatusError(w, badRequest("invalid_field", "", "the array must hold at least one mailing"))
		return
	}
	idem := r.Header.Get("Idempotency-Key")
	if len(idem) > 200 || strings.IndexByte(idem, 0) >= 0 {
		writeStatusError(w, badRequest("invalid_field", "Idempotency-Key", "must be at most 200 bytes without NUL"))
		return
	}
	var ps []herald.EnqueueParams
	counts := make([]int, len(raws))
	for i, raw := range raws {
		var m mailing
		if serr := decodeObject(raw, &m, fmt.Sprintf("[%d].", i)); serr != nil {
			writeStatusError(w, serr)
			return
		}
		if len(m.Addresses) == 0 {
			writeError(w, http.StatusUnprocessableEntity, apiError{Code: "invalid_payload", Field: fmt.Sprintf("[%d].Addresses", i), Message: "at least one address is required"})
			return
		}
		var payloads []mailingPayload
		if split == "recipient" {
			for _, a := range m.Addresses {
				payloads = append(payloads, mailingPayload{To: []string{a}, Subject: m.Subject, Text: m.Body})
			}
		} else {
			payloads = []mailingPayload{{Bcc: m.Addresses, Subject: m.Subject, Text: m.Body}}
		}
		for j, pl := range payloads {
			raw, err := json.Marshal(pl)
			if err != nil {
				s.writeClientError(w, r, err)
				return
			}
			p := herald.EnqueueParams{Kind: s.opts.MailingsKind, Payload: json.RawMessage(raw)}
			if idem != "" {
				// One request, many jobs: each gets its own key derived
				// from the request's, so a repeated request maps onto the
				// same jobs instead of sending everything again.
				p.IdempotencyKey = fmt.Sprintf("%s/%d/%d", idem, i, j)
			}
			if serr := s.prepare(&p, ""); serr != nil {
				addr := -1
				if split == "recipient" {
					addr = j
				}
				serr.Field = mailingField(i, serr.Field, addr)
				writeStatusError(w, serr)
				return
			}
			ps = append(ps, p)
		}
		counts[i] = len(payloads)
	}
	res, err := s.client.EnqueueMany(r.Context(), ps)
	if err != nil {
		s.writeClientError(w, r, err)
		return
	}
	type created struct {
		IDs    []int64 `json:"ids"`
		Status string  `json:"status"`
	}
	out := make([]created, len(raws))
	k := 0
	for i, n := range counts {
		out[i] = created{Status: mailingAwaiting}
		for range n {
			out[i].IDs = append(out[i].IDs, res[k].Job.ID)
			k++
		}
	}
	writeJSON(w, http.StatusCreated, struct {
		Mailings []created `json:"mailings"`
	}{out})
}

// mailingJSON is GET /v1/mailings/{id}'s answer. It never includes the
// Token, which is not stored.
type mailingJSON struct {
	ID         int64             `json:"id"`
	Status     string            `json:"status"`
	State      string            `json:"state"`
	Subject    string            `json:"subject"`
	Addresses  []string          `json:"addresses"`
	Recipients []json.RawMessage `json:"recipients"`
	Attempts   int               `json:"attempts"`
	LastError  string            `json:"last_error,omitempty"`
}

func (s *Server) handleMailing(w http.ResponseWriter, r *http.Request) {
	if s.opts.MailingsKind == "" {
		writeError(w, http.StatusNotFound, apiError{Code: "mailings_disabled", Message: "no mailings kind is configured (mailings.kind)"})
		return
	}
	id, ok := jobID(w, r)
	if !ok {
		return
	}
	j, err := s.client.Get(r.Context(), id)
	if err == nil && j.Kind != s.opts.MailingsKind {
		err = herald.ErrNotFound
	}
	if err != nil {
		s.writeClientError(w, r, err)
		return
	}
	var p mailingPayload
	_ = json.Unmarshal(j.Payload, &p) // written by handleMailings; a job enqueued elsewhere may differ
	var o struct {
		Recipients []json.RawMessage `json:"recipients"`
	}
	if len(j.Output) > 0 {
		_ = json.Unmarshal(j.Output, &o)
	}
	out := mailingJSON{
		ID: j.ID, Status: mailingStatus(j.State), State: string(j.State), Subject: p.Subject,
		Addresses: append(append([]string{}, p.To...), p.Bcc...), Recipients: o.Recipients, Attempts: j.Attempt,
	}
	if out.Recipients == nil {
		out.Recipients = []json.RawMessage{}
	}
	if n := len(j.Errors); n > 0 {
		out.LastError = j.Errors[n-1].Message
	}
	writeJSON(w, http.StatusOK, out)
}
