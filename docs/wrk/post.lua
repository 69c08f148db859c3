-- wrk script for herald's single-job enqueue: POST /v1/jobs with a noop job
-- whose key cycles over 1,000 accounts, as `herald bench http` sends. wrk's
-- summary counts answers other than 2xx ("Non-2xx or 3xx responses").
--   herald serve --log-level warn &
--   wrk -t2 -c256 -d10s --latency -s docs/wrk/post.lua http://127.0.0.1:8080/v1/jobs
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local n = 0
request = function()
  n = n + 1
  local body = string.format('{"kind":"noop","key":"k%d","payload":{"n":%d}}', n % 1000, n)
  return wrk.format(nil, nil, nil, body)
end
