package chaos

import (
	"bufio"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/heraldmq/herald/internal/history"
)

// sinkLog is one sink process's delivery log and, if it was killed, when.
type sinkLog struct {
	path   string
	killed time.Time
}

// delivery is one parsed delivery with the herald job id it came with.
type delivery struct {
	history.Record
	jobID int64
}

// readSinkLog parses a sink log into records. A delivery with no E line
// was cut off when the sink was killed: it held its key until then.
func readSinkLog(l sinkLog) ([]delivery, error) {
	f, err := os.Open(l.path)
	if err != nil {
		return nil, err
	}
	defer f.Close() //nolint:errcheck // read only
	byRID := map[int64]int{}
	var out []delivery
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	line := 0
	for sc.Scan() {
		line++
		text := sc.Text()
		fields := strings.Fields(text)
		bad := func(err error) error { return fmt.Errorf("%s:%d: %q: %w", l.path, line, text, err) }
		if len(fields) == 0 {
			continue
		}
		switch fields[0] {
		case "S":
			if len(fields) != 8 {
				// A torn last line (killed mid-write) has no E line
				// either, and no 2xx was answered for it.
				if !sc.Scan() {
					return out, nil
				}
				return nil, bad(fmt.Errorf("want 8 fields"))
			}
			var d delivery
			var rid int64
			nums := make([]int64, 0, 6)
			for _, s := range []string{fields[1], fields[2], fields[4], fields[5], fields[6], fields[7]} {
				n, err := strconv.ParseInt(s, 10, 64)
				if err != nil {
					return nil, bad(err)
				}
				nums = append(nums, n)
			}
			key, err := strconv.Unquote(fields[3])
			if err != nil {
				return nil, bad(err)
			}
			rid = nums[0]
			d.ID, d.Key, d.Seq, d.Attempt, d.jobID = nums[1], key, nums[2], int(nums[3]), nums[4]
			d.Start = time.Unix(0, nums[5])
			d.CrashedAt = l.killed
			byRID[rid] = len(out)
			out = append(out, d)
		case "E":
			if len(fields) != 4 {
				if !sc.Scan() {
					return out, nil
				}
				return nil, bad(fmt.Errorf("want 4 fields"))
			}
			rid, err1 := strconv.ParseInt(fields[1], 10, 64)
			ns, err2 := strconv.ParseInt(fields[3], 10, 64)
			i, ok := byRID[rid]
			if err1 != nil || err2 != nil || !ok {
				return nil, bad(fmt.Errorf("bad E line"))
			}
			d := &out[i]
			d.End, d.CrashedAt = time.Unix(0, ns), time.Time{}
			switch fields[2] {
			case resultOK:
				d.Outcome = history.Succeeded
			case resultFail, resultTimeout, resultAborted:
				d.Outcome = history.Failed
			default:
				return nil, bad(fmt.Errorf("unknown result %q", fields[2]))
			}
		default:
			return nil, bad(fmt.Errorf("unknown record type"))
		}
	}
	return out, sc.Err()
}
