package postgres

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// statements are the driver's SQL with the schema filled in. Names are
// qualified rather than left to search_path, which PgBouncer in
// transaction mode does not carry between transactions.
type statements struct {
	lockKeys, insert, keepBehind, releaseIdem, lookupIdem, finish, claim, finishClaim, notify string
	get, nextRunAt, renew, rescueFind, rescue, elect                                          string
}

// The state codes stored in jobs.state. The order matters: state < 4
// means "still in line".
const (
	stScheduled = 0
	stAvailable = 1
	stRunning   = 2
	stRetryable = 3
	stCompleted = 4
	stDiscarded = 5
	stCancelled = 6
)

// jobColumns are a job's columns on alias j; queries that scan a job add a
// last column saying whether it heads its line.
const jobColumns = `j.id, j.kind, j.key, j.payload, j.state, j.attempt, j.max_attempts, j.run_at, j.due_at,
	j.idempotency_key, j.errors, j.created_at, j.started_at, j.finished_at, j.output, j.lease_owner, j.lease_token`

// headColumn: an unordered job is its own head until finalized; an ordered
// one is the head when its line says so.
const headColumn = `CASE WHEN j.key = '' THEN j.state < 4
	ELSE EXISTS (SELECT 1 FROM _s.lines l WHERE l.key = j.key AND l.head_id = j.id) END`

const selectJob = `SELECT ` + jobColumns + `, ` + headColumn + ` FROM _s.jobs j`

func render(schema string) statements {
	q := pgx.Identifier{schema}.Sanitize() + "."
	r := func(s string) string { return strings.ReplaceAll(s, "_s.", q) }
	return statements{
		lockKeys:    r(lockKeysSQL),
		insert:      r(insertSQL),
		keepBehind:  r(keepBehindSQL),
		releaseIdem: r(`UPDATE _s.jobs SET idempotency_key = NULL WHERE idempotency_key = ANY($1::text[]) AND created_at < $2`),
		lookupIdem:  r(selectJob + ` WHERE j.idempotency_key = ANY($1::text[])`),
		finish:      r(finishSQL),
		claim:       r(claimSQL),
		finishClaim: r(finishClaimSQL),
		notify:      `SELECT pg_notify($1, '')`,
		get:         r(selectJob + ` WHERE j.id = $1`),
		nextRunAt: r(`SELECT least(
			(SELECT min(ready_at) FROM _s.lines WHERE kind = ANY($1::text[]) AND ready_id IS NOT NULL),
			(SELECT min(run_at) FROM _s.jobs WHERE key = '' AND kind = ANY($1::text[]) AND state IN (0, 1, 3)))`),
		// Row locks in id order, as the finish takes them (Exchange sorts
		// outcomes by id): a renewal and a finish of the same node
		// running at once never wait for each other in a cycle.
		renew: r(`UPDATE _s.jobs j SET lease_until = $2 FROM (
			SELECT id FROM _s.jobs WHERE state = 2 AND lease_owner = $1 ORDER BY id FOR NO KEY UPDATE) r
			WHERE j.id = r.id`),
		rescueFind: r(`SELECT id FROM _s.jobs WHERE state = 2 AND lease_until < $1`),
		rescue:     r(rescueSQL),
		elect: r(`INSERT INTO _s.leader AS l (name, owner, until) VALUES ('maintenance', $1, now() + $2::int8 * interval '1 millisecond')
			ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, until = excluded.until
			WHERE l.owner = excluded.owner OR l.until < now()
			RETURNING owner`),
	}
}

