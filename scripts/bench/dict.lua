-- dict.lua - mp.Dict from two processes, beside Python's
-- multiprocessing.Manager().dict() in the same run.
--
--   mpengine run scripts/bench/dict.lua [OPS]
--
-- Two processes each make OPS (default 200,000) operations of one kind over
-- 100 keys at once: d[k] reads, d[k] = v writes, d:incr(k). Python's
-- Manager dict pays a socket round trip to its server process per access,
-- and has no atomic increment: its row is `with lock: d[k] = d[k] + 1`
-- under a Manager Lock, which is what an exact count needs there.
-- Target on a 2-core machine: >= 50x Python for each.
local mp = require "mpengine"
local B = require "common"

local M = {}

local KEYS = 100

-- Two processes run work(d, n) at once; returns ops per second.
local function two_procs(d, n, work)
  local go = mp.Event()
  local procs = {}
  for i = 1, 2 do
    procs[i] = mp.Process{target = function() go:wait() work(d, n, i) end}
    procs[i]:start()
  end
  local t0 = mp.time()
  go:set()
  for _, p in ipairs(procs) do p:join() end
  return 2 * n / (mp.time() - t0)
end

local function reads(d, n)
  local x
  for i = 1, n do x = d[i % KEYS] end
  return x
end

local function writes(d, n, who)
  for i = 1, n do d[i % KEYS] = who end
end

local function incrs(d, n)
  for i = 1, n do d:incr(i % KEYS) end
end

local PY = [[
import json, multiprocessing as mp, statistics, time
N = %d
KEYS = 100
LOCKED = max(N // 10, 100)  # a locked += is slow there: fewer of them
def reads(d, lock, n):
    for i in range(n): d[i %% KEYS]
def writes(d, lock, n):
    for i in range(n): d[i %% KEYS] = 1
def incrs(d, lock, n):
    for i in range(LOCKED):
        with lock:
            d[i %% KEYS] = d[i %% KEYS] + 1
def rate(m, work):
    d = m.dict({k: 0 for k in range(KEYS)})
    lock = m.Lock()
    ps = [mp.Process(target=work, args=(d, lock, N)) for _ in range(2)]
    t = time.monotonic()
    for p in ps: p.start()
    for p in ps: p.join()
    t = time.monotonic() - t
    n = LOCKED if work is incrs else N
    if work is incrs: assert sum(d.values()) == 2 * n
    return 2 * n / t
if __name__ == "__main__":
    mp.set_start_method("fork")
    with mp.Manager() as m:
        print(json.dumps({w.__name__: statistics.median(rate(m, w) for _ in range(3))
                          for w in (reads, writes, incrs)}))
]]

function M.main(n)
  n = tonumber(n) or 200000
  local exact = true
  local function rounds(work)
    local rates = {}
    for r = 1, 3 do
      local d = mp.Dict()
      for k = 0, KEYS - 1 do d[k] = 0 end
      rates[r] = two_procs(d, n, work)
      if work == incrs then
        local sum = 0
        for k = 0, KEYS - 1 do sum = sum + d[k] end
        exact = exact and sum == 2 * n
      end
    end
    return B.median(rates)
  end
  local get, set, incr = rounds(reads), rounds(writes), rounds(incrs)
  local py, why = B.python(PY:format(math.min(n, 20000)))
  if not py then print("python: " .. why) py = {} end
  local function k(v) return v and v / 1e6 end
  B.report(("Dict, 2 processes x %d operations over %d keys"):format(n, KEYS), {
    {"d[k] (get)", get / 1e6, k(py.reads), "M/s", true, ">= 50x Python", "handoff"},
    {"d[k] = v (set)", set / 1e6, k(py.writes), "M/s", true, ">= 50x Python", "handoff"},
    {"d:incr(k) (Python: a locked +=)", incr / 1e6, k(py.incrs), "M/s", true, ">= 50x Python", "handoff"},
  })
  print(("incr totals exact: %s"):format(tostring(exact)))
  return exact
end

return M
