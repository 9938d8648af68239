-- queue.lua - queue throughput between two processes, beside Python's
-- multiprocessing.Queue in the same run.
--
--   mpengine run scripts/bench/queue.lua [SMALL_COUNT]
--
-- Targets on a 2-core machine: small messages (an integer) >= 2,000,000/s
-- (Python about 100,000/s); 64 KiB and 1 MiB messages >= 2 GB/s (Python
-- about 0.5 and 0.3 GB/s).
local mp = require "mpengine"
local B = require "common"

local M = {}

-- Seconds to move count copies of msg from a child producer to us.
local function run(kind, msg, count, maxsize)
  local q = kind == "simple" and mp.SimpleQueue() or mp.Queue(maxsize)
  local p = mp.Process{target = function()
    for _ = 1, count do q:put(msg) end
  end}
  local t0 = mp.time()
  p:start()
  for _ = 1, count do q:get() end
  local t = mp.time() - t0
  p:join()
  return t
end

local function median_of(n, f)
  local xs = {}
  for i = 1, n do xs[i] = f() end
  return B.median(xs)
end

local PY = [[
import json, multiprocessing as mp, statistics, time
def producer(q, msg, count):
    for _ in range(count): q.put(msg)
def run(msg, count):
    q = mp.Queue()
    p = mp.Process(target=producer, args=(q, msg, count))
    t = time.monotonic(); p.start()
    for _ in range(count): q.get()
    t = time.monotonic() - t
    p.join()
    return t
if __name__ == "__main__":
    mp.set_start_method("fork")
    out = {}
    out["small"] = %d / statistics.median(run(1, %d) for _ in range(3))
    out["bw64k"] = 65536 * 3000 / statistics.median(run(b"x" * 65536, 3000) for _ in range(3)) / 1e9
    out["bw1m"] = (1 << 20) * 300 / statistics.median(run(b"x" * (1 << 20), 300) for _ in range(3)) / 1e9
    print(json.dumps(out))
]]

function M.main(count)
  count = tonumber(count) or 1000000
  local small = count / median_of(3, function() return run("queue", 1, count) end)
  local simple = count / median_of(3, function() return run("simple", 1, count) end)
  local bounded = count / median_of(3, function() return run("queue", 1, count, 1000) end)
  local k64, m1 = ("x"):rep(65536), ("x"):rep(1 << 20)
  local bw64 = 65536 * 3000 / median_of(3, function() return run("queue", k64, 3000) end) / 1e9
  local bw1m = (1 << 20) * 300 / median_of(3, function() return run("queue", m1, 300) end) / 1e9
  local pycount = math.min(count, 200000)
  local py, why = B.python(PY:format(pycount, pycount))
  if not py then print("python: " .. why) py = {} end
  B.report(("queues between two processes (%d CPUs, spin %s us)"):format(mp.cpu_count(),
    os.getenv("MPENGINE_SPIN_US") or "default"), {
    {"Queue, small messages", small / 1e6, py.small and py.small / 1e6, "M/s", true, ">= 5 M/s, 20x",
     "handoff"},
    {"SimpleQueue, small messages", simple / 1e6, py.small and py.small / 1e6, "M/s", true, "",
     "handoff"},
    {"Queue(1000), small messages", bounded / 1e6, py.small and py.small / 1e6, "M/s", true, "",
     "handoff"},
    {"Queue, 64 KiB messages", bw64, py.bw64k, "GB/s", true, ">= 2 GB/s", "copy2", 65536},
    {"Queue, 1 MiB messages", bw1m, py.bw1m, "GB/s", true, ">= 2 GB/s", "copy2", 1 << 20},
  })
end

return M