// lockKeysSQL takes the advisory lock of every line a transaction writes,
// in sorted order so two transactions never wait for each other in a
// cycle: exclusive for the keys it names in $2 (of jobs it finishes whose
// key the store knows; operator actions and repairs) and of the jobs it
// finishes by id ($3), shared for the keys in $4 that are in neither
// (of jobs it only inserts). The locks cover keys that have no line yet,
// which row locks cannot.
//
// Inserts of one key need not wait for each other: the line's row settles
// which newcomer heads it (the upsert waits on a concurrent insert's new
// row and then re-checks), and a newcomer ahead of a head that started
// meanwhile is moved behind it (keepBehindSQL). What they must not do is
// run beside a writer that moves or drops the line (a finish would not see
// the uncommitted newcomer and drop the line under it), and those hold
// the lock exclusively. So two store loops, or nodes, that enqueue jobs of
// the same keys no longer take turns.
const lockKeysSQL = `SELECT count(*) FROM (
	SELECT CASE WHEN x THEN pg_advisory_xact_lock(h) ELSE pg_advisory_xact_lock_shared(h) END FROM (
		SELECT h, bool_or(x) AS x FROM (
			SELECT hashtextextended(k, $1) AS h, true AS x FROM (
				SELECT unnest($2::text[]) AS k
				UNION ALL SELECT key FROM _s.jobs WHERE id = ANY($3::int8[])
			) excl WHERE k <> ''
			UNION ALL
			SELECT hashtextextended(k, $1), false FROM unnest($4::text[]) AS k WHERE k <> ''
		) keys GROUP BY h ORDER BY h
	) sorted
) locked`

// insertSQL inserts a batch and places each key's earliest newcomer in its
// line: a key without a line gets one headed by it; a line whose head is
// not running, not blocked and due later gives the newcomer its place
// (a started head is never due later than a newcomer, so it keeps it).
// Ids come from the identity in insertion (ord) order.
//
// A line that would refuse its newcomer (blocked, or headed by an earlier
// job: the common case) is left out before the upsert, which would
// otherwise lock and log every such line row only to leave it unchanged.
// Its snapshot is current enough: under the key's advisory lock nobody
// else moves the line's head or unblocks it, and a claim (which takes no
// key lock) only blocks it, which the upsert's own test sees.
const insertSQL = `WITH src AS (
	SELECT * FROM unnest($2::text[], $3::text[], $4::bytea[], $5::timestamptz[], $6::int2[], $7::int4[], $8::text[])
		WITH ORDINALITY AS s(kind, key, payload, due, state, max_attempts, idem, ord)
), ins AS (
	INSERT INTO _s.jobs (kind, key, payload, state, max_attempts, run_at, due_at, idempotency_key, created_at)
	SELECT kind, key, payload, state, max_attempts, due, due, NULLIF(idem, ''), $1 FROM src ORDER BY ord
	RETURNING id, key, kind, run_at, due_at
), arrivals AS (
	SELECT DISTINCT ON (key) key, id, kind, run_at, due_at FROM ins WHERE key <> '' ORDER BY key, due_at, id
), placed AS (
	INSERT INTO _s.lines AS l (key, head_id, kind, run_at, due_at)
	SELECT a.key, a.id, a.kind, a.run_at, a.due_at FROM arrivals a
	WHERE NOT EXISTS (SELECT 1 FROM _s.lines x WHERE x.key = a.key
		AND (x.blocked <> 0 OR (a.due_at, a.id) >= (x.due_at, x.head_id)))
	ORDER BY a.key
	ON CONFLICT (key) DO UPDATE SET head_id = excluded.head_id, kind = excluded.kind,
		run_at = excluded.run_at, due_at = excluded.due_at
	WHERE l.blocked = 0 AND (excluded.due_at, excluded.head_id) < (l.due_at, l.head_id)
	RETURNING head_id
)
SELECT ins.id, ins.key = '' OR ins.id IN (SELECT head_id FROM placed) FROM ins ORDER BY ins.id`

