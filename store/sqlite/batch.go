package sqlite

import (
	"database/sql"
	"fmt"
	"strconv"
	"strings"
)

// Set-based statements. A cycle's rows travel as one JSON array per
// statement (json_each) or as one multi-row VALUES list, because each
// statement call costs more in database/sql and the driver than SQLite
// spends on the row itself.

// multiRow is a statement over many rows of bound values, prepared once
// for each of a few row counts: a cycle's rows are cut into the largest
// counts that fit. Each statement call costs about as much as a dozen rows,
// so a few calls of many rows beat one call per row; and bound values beat
// a JSON array (json_each) once a row has more than one or two cells,
// because extracting each cell costs more than writing the row. Values all
// rows share may be bound once, as ?1 to ?shared, before the rows'.
type multiRow struct {
	shared, cols int
	sizes        []int // descending, ending in 1
	sqls         map[int]string
}

// newMultiRow returns the statements that build makes of a VALUES list of
// n rows of cols placeholders, for each n of sizes. build's statement names
// the shared values ?1 to ?shared, and must do so before the VALUES list in
// its text: SQLite numbers each plain ? one past the highest it has seen.
func newMultiRow(shared, cols int, sizes []int, build func(values string) string) *multiRow {
	m := &multiRow{shared: shared, cols: cols, sizes: sizes, sqls: make(map[int]string, len(sizes))}
	row := "(" + strings.TrimSuffix(strings.Repeat("?,", cols), ",") + ")"
	for _, n := range sizes {
		q := build(strings.TrimSuffix(strings.Repeat(row+",", n), ","))
		if shared > 0 {
			named, plain := strings.Index(q, "?"+strconv.Itoa(shared)), strings.Index(q, "(?")
			if named < 0 || named > plain {
				panic("sqlite: a multi-row statement must name ?" + strconv.Itoa(shared) + " before its VALUES list: " + q[:min(len(q), 100)])
			}
		}
		m.sqls[n] = q
	}
	return m
}

// statements lists the prepared statements, for hotStatements.
func (m *multiRow) statements() []string {
	qs := make([]string, 0, len(m.sizes))
	for _, n := range m.sizes {
		qs = append(qs, m.sqls[n])
	}
	return qs
}

// execRows runs the rows in args (cols values per row) in as few
// statements as the sizes allow, each binding shared first. after, if not
// nil, sees each statement's result and the index of its last row.
func (w *lineWriter) execRows(m *multiRow, shared, args []any, after func(last int, res sql.Result) error) error {
	if len(shared) != m.shared || len(args)%m.cols != 0 {
		return fmt.Errorf("sqlite: %d shared and %d row values do not fit %d shared and rows of %d",
			len(shared), len(args), m.shared, m.cols)
	}
	var bound []any // shared then one statement's rows
	if m.shared > 0 {
		bound = make([]any, 0, m.shared+min(len(args), m.sizes[0]*m.cols))
	}
	done := 0
	for _, n := range m.sizes {
		for len(args) >= n*m.cols {
			st, err := w.stmt(m.sqls[n])
			if err != nil {
				return err
			}
			call := args[:n*m.cols]
			if m.shared > 0 {
				bound = append(append(bound[:0], shared...), call...)
				call = bound
			}
			res, err := st.ExecContext(w.ctx, call...)
			if err != nil {
				return err
			}
			done += n
			if after != nil {
				if err := after(done-1, res); err != nil {
					return err
				}
			}
			args = args[n*m.cols:]
		}
	}
	return nil
}

// binaryChunks are row counts that cut any number of rows into at most a
// handful of statements: the large ones first, then the binary digits of
// what is left (77 rows: 64 + 8 + 4 + 1).
var binaryChunks = []int{256, 64, 32, 16, 8, 4, 2, 1}

// insertColumns are bound per row, in this order, by the multi-row insert
// with explicit ids; the insert that leaves ids to SQLite binds all but
// the first.
const insertColumns = 11

