package sqlite

import (
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
)

// Set-based statements. A cycle's rows travel as one JSON array per
// statement (json_each) or as one multi-row VALUES list, because each
// statement call costs more in database/sql and the driver than SQLite
// spends on the row itself.

// insertColumns are bound per row, in this order, by the multi-row insert
// with explicit ids; the insert that leaves ids to SQLite binds all but
// the first.
const insertColumns = 11

// insertChunks are the row counts of the prepared multi-row inserts; a
// batch is cut into the largest chunks that fit. Each statement call costs
// about as much as a dozen rows, so the small sizes follow the binary
// digits of what is left (77 rows: 64 + 8 + 4 + 1).
var insertChunks = []int{256, 64, 32, 16, 8, 4, 2, 1}

// insertRowsSQL is an INSERT of n rows, with explicit ids or, when
// withID is false, with the ids SQLite picks (the highest rowid plus one).
//
// OR ROLLBACK: a failed statement fails the whole cycle anyway, and
// without an ABORT path SQLite keeps no statement journal (a copy of every
// page the statement touches). An explicit INTEGER PRIMARY KEY brings that
// journal back regardless (SQLite checks the value is an integer and may
// abort), which is why the store leaves ids to SQLite when it can.
func insertRowsSQL(n int, withID bool) string {
	var b strings.Builder
	b.WriteString(`INSERT OR ROLLBACK INTO herald_jobs (`)
	row := "(?,?,?,?,?,?,?,?,?,?)"
	if withID {
		b.WriteString("id, ")
		row = "(?,?,?,?,?,?,?,?,?,?,?)"
	}
	b.WriteString(`kind, key, kh, payload, state, max_attempts, run_at, due_at, idempotency_key, created_at) VALUES `)
	for i := range n {
		if i > 0 {
			b.WriteByte(',')
		}
		b.WriteString(row)
	}
	return b.String()
}

const (
	// nextOneSQL and nextManySQL read, for each [kh, due, id] of a finished
	// head, the first job after it in its line, or the first readAhead
	// jobs (nextMany returns up to twice that; the caller sorts and keeps
	// readAhead); h.i is the input's index. Each has two seeks (same due
	// time and a later id, else a later due time) standing for the
	// row-value comparison (due_at, id) > (due, id), which SQLite seeks on
	// only with bound parameters: with json_each values it would walk
	// every job of a batch that shares the due time.
	nextOneSQL = `WITH h AS MATERIALIZED (SELECT p.key AS i, p.value ->> 0 AS kh, p.value ->> 1 AS due, p.value ->> 2 AS id
			FROM json_each(?1) p)
		SELECT h.i, ` + jobColumnsJ + `, 1 FROM h
		JOIN herald_jobs j ON j.id = coalesce(
			(SELECT x.id FROM herald_jobs x WHERE x.kh = h.kh AND x.due_at = h.due
				AND x.id > h.id AND x.state < 4 ORDER BY x.id LIMIT 1),
			(SELECT x.id FROM herald_jobs x WHERE x.kh = h.kh AND x.due_at > h.due
				AND x.state < 4 ORDER BY x.due_at, x.id LIMIT 1))`
	nextManySQL = `WITH h AS MATERIALIZED (SELECT p.key AS i, p.value ->> 0 AS kh, p.value ->> 1 AS due, p.value ->> 2 AS id
			FROM json_each(?1) p)
		SELECT h.i, ` + jobColumnsJ + `, 1 FROM h
		JOIN herald_jobs j ON j.id IN (
			SELECT id FROM (SELECT x.id FROM herald_jobs x WHERE x.kh = h.kh AND x.due_at = h.due
				AND x.id > h.id AND x.state < 4 ORDER BY x.id LIMIT ` + readAheadSQL + `)
			UNION ALL
			SELECT id FROM (SELECT x.id FROM herald_jobs x WHERE x.kh = h.kh AND x.due_at > h.due
				AND x.state < 4 ORDER BY x.due_at, x.id LIMIT ` + readAheadSQL + `))`
	// dropLinesSQL deletes the lines of [kh, ...].
	dropLinesSQL = `DELETE FROM herald_lines WHERE kh IN (SELECT value FROM json_each(?1))`
	// moveHeadsSQL points lines at new heads: [[kh, head, kind, run_at], ...].
	moveHeadsSQL = `UPDATE OR ROLLBACK herald_lines SET head_id = p.value ->> 1, kind = p.value ->> 2, run_at = p.value ->> 3, blocked = 0
		FROM json_each(?1) p WHERE herald_lines.kh = p.value ->> 0`
	// lineHeadsSQL reads the heads of [kh, ...] for placing newcomers.
	lineHeadsSQL = `SELECT p.value, l.head_id, l.blocked, j.state, j.due_at, j.attempt
		FROM json_each(?1) p JOIN herald_lines l ON l.kh = p.value JOIN herald_jobs j ON j.id = l.head_id`
	// newLinesSQL creates lines: [[kh, key, head, kind, run_at, blocked], ...].
	newLinesSQL = `INSERT OR ROLLBACK INTO herald_lines (kh, key, head_id, kind, run_at, blocked)
		SELECT p.value ->> 0, p.value ->> 1, p.value ->> 2, p.value ->> 3, p.value ->> 4, p.value ->> 5 FROM json_each(?1) p`
)

// jsonRows builds a JSON array of arrays of int64 and string cells without
// reflection: this runs for every row of every cycle.
type jsonRows struct {
	b    []byte
	rows int
	cell int
}

func (r *jsonRows) row() {
	if r.rows == 0 {
		r.b = append(r.b, '[')
	} else {
		r.b = append(r.b, "],"...)
	}
	r.b = append(r.b, '[')
	r.rows++
	r.cell = 0
}

func (r *jsonRows) sep() {
	if r.cell > 0 {
		r.b = append(r.b, ',')
	}
	r.cell++
}

func (r *jsonRows) int(v int64) *jsonRows {
	r.sep()
	r.b = strconv.AppendInt(r.b, v, 10)
	return r
}

func (r *jsonRows) str(s string) *jsonRows {
	r.sep()
	q, err := json.Marshal(s)
	if err != nil { // a Go string always encodes
		panic(fmt.Sprintf("sqlite: encode %q: %v", s, err))
	}
	r.b = append(r.b, q...)
	return r
}

// String is the finished array; "[]" when empty.
func (r *jsonRows) String() string {
	if r.rows == 0 {
		return "[]"
	}
	return string(r.b) + "]]"
}

// jsonInts is a JSON array of int64.
func jsonInts(vs []int64) string {
	b := make([]byte, 0, 2+len(vs)*20)
	b = append(b, '[')
	for i, v := range vs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, v, 10)
	}
	return string(append(b, ']'))
}