// keepBehindSQL moves any job of the given keys' lines due at or after $2
// that stands ahead of its line's head to just behind it, so the line's
// advance (which looks after the head) will find it. A newcomer can land
// there when its due time, taken from its node's clock before it waited
// for the key's lock, is earlier than a head that was already running or
// blocked, or that a claim took while the newcomer was being placed. An
// exchange passes its own time as $2 (its newcomers are due then or
// later): the index scan then starts at the newcomers instead of reading
// every older entry of the key (without a vacuum, the dead versions of
// the key's finished jobs too). RepairLines passes the zero time.
const keepBehindSQL = `UPDATE _s.jobs j
SET due_at = l.due_at + CASE WHEN j.id < l.head_id THEN interval '1 microsecond' ELSE interval '0' END
FROM _s.lines l
WHERE l.key = ANY($1::text[]) AND j.key = l.key AND j.key <> '' AND j.state IN (0, 1, 3) AND j.id <> l.head_id
	AND (j.due_at, j.id) < (l.due_at, l.head_id) AND j.due_at >= $2
RETURNING j.id, j.due_at`

// finishSQL records outcomes of attempts still leased to the finisher
// (owner and token must match: anything else is fenced off and returned
// nothing for) and moves their lines: a completed or discarded head hands
// its line to the next job in line order, or the line goes; a retried or
// released head stays, waiting for its run_at; a blocking dead letter
// holds its line. Outcome codes are store.Outcome values.
const finishSQL = finishCTEs + `, moved AS (
	UPDATE _s.lines l SET head_id = m.head_id, kind = m.kind, run_at = m.run_at, due_at = m.due_at, blocked = m.blocked
	FROM moves m WHERE l.key = m.key AND m.head_id IS NOT NULL
)
SELECT id FROM done`

// finishCTEs are finishSQL's outcomes (done), the line moves they make
// (moves: a line's new head, or none to drop the line; next marks a
// finished head's successor) and the drop of emptied lines.
const finishCTEs = `WITH f AS (
	SELECT * FROM unnest($3::int8[], $4::text[], $5::int8[], $6::int2[], $7::text[], $8::timestamptz[], $9::bytea[], $10::bool[])
		AS f(id, owner, token, outcome, err, retry_at, output, block)
), done AS (
	UPDATE _s.jobs j SET
		state = CASE f.outcome WHEN 1 THEN 4 WHEN 2 THEN 3 WHEN 3 THEN 5
			ELSE CASE WHEN j.errors IS NULL THEN 1 ELSE 3 END END,
		attempt = CASE WHEN f.outcome = 4 THEN j.attempt - 1 ELSE j.attempt END,
		run_at = CASE WHEN f.outcome = 2 THEN f.retry_at ELSE j.run_at END,
		finished_at = CASE WHEN f.outcome IN (1, 3) THEN $1::timestamptz END,
		errors = CASE WHEN f.outcome IN (2, 3) THEN coalesce(j.errors, '[]'::jsonb) ||
			jsonb_build_array(jsonb_build_object('at', $2::text, 'attempt', j.attempt, 'message', f.err))
			ELSE j.errors END,
		output = coalesce(f.output, j.output),
		lease_owner = NULL, lease_token = NULL, lease_until = NULL
	FROM f
	-- "state + 0" keeps the planner off the partial index of running jobs
	-- (it would read every running job, and the dead entries of many
	-- more) and off "id = ANY", which it joined to f with a nested loop
	-- re-reading f per job (quadratic in the batch): this way each
	-- outcome is one primary-key probe.
	WHERE j.id = f.id AND j.state + 0 = 2 AND j.lease_owner = f.owner AND j.lease_token = f.token
	RETURNING j.id, j.key, j.kind, j.run_at, j.due_at, f.outcome, f.block
), moves AS (
	SELECT d.key, n.id AS head_id, n.kind, n.run_at, n.due_at, 0::int2 AS blocked, true AS next
	FROM done d LEFT JOIN LATERAL (
		SELECT x.id, x.kind, x.run_at, x.due_at FROM _s.jobs x
		WHERE x.key = d.key AND x.key <> '' AND x.state IN (0, 1, 3) AND (x.due_at, x.id) > (d.due_at, d.id)
		ORDER BY x.due_at, x.id LIMIT 1
	) n ON true
	WHERE d.key <> '' AND (d.outcome = 1 OR (d.outcome = 3 AND NOT d.block))
	UNION ALL
	SELECT d.key, d.id, d.kind, d.run_at, d.due_at, (CASE WHEN d.outcome = 3 THEN 1 ELSE 0 END)::int2, false
	FROM done d WHERE d.key <> '' AND (d.outcome IN (2, 4) OR (d.outcome = 3 AND d.block))
), dropped AS (
	DELETE FROM _s.lines l USING moves m WHERE l.key = m.key AND m.head_id IS NULL
)`

