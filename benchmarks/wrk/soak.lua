-- One endpoint of the soak's mixed load (benchmarks/soak.py) for wrk, paced to a fixed rate
-- with delay() on an absolute schedule; every answer's HTTP status is counted.
--
--   NBA_API_TOKEN=... wrk -t1 -c2 -d60s -s soak.lua http://127.0.0.1:3000 -- KEYS KIND RATE SIZE RUN
--
-- KEYS: a file of JSON string literals, one a line. KIND: recommend (POST /recommend), events
-- (POST /events, SIZE fresh events a batch, ids from RUN, thread and request counter), view
-- (GET /customers/{key}, the 360 view) or score (POST /score, SIZE customers). RATE: requests/s
-- of the thread. done() prints one line `NBA_SOAK {json}`: counts, wrk's socket errors, the
-- latency percentiles (microseconds), the statuses seen with their counts, and for events the
-- accepted and rejected rows of the 200 answers.

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
  { "store", "purchase" },
}
local keys = {}
local kind = "recommend"
local pace = pacing.pace(0)
local size = 20
local run = "soak"
local counter = 0
local seen = {}
statuses = "" -- "code:count,..." rebuilt at every answer that is not a 200 (rare)
ok = 0
accepted = 0
rejected = 0

function init(args)
  keys = pacing.read_keys(args[1])
  kind = args[2] or "recommend"
  pace = pacing.pace(tonumber(args[3] or "0"))
  size = tonumber(args[4] or "20")
  run = args[5] or "soak"
  math.randomseed(thread_no or 1)
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. (os.getenv("NBA_API_TOKEN") or "")
end

function delay()
  return pace()
end

local function key()
  return keys[math.random(#keys)]
end

function request()
  counter = counter + 1
  if kind == "view" then
    local k = key():sub(2, -2) -- the JSON literal's quotes off: the key goes in the path
    return wrk.format("GET", "/customers/" .. k .. "?timeline=20", nil, nil)
  end
  local body
  if kind == "events" then
    local ts = pacing.now_iso()
    local rows = {}
    for j = 1, size do
      local e = KINDS[math.random(#KINDS)]
      local amount = e[2] == "purchase" and string.format(',"amount":%.2f', math.random() * 190 + 5) or ""
      rows[j] = string.format(
        '{"event_id":"%s-%d-%d-%d","ts":"%s","customer_key":%s,"channel":"%s","event_type":"%s"%s}',
        run, thread_no or 1, counter, j, ts, key(), e[1], e[2], amount
      )
    end
    body = '{"events":[' .. table.concat(rows, ",") .. "]}"
  elseif kind == "score" then
    local rows = {}
    for j = 1, size do
      rows[j] = key()
    end
    body = '{"customers":[' .. table.concat(rows, ",") .. '],"explain":false}'
  else
    body = string.format('{"customer":%s,"channel":"web","k":3,"explain":true}', key())
  end
  return wrk.format("POST", "/" .. kind, nil, body)
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
    if kind == "events" and body then
      accepted = accepted + (tonumber(body:match('"accepted":(%d+)')) or 0)
      rejected = rejected + (tonumber(body:match('"rejected":(%d+)')) or 0)
    end
    return
  end
  seen[status] = (seen[status] or 0) + 1
  local parts = {}
  for code, n in pairs(seen) do
    parts[#parts + 1] = string.format('"%d":%d', code, n)
  end
  statuses = table.concat(parts, ",")
end

function done(summary, latency, requests)
  local ok_total, acc, rej, codes = 0, 0, 0, {}
  for _, thread in ipairs(pacing.threads) do
    ok_total = ok_total + (tonumber(thread:get("ok")) or 0)
    acc = acc + (tonumber(thread:get("accepted")) or 0)
    rej = rej + (tonumber(thread:get("rejected")) or 0)
    local s = thread:get("statuses")
    if s and s ~= "" then
      codes[#codes + 1] = s
    end
  end
  local e = summary.errors
  io.write(string.format(
    'NBA_SOAK {"requests":%d,"duration_us":%d,"ok":%d,"connect":%d,"read":%d,"write":%d,'
      .. '"timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,"accepted":%d,"rejected":%d,'
      .. '"statuses":[%s]}\n',
    summary.requests, summary.duration, ok_total, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99), latency.max, acc, rej,
    "{" .. table.concat(codes, "},{") .. "}"
  ))
end
