-- broker_objects.lua - the objects on a broker (a Redis server) beside one
-- Redis round trip, and beside Python's multiprocessing Manager (its own
-- server process, one socket round trip per access) in the same run.
--
--   MPENGINE_BROKER=URL mpengine run scripts/bench/broker_objects.lua [N]
--
-- Rows: one round trip through the same connection (Event:is_set, one
-- EXISTS: the floor of every call); Lock acquire+release (median latency);
-- a Queue, 2 producers and 2 consumers (messages/s); Dict d[k] reads and
-- d:incr(k) from 2 processes (ops/s).
local mp = require "mpengine"
local B = require "common"

local M = {}

local function median_us(n, f)
  local xs = {}
  for i = 1, n do
    local t0 = mp.time()
    f()
    xs[i] = (mp.time() - t0) * 1e6
  end
  return B.median(xs)
end

-- k processes run work(i) at once after a start gate; returns seconds.
local function procs(k, work)
  local go = mp.Event{broker = false}
  local ps = {}
  for i = 1, k do
    ps[i] = mp.Process{target = function() go:wait() work(i) end}
    ps[i]:start()
  end
  local t0 = mp.time()
  go:set()
  for _, p in ipairs(ps) do p:join() end
  return mp.time() - t0
end

local PY = [[
import json, multiprocessing as mp, statistics, time
N = %d
def producer(q, n):
    for i in range(n): q.put(i)
def consumer(q, n):
    for i in range(n): q.get()
def reads(d, n):
    for i in range(n): d[i %% 100]
if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Manager() as m:
        l = m.Lock()
        xs = []
        for _ in range(2000):
            t = time.monotonic(); l.acquire(); l.release(); xs.append((time.monotonic() - t) * 1e6)
        lock_us = statistics.median(xs)
        q = m.Queue()
        ps = [mp.Process(target=producer, args=(q, N // 2)) for _ in range(2)] + \
             [mp.Process(target=consumer, args=(q, N // 2)) for _ in range(2)]
        t = time.monotonic()
        for p in ps: p.start()
        for p in ps: p.join()
        queue = N / (time.monotonic() - t)
        d = m.dict({k: 0 for k in range(100)})
        ps = [mp.Process(target=reads, args=(d, N // 2)) for _ in range(2)]
        t = time.monotonic()
        for p in ps: p.start()
        for p in ps: p.join()
        get = N / (time.monotonic() - t)
        print(json.dumps({"lock_us": lock_us, "queue": queue, "get": get}))
]]

function M.main(n)
  n = tonumber(n) or 20000
  local url = mp.broker() and true or os.getenv("MPE_TEST_BROKER")
  if not url then
    print("broker_objects: run with MPENGINE_BROKER=URL (a Redis server)")
    return false
  end
  local O = {broker = url}
  local e = mp.Event(O)
  local rt = median_us(2000, function() e:is_set() end)
  local l = mp.Lock(O)
  local lock_us = median_us(2000, function() l:acquire() l:release() end)
  local q = mp.Queue(O)
  local t = procs(4, function(i)
    if i <= 2 then
      for j = 1, n // 2 do q:put(j) end
    else
      for _ = 1, n // 2 do q:get() end
    end
  end)
  local queue = n / t
  local d = mp.Dict(O)
  for k = 0, 99 do d[k] = 0 end
  local get = n / procs(2, function() for i = 1, n // 2 do local _ = d[i % 100] end end)
  local incr = n / procs(2, function() for i = 1, n // 2 do d:incr(i % 100) end end)
  local sum = 0
  for k = 0, 99 do sum = sum + d[k] end
  local py, why = B.python(PY:format(n))
  if not py then print("python: " .. why) py = {} end
  B.report(("Objects on a broker (%s), %d operations"):format(mp.broker() or "redis", n), {
    {"one round trip (Event:is_set)", rt, nil, "us", false, "the floor"},
    {"Lock acquire+release", lock_us, py.lock_us, "us", false, "2 round trips"},
    {"Queue 2 producers -> 2 consumers", queue / 1e3, py.queue and py.queue / 1e3, "k msg/s", true, ""},
    {"Dict d[k], 2 processes", get / 1e3, py.get and py.get / 1e3, "k ops/s", true, ""},
    {"Dict d:incr(k), 2 processes", incr / 1e3, nil, "k ops/s", true, "exact"},
  })
  print(("incr total exact: %s"):format(tostring(sum == n // 2 * 2)))
  return sum == n // 2 * 2
end

return M
