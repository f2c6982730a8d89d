-- POST /events for wrk (benchmarks/serving.py): batches of BATCH engagement events on random
-- customer keys, stamped now (microseconds), every event id fresh (run id, thread, request
-- counter, row), closed loop.
--
--   NBA_API_TOKEN=... wrk -t2 -c2 -d12s -s events.lua http://127.0.0.1:3000/events -- KEYS BATCH RUN 2
--
-- KEYS: a file of JSON string literals, one a line. The store rejects an event older than its
-- customer's last one (out_of_order), so each of the THREADS threads (one connection each:
-- -t THREADS -c THREADS) sends its own share of the keys, one batch at a time. Each answer's
-- `accepted` count is added up; done() prints one line `NBA_WRK {json}` with the counts, the
-- accepted events and the latency percentiles of a batch (microseconds).

package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local pacing = require("pacing")

function setup(thread)
  pacing.number_thread(thread, "thread_no")
end

local KINDS = {
  { "email", "open" },
  { "email", "click" },
  { "web", "visit" },
  { "web", "view" },
  { "app", "view" },
}
local keys = {}
local batch = 100
local run = "bench"
local counter = 0
accepted = 0

function init(args)
  keys = pacing.read_keys(args[1], tonumber(args[4] or "1"), thread_no)
  batch = tonumber(args[2] or "100")
  run = args[3] or "bench"
  math.randomseed(thread_no or 1)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. (os.getenv("NBA_API_TOKEN") or "")
end

function request()
  counter = counter + 1
  local ts = pacing.now_iso()
  local rows = {}
  for j = 1, batch do
    local kind = KINDS[(j % #KINDS) + 1]
    rows[j] = string.format(
      '{"event_id":"%s-%d-%d-%d","ts":"%s","customer_key":%s,"channel":"%s","event_type":"%s"}',
      run, thread_no or 1, counter, j, ts, keys[math.random(#keys)], kind[1], kind[2]
    )
  end
  return wrk.format(nil, nil, nil, '{"events":[' .. table.concat(rows, ",") .. "]}")
end

function response(status, headers, body)
  local n = body and body:match('"accepted":(%d+)')
  if status == 200 and n then
    accepted = accepted + tonumber(n)
  end
end

function done(summary, latency, requests)
  local total = 0
  for _, thread in ipairs(pacing.threads) do
    total = total + (tonumber(thread:get("accepted")) or 0)
  end
  local e = summary.errors
  io.write(string.format(
    'NBA_WRK {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"mean_us":%.1f,"accepted":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean, total
  ))
end
