-- pool.lua - the process Pool beside Python's multiprocessing.Pool.
--
--   mpengine run scripts/bench/pool.lua
--
-- Targets on a 2-core machine: map of 200,000 tiny tasks (x*x) with default
-- chunking >= 3x Python's rate; map with chunksize 1 over 20,000 tasks >= 10x
-- Python; apply round trip median <= 50 us; 16 CPU-bound tasks of about
-- 50 ms on 2 workers: speedup >= 1.9x (the limit is 2). Beside them, a C
-- host's mpe_pool_map over 1,000,000 8-byte tasks (tests/bench_pool.c).
local mp = require "mpengine"
local B = require "common"
local cjson = require "cjson"

local M = {}

local function busy(ms)
  -- CPU-bound work of about ms milliseconds (calibrated below)
  local x = 0
  for i = 1, ms * M.loops_per_ms do x = x + i % 7 end
  return x
end

local function calibrate()
  local n = 2000000
  local t0 = mp.time()
  local x = 0
  for i = 1, n do x = x + i % 7 end
  M.loops_per_ms = math.floor(n / ((mp.time() - t0) * 1000))
  return x
end

local PY = [[
import json, multiprocessing as mp, statistics, time
def sq(x): return x * x
def noop(): return None
def busy(n):
    x = 0
    for i in range(n): x += i % 7
    return x
if __name__ == "__main__":
    mp.set_start_method("fork")
    out = {}
    with mp.Pool(2) as p:
        xs = list(range(200000))
        t = time.monotonic(); p.map(sq, xs); out["map"] = 200000 / (time.monotonic() - t)
        xs = list(range(20000))
        t = time.monotonic(); p.map(sq, xs, 1); out["map1"] = 20000 / (time.monotonic() - t)
        for _ in range(50): p.apply(noop)
        ts = []
        for _ in range(500):
            t = time.monotonic(); p.apply(noop); ts.append(time.monotonic() - t)
        out["apply"] = statistics.median(ts)
        t0 = time.monotonic(); busy(10000000); per = (time.monotonic() - t0) / 10000000
        n = int(0.05 / per)
        seqs, pars = [], []
        for _ in range(5):
            t = time.monotonic()
            for _ in range(16): busy(n)
            seqs.append(time.monotonic() - t)
            t = time.monotonic(); p.map(busy, [n] * 16, 1); pars.append(time.monotonic() - t)
        out["speedup"] = statistics.median(seqs) / statistics.median(pars)
    print(json.dumps(out))
]]

function M.main()
  calibrate()
  local pool <close> = mp.Pool(2)
  local xs = {}
  for i = 1, 200000 do xs[i] = i end
  pool:map(function(x) return x * x end, {1, 2, 3}) -- workers warm
  local t = B.time_median(7, function() pool:map(function(x) return x * x end, xs) end)
  local map_rate = 200000 / t
  local ys = table.move(xs, 1, 20000, 1, {})
  t = B.time_median(3, function() pool:map(function(x) return x * x end, ys, 1) end)
  local map1_rate = 20000 / t
  local noop = function() return nil end
  for _ = 1, 50 do pool:apply(noop) end
  local apply = B.time_median(500, function() pool:apply(noop) end)
  -- sequential and parallel rounds interleaved, medians of each (the
  -- machine's speed drifts)
  local n = 50
  local items = {}
  for i = 1, 16 do items[i] = n end
  local seqs, pars = {}, {}
  for r = 1, 5 do
    seqs[r] = B.time_median(1, function() for _ = 1, 16 do busy(n) end end)
    pars[r] = B.time_median(1, function() pool:map(busy, items, 1) end)
  end
  local seq, par = B.median(seqs), B.median(pars)
  -- A C host: the engine pool's mpe_pool_map over 1,000,000 8-byte tasks
  -- (tests/bench_pool.c), beside the Lua figure above and Python's.
  local c_rate
  local prog = B.test_program("bench_pool")
  if prog then
    local p = io.popen(prog .. " 1000000 2 2>&1")
    local out = p:read("a")
    p:close()
    local ok, c = pcall(cjson.decode, out:match("%b{}") or "")
    if ok and type(c) == "table" then c_rate = c.map else print("bench_pool: " .. out) end
  else
    print("bench_pool: not found (build the tests)")
  end
  -- a round trip of two processes that share one CPU (the other ones busy)
  -- cannot beat two context switches: the probe's futex_rt_1cpu_ns
  local floors = B.floors()
  local one_cpu = floors and floors.futex_rt_1cpu_ns and floors.futex_rt_1cpu_ns / 1e3
  local py, why = B.python(PY)
  if not py then print("python: " .. why) py = {} end
  local rows = {
    {"map 200,000 x*x, default chunks", map_rate / 1e6, py.map and py.map / 1e6, "M/s", true, ">= 3x Python"},
    {"map 20,000 x*x, chunksize 1", map1_rate / 1e3, py.map1 and py.map1 / 1e3, "k/s", true, ">= 10x Python"},
    {"apply round trip, median", apply * 1e6, py.apply and py.apply * 1e6, "us", false,
     one_cpu and ("<= 30 us, 5x; futex RT on one CPU %.1f us"):format(one_cpu) or "<= 30 us, 5x", "futex"},
    {"16 x 50 ms CPU tasks, speedup", seq / par, py.speedup, "x", true, ">= 1.9x",
     math.min(2, mp.cpu_count())},
  }
  if c_rate then -- (without tests/bench_pool, no row: the report's rows hold no NaN)
    table.insert(rows, 2, {"C host mpe_pool_map, 1,000,000", c_rate / 1e6, py.map and py.map / 1e6, "M/s", true,
      ("beside Lua's map: %.3f M/s"):format(map_rate / 1e6)})
  end
  B.report(("Pool(2) on %d CPUs"):format(mp.cpu_count()), rows)
end

return M