// claimSQL takes ready heads kind by kind (in the order given, each up to
// its cap, the whole up to $4), ordered and unordered competing by run_at,
// skipping rows other transactions hold: nodes never wait for each other.
// A line is marked running only when its head was taken: a line row
// locked after another node committed a change to it is read as changed,
// but its new head, inserted after this statement's snapshot, is
// invisible to the update of jobs. Marking the line anyway left it
// running with nobody running its head, holding the key for ever; now
// the line stays ready and the next claim takes its head. The line is
// matched by key only: the update reads the row as of the snapshot, and
// a head_id test there would miss a line whose head moved since (to a job
// the snapshot does see), leaving it ready while its head runs.
const claimSQL = `WITH k AS (
	SELECT * FROM unnest($2::text[], $3::int4[]) WITH ORDINALITY AS k(kind, n, ord) WHERE n > 0
), cand AS (
	SELECT c.id, c.key, c.run_at, k.ord FROM k CROSS JOIN LATERAL (
		SELECT * FROM (
			SELECT * FROM (` + readyLinesSQL + `) a
			UNION ALL
			SELECT * FROM (` + readyUnorderedSQL + `) b
		) u ORDER BY u.run_at, u.id LIMIT k.n
	) c
), pick AS (
	SELECT id, key FROM cand ORDER BY ord, run_at, id LIMIT $4
), claimed AS (
	UPDATE _s.jobs j SET state = 2, attempt = j.attempt + 1, started_at = $1, lease_owner = $5, lease_until = $6,
		lease_token = nextval('_s.lease_tokens')
	FROM pick p WHERE j.id = p.id
	RETURNING ` + jobColumns + `
), marked AS (
	UPDATE _s.lines l SET blocked = 2 FROM claimed c WHERE c.key <> '' AND l.key = c.key
)
SELECT *, true FROM claimed`

// readyLinesSQL and readyUnorderedSQL are a claim's candidates of kind
// k.kind (up to k.n each) due by $1: the heads of ready lines, and
// unordered jobs waiting to run.
const (
	readyLinesSQL = `
		SELECT l.ready_id AS id, l.key, l.ready_at AS run_at FROM _s.lines l
		WHERE l.kind = k.kind AND l.ready_id IS NOT NULL AND l.ready_at <= $1
		ORDER BY l.ready_at, l.ready_id LIMIT k.n
		FOR NO KEY UPDATE SKIP LOCKED`
	readyUnorderedSQL = `
		SELECT j.id, j.key, j.run_at FROM _s.jobs j
		WHERE j.key = '' AND j.kind = k.kind AND j.state IN (0, 1, 3) AND j.run_at <= $1
		ORDER BY j.run_at, j.id LIMIT k.n
		FOR NO KEY UPDATE SKIP LOCKED`
)

