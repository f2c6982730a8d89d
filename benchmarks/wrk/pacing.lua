-- What the wrk scripts share (loaded with `require("pacing")` from this folder): the clocks,
-- a pace that keeps a fixed rate on an absolute schedule, the key file, and the registry of
-- wrk's threads that done() reads the per-thread counters from.

local ffi = require("ffi")
ffi.cdef([[
typedef struct { long tv_sec; long tv_nsec; } nba_timespec;
int clock_gettime(int clk_id, nba_timespec *tp);
]])
local clock = ffi.new("nba_timespec")

local M = { threads = {} }

function M.now_ms()
  ffi.C.clock_gettime(1, clock) -- CLOCK_MONOTONIC
  return tonumber(clock.tv_sec) * 1000 + tonumber(clock.tv_nsec) / 1e6
end

function M.now_iso()
  ffi.C.clock_gettime(0, clock) -- CLOCK_REALTIME
  local s = tonumber(clock.tv_sec)
  return os.date("!%Y-%m-%dT%H:%M:%S", s) .. string.format(".%06dZ", tonumber(clock.tv_nsec) / 1000)
end

-- wrk's setup(thread): each thread numbered from 1 in the global `name` of its own Lua state
function M.number_thread(thread, name)
  table.insert(M.threads, thread)
  thread:set(name, #M.threads)
end

-- delay() for `rate` requests/s (0: none): each request's slot is the last one plus the
-- interval, so a slow answer does not lower the rate; after a stall of over a second the
-- schedule restarts rather than bursting to catch up
function M.pace(rate)
  local interval = (rate or 0) > 0 and 1000 / rate or 0
  local slot = nil
  return function()
    if interval == 0 then
      return 0
    end
    local now = M.now_ms()
    if slot == nil or slot < now - 1000 then
      slot = now
    end
    local wait = slot - now
    slot = slot + interval
    return wait > 0 and wait or 0
  end
end

-- the key file's lines (JSON string literals); with `share` threads, thread `index`'s part
function M.read_keys(path, share, index)
  local keys, n = {}, 0
  share, index = share or 1, index or 1
  for line in io.lines(path) do
    if n % share == index - 1 then
      keys[#keys + 1] = line
    end
    n = n + 1
  end
  return keys
end

return M
