-- barrier_phases.lua - a computation in phases with a Barrier: WORKERS
-- processes smooth a shared Array (each point becomes the mean of itself and
-- its neighbours), each worker owning a slice. No one may start phase k+1
-- before everyone finished phase k: the barrier holds them, and its action
-- (run by the last to arrive) swaps the buffers and counts the phases.
--
--   mpengine run scripts/barrier_phases.lua [POINTS] [PHASES] [WORKERS]
local mp = require "mpengine"

local M = {}

local function smooth(src, dst, lo, hi, n)
  for i = lo, hi do
    local l = i > 1 and src[i - 1] or src[i]
    local r = i < n and src[i + 1] or src[i]
    dst[i] = (l + src[i] + r) / 3
  end
end

-- The same computation in one process, to check the parallel one against.
function M.sequential(init, phases)
  local a, b = {table.unpack(init)}, {}
  for _ = 1, phases do
    smooth(a, b, 1, #a, #a)
    a, b = b, a
  end
  return a
end

function M.parallel(init, phases, workers)
  local n = #init
  local bufs = {mp.Array('d', init), mp.Array('d', n)}
  local current = mp.Value('i', 1) -- which buffer holds the latest phase
  local done = mp.Value('i', 0)
  local barrier = mp.Barrier(workers, function()
    current.value = 3 - current.value
    done:add(1)
  end, 30)
  local procs = {}
  for w = 1, workers do
    local lo = (w - 1) * n // workers + 1
    local hi = w * n // workers
    procs[w] = mp.Process{name = "worker-" .. w, target = function()
      for _ = 1, phases do
        local src = bufs[current.value]
        smooth(src, bufs[3 - current.value], lo, hi, n)
        assert(barrier:wait(), "barrier broken")
      end
    end}
  end
  for _, p in ipairs(procs) do p:start() end
  for _, p in ipairs(procs) do
    p:join()
    assert(p.exitcode == 0, p.name .. " failed")
  end
  return bufs[current.value]:totable(), done.value
end

function M.main(points, phases, workers)
  points, phases, workers = tonumber(points) or 1000, tonumber(phases) or 50, tonumber(workers) or mp.cpu_count()
  local init = {}
  for i = 1, points do init[i] = (i % 10 == 0) and 100.0 or 0.0 end
  local par, ran = M.parallel(init, phases, workers)
  local seq = M.sequential(init, phases)
  local maxdiff = 0
  for i = 1, points do maxdiff = math.max(maxdiff, math.abs(par[i] - seq[i])) end
  print(("%d phases on %d points by %d workers; largest difference from one process: %g"):format(
    ran, points, workers, maxdiff))
  return maxdiff == 0 and ran == phases
end

return M
