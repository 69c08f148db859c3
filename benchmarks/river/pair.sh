#!/usr/bin/env bash
# pair.sh alternates herald and River on one PostgreSQL, one run each per
# round, and prints both rates and their ratio: the host's speed drifts,
# the ratio of two runs a few seconds apart much less.
#
#   benchmarks/river/pair.sh [rounds] [database-url]
#
# It builds bin/herald and bin/riverbench from this checkout first.
set -euo pipefail
export GOTOOLCHAIN="${GOTOOLCHAIN:-go1.27.3}"
rounds="${1:-5}"
url="${2:-postgres://127.0.0.1:5432/test}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
(cd "$root" && go build -o bin/herald ./cmd/herald)
(cd "$root/benchmarks/river" && go build -o "$root/bin/riverbench" .)
rate() { python3 -c 'import json,sys; print(int(json.loads(sys.stdin.read().strip().splitlines()[-1])["processed_per_s"]))'; }
for _ in $(seq "$rounds"); do
	h="$("$root/bin/herald" bench throughput --store "$url" --json 2>/dev/null | rate)"
	r="$("$root/bin/riverbench" --database-url "$url" 2>/dev/null | rate)"
	echo "$(date -u +%H:%M:%S) herald $h river $r ratio $(python3 -c "print(round($h / $r, 2))")"
done
