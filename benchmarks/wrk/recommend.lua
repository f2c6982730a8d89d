-- POST /recommend (or POST /customers, the 360 view) for wrk (benchmarks/serving.py): a random
-- customer key of the list per request, closed loop, or paced to a fixed rate with delay() on an
-- absolute schedule.
--
--   wrk -t1 -c8 -d12s -s recommend.lua http://127.0.0.1:3000/recommend -- KEYS RATE K EXPLAIN
--   wrk -t1 -c2 -d12s -s recommend.lua http://127.0.0.1:3000/customers -- KEYS RATE 20 - 360
--
-- KEYS: a file of JSON string literals, one a line; RATE: requests/s of this thread (0: as
-- fast as the connections go); K and EXPLAIN: the request's fields (K: the timeline's length of
-- a 360 view). done() prints one line
-- `NBA_WRK {json}` with the counts and latency percentiles (microseconds).

package.path = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "?.lua;" .. package.path
local pacing = require("pacing")

function setup(thread)
  pacing.number_thread(thread, "seed")
end

local keys = {}
local pace = pacing.pace(0)
local k = 3
local explain = "true"
local view = false

function init(args)
  keys = pacing.read_keys(args[1])
  pace = pacing.pace(tonumber(args[2] or "0"))
  k = tonumber(args[3] or "3")
  explain = args[4] or "true"
  view = args[5] == "360"
  math.randomseed(seed or 1)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
end

function delay()
  return pace()
end

function request()
  local key = keys[math.random(#keys)]
  if view then
    return wrk.format(nil, nil, nil, string.format('{"customer":%s,"timeline":%d}', key, k))
  end
  local body = string.format(
    '{"customer":%s,"channel":"web","k":%d,"explain":%s}', key, k, explain
  )
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'NBA_WRK {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,'
      .. '"write":%d,"status":%d,"timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,'
      .. '"max_us":%d,"mean_us":%.1f,"accepted":0}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, latency.mean
  ))
end
