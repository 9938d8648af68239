-- sync.lua - locks and shared values, beside Python's multiprocessing.
--
--   mpengine run scripts/bench/sync.lua [INCREMENTS]
--
-- Targets on a 2-core machine: two processes x 100,000 locked increments of
-- a shared Value at >= 4,000,000 increments/s (Python about 400,000), final
-- value exact; uncontended acquire+release from Lua <= 100 ns a pair
-- (Python's `with lock:` about 500 ns); v:add(1) without a lock: reported.
local mp = require "mpengine"
local B = require "common"

local M = {}

-- Two processes each do n increments with work(v, lock); returns rate, final.
local function two_procs(n, work, v, lock)
  local go = mp.Event()
  local procs = {}
  for i = 1, 2 do
    procs[i] = mp.Process{target = function() go:wait() work(v, lock, n) end}
    procs[i]:start()
  end
  local t0 = mp.time()
  go:set()
  for _, p in ipairs(procs) do p:join() end
  return 2 * n / (mp.time() - t0), v.value
end

local function locked_increments(v, lock, n)
  for _ = 1, n do
    lock:acquire()
    v.value = v.value + 1
    lock:release()
  end
end

local function guarded_increments(v, _, n)
  local l = v:get_lock()
  for _ = 1, n do
    local _ <close> = l:guard()
    v.value = v.value + 1
  end
end

local function atomic_adds(v, _, n)
  for _ = 1, n do v:add(1) end
end

local PY = [[
import json, multiprocessing as mp, statistics, time
N = %d
def work(v, n):
    for _ in range(n):
        with v.get_lock():
            v.value += 1
def rate():
    v = mp.Value('i', 0)
    ps = [mp.Process(target=work, args=(v, N)) for _ in range(2)]
    t = time.monotonic()
    for p in ps: p.start()
    for p in ps: p.join()
    t = time.monotonic() - t
    assert v.value == 2 * N
    return 2 * N / t
def pair():
    l = mp.Lock()
    t = time.monotonic()
    for _ in range(1000000):
        with l: pass
    return (time.monotonic() - t) / 1e6
if __name__ == "__main__":
    mp.set_start_method("fork")
    print(json.dumps({"locked": statistics.median(rate() for _ in range(3)),
                      "pair": statistics.median(pair() for _ in range(3))}))
]]

function M.main(n)
  n = tonumber(n) or 100000
  -- three rounds of a way to increment; the median rate, and whether every
  -- round ended exactly at 2n
  local exact = true
  local function rounds(work, make)
    local rates = {}
    for i = 1, 3 do
      local v, lock = make()
      local r, final = two_procs(n, work, v, lock)
      rates[i] = r
      exact = exact and final == 2 * n
    end
    return B.median(rates)
  end
  local locked = rounds(locked_increments, function() return mp.Value('i', 0, {lock = false}), mp.Lock() end)
  local guarded = rounds(guarded_increments, function() return mp.Value('i', 0) end)
  local adds = rounds(atomic_adds, function() return mp.Value('i', 0) end)
  local l = mp.Lock()
  local pair = B.time_median(5, function()
    for _ = 1, 1000000 do l:acquire() l:release() end
  end) / 1e6
  local py, why = B.python(PY:format(n))
  if not py then print("python: " .. why) py = {} end
  B.report(("locks and shared values, 2 processes x %d increments"):format(n), {
    {"Lock + v.value += 1", locked / 1e6, py.locked and py.locked / 1e6, "M/s", true, ">= 10x Python",
     "handoff"},
    {"guard() + v.value += 1", guarded / 1e6, py.locked and py.locked / 1e6, "M/s", true, "",
     "handoff"},
    {"v:add(1), no lock", adds / 1e6, nil, "M/s", true, "reported", "handoff"},
    {"uncontended acquire+release", pair * 1e9, py.pair and py.pair * 1e9, "ns", false, "<= 100 ns"},
  })
  print(("final values exact: %s"):format(tostring(exact)))
  return exact
end

return M