// finishClaimSQL is finishSQL and claimSQL in one statement, for a cycle
// that has both and whose outcomes all complete or discard their jobs. A
// finished head's successor, when due, competes for the claim with the
// ready lines and unordered jobs on the same terms (kind caps, run_at
// order); if it is taken (handed off), its line is written once, straight
// to running with the new head, instead of being made ready by the finish
// and marked running by the claim: one line row version and two index
// entries less per job, and the claim's ready-line scan shrinks with it.
// The finish's lines are running in the statement's snapshot, so the
// ready-line scan cannot return them; the key test there keeps the two
// line updates apart even if one were not. A successor is taken only if
// it still waits (state < 4, not running), and a key with more than one
// outcome (which a line never has) hands off nothing. Parameters: $1..$10
// as finishSQL's, $11..$15 as claimSQL's $2..$6. Rows: a first column
// false for a claimed job (then claimSQL's columns), true for a finished
// job's id (the other columns null).
var finishClaimSQL = finishCTEs + `, handoff AS (
	SELECT m.head_id AS id, m.key, m.kind, m.run_at FROM moves m
	WHERE m.next AND m.head_id IS NOT NULL AND m.run_at <= $1
		AND m.key NOT IN (SELECT key FROM moves GROUP BY key HAVING count(*) > 1)
), k AS (
	SELECT * FROM unnest($11::text[], $12::int4[]) WITH ORDINALITY AS k(kind, n, ord) WHERE n > 0
), cand AS (
	SELECT c.id, c.key, c.run_at, c.handoff, k.ord FROM k CROSS JOIN LATERAL (
		SELECT * FROM (
			SELECT a.*, false AS handoff FROM (` + readyLinesSQL + `) a
			WHERE a.key NOT IN (SELECT key FROM moves)
			UNION ALL
			SELECT b.*, false FROM (` + readyUnorderedSQL + `) b
			UNION ALL
			SELECT h.id, h.key, h.run_at, true FROM handoff h WHERE h.kind = k.kind
		) u ORDER BY u.run_at, u.id LIMIT k.n
	) c
), pick AS (
	SELECT id, key, handoff FROM cand ORDER BY ord, run_at, id LIMIT $13
), claimed AS (
	UPDATE _s.jobs j SET state = 2, attempt = j.attempt + 1, started_at = $1, lease_owner = $14, lease_until = $15,
		lease_token = nextval('_s.lease_tokens')
	FROM pick p WHERE j.id = p.id AND (NOT p.handoff OR j.state IN (0, 1, 3))
	RETURNING ` + jobColumns + `, p.handoff
), marked AS (
	UPDATE _s.lines l SET blocked = 2 FROM claimed c WHERE c.key <> '' AND NOT c.handoff AND l.key = c.key
), moved AS (
	UPDATE _s.lines l SET head_id = m.head_id, kind = m.kind, run_at = m.run_at, due_at = m.due_at,
		blocked = CASE WHEN m.next AND m.head_id IN (SELECT id FROM claimed WHERE handoff) THEN 2 ELSE m.blocked END
	FROM moves m WHERE l.key = m.key AND m.head_id IS NOT NULL
)
SELECT false, ` + claimedColumns + `, true FROM claimed c
UNION ALL
SELECT true, id, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM done`

// claimedColumns are jobColumns on alias c.
var claimedColumns = strings.ReplaceAll(jobColumns, "j.", "c.")

// rescueSQL returns running jobs whose lease ended before $1 to their
// lines as retryable now, recording the interrupted attempt.
const rescueSQL = `WITH r AS (
	UPDATE _s.jobs j SET state = 3, run_at = $1,
		errors = coalesce(j.errors, '[]'::jsonb) || jsonb_build_array(jsonb_build_object('at', $3::text,
			'attempt', j.attempt, 'message', 'interrupted: lease of ' || j.lease_owner || ' expired (node died or stalled)')),
		lease_owner = NULL, lease_token = NULL, lease_until = NULL
	WHERE j.state = 2 AND j.lease_until < $2
	RETURNING j.id, j.key
), lines AS (
	UPDATE _s.lines l SET blocked = 0, run_at = $1 FROM r WHERE r.key <> '' AND l.key = r.key AND l.head_id = r.id
)
SELECT count(*) FROM r`
