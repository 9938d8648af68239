-- counter.lua - seed 002: 10 processes each add 1 to a shared Value 20 times.
--
--   mpengine run scripts/counter.lua [--unlocked] [ROUNDS]
--
-- With the Value's lock held around read-modify-write, the total is exactly
-- 200, every run. With --unlocked, the same code loses updates: two
-- processes read the same value and both write it plus one.
local mp = require "mpengine"

local M = {}

-- One run: returns the final value of the counter.
function M.count(locked, processes, increments)
  processes, increments = processes or 10, increments or 20
  local counter = mp.Value('i', 0)
  local procs = {}
  for i = 1, processes do
    procs[i] = mp.Process{args = {counter}, target = function(v)
      for _ = 1, increments do
        mp.sleep(0.0005) -- the seed's time.sleep(0.01), shorter
        if locked then
          local _ <close> = v:get_lock():guard() -- seed: with counter.get_lock():
          v.value = v.value + 1
        else
          local x = v.value -- read ...
          mp.sleep(0)       -- ... let the others run ...
          v.value = x + 1   -- ... write: another process may have written in between
        end
      end
    end}
  end
  for _, p in ipairs(procs) do p:start() end
  for _, p in ipairs(procs) do p:join() end
  return counter.value
end

function M.main(...)
  local locked, rounds = true, 10
  for _, a in ipairs{...} do
    if a == "--unlocked" then locked = false else rounds = tonumber(a) or rounds end
  end
  local all_exact = true
  for i = 1, rounds do
    local total = M.count(locked)
    all_exact = all_exact and total == 200
    print(("run %2d: counter = %d%s"):format(i, total, total == 200 and "" or "  (updates lost)"))
  end
  print(locked and "with the lock: exactly 200 every run" or "without the lock: updates are lost")
  return not locked or all_exact
end

return M