// insertJobs and insertJobsAuto insert jobs with explicit ids and with the
// ids SQLite picks (the highest rowid plus one).
//
// OR ROLLBACK: a failed statement fails the whole cycle anyway, and
// without an ABORT path SQLite keeps no statement journal (a copy of every
// page the statement touches). An explicit INTEGER PRIMARY KEY brings that
// journal back regardless (SQLite checks the value is an integer and may
// abort), which is why the store leaves ids to SQLite when it can.
var (
	insertJobs = newMultiRow(0, insertColumns, binaryChunks, func(values string) string {
		return `INSERT OR ROLLBACK INTO herald_jobs (id, ` + insertColumnNames + `) VALUES ` + values
	})
	insertJobsAuto = newMultiRow(0, insertColumns-1, binaryChunks, func(values string) string {
		return `INSERT OR ROLLBACK INTO herald_jobs (` + insertColumnNames + `) VALUES ` + values
	})
)

const insertColumnNames = `kind, key, kh, payload, state, max_attempts, run_at, due_at, idempotency_key, created_at`

// insertUniform and insertUniformAuto insert rows that differ only in id,
// key, kh and payload (pendingRows.uniform): ?1 kind, ?2 state,
// ?3 max_attempts, ?4 run_at and due_at, ?5 created_at, then per row
// [id,] key, kh, payload (the VALUES list comes after ?1-?5 in the text, so
// its plain ? are numbered from ?6). Binding costs more per value than SQLite spends
// storing it, and a batch's rows share most of their values.
var (
	insertUniform = newMultiRow(5, 4, binaryChunks, func(values string) string {
		return `INSERT OR ROLLBACK INTO herald_jobs (id, ` + insertColumnNames + `)
			SELECT column1, ?1, column2, column3, column4, ?2, ?3, ?4, ?4, NULL, ?5 FROM (VALUES ` + values + `)`
	})
	insertUniformAuto = newMultiRow(5, 3, binaryChunks, func(values string) string {
		return `INSERT OR ROLLBACK INTO herald_jobs (` + insertColumnNames + `)
			SELECT ?1, column1, column2, column3, ?2, ?3, ?4, ?4, NULL, ?5 FROM (VALUES ` + values + `)`
	})
)

// completeRows completes unordered jobs in place (ordered ones go through
// the completion log, done.go): ?1 finished_at, then id, started_at per row.
var completeRows = newMultiRow(1, 2, binaryChunks, func(values string) string {
	return `UPDATE OR ROLLBACK herald_jobs SET state = 4, attempt = attempt + 1, started_at = v.column2, finished_at = ?1
		FROM (VALUES ` + values + `) AS v WHERE herald_jobs.id = v.column1`
})

// moveHeads points lines at new heads: kh, head, kind, run_at per row.
var moveHeads = newMultiRow(0, 4, binaryChunks, func(values string) string {
	return `WITH v (kh, head, kind, run_at) AS (VALUES ` + values + `)
		UPDATE OR ROLLBACK herald_lines SET head_id = v.head, kind = v.kind, run_at = v.run_at, blocked = 0
		FROM v WHERE herald_lines.kh = v.kh`
})

// insertLines creates lines: kh, key, head, kind, run_at, blocked per row.
var insertLines = newMultiRow(0, 6, binaryChunks, func(values string) string {
	return `INSERT OR ROLLBACK INTO herald_lines (kh, key, head_id, kind, run_at, blocked) VALUES ` + values
})

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
	// lineHeadsSQL reads the heads of [kh, ...] for placing newcomers.
	lineHeadsSQL = `SELECT p.value, l.head_id, l.blocked, j.state, j.due_at, j.attempt
		FROM json_each(?1) p JOIN herald_lines l ON l.kh = p.value JOIN herald_jobs j ON j.id = l.head_id`
)

// jsonRows builds a JSON array of arrays of int64 cells without
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
