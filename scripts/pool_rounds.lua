-- pool_rounds.lua - seed 000: Pool(4) runs 5 tasks of 2 s each with
-- apply_async, then close() and join(). Four run at once, the fifth waits
-- for a free worker: two rounds, about 4 s, not 10 s.
--
--   mpengine run scripts/pool_rounds.lua [SECONDS_PER_TASK]
local mp = require "mpengine"

local M = {}

function M.long_time_task(i, seconds)
  print(("child process: %d - task %d"):format(mp.getpid(), i))
  local started = mp.time()
  mp.sleep(seconds)
  print(("result: %d"):format(8 ^ 20 // 1))
  return {task = i, pid = mp.getpid(), started = started, ended = mp.time()}
end

-- Returns the elapsed time and what each task reported.
function M.run(seconds, quiet)
  if not quiet then
    print(("CPU cores: %d"):format(mp.cpu_count()))
    print(("parent process: %d"):format(mp.getpid()))
  end
  local start = mp.time()
  local pool = mp.Pool(4)
  local results = {}
  for i = 0, 4 do
    results[#results + 1] = pool:apply_async(M.long_time_task, {i, seconds})
  end
  if not quiet then print("waiting for all the child processes to finish.") end
  pool:close()
  pool:join()
  local reports = {}
  for _, r in ipairs(results) do reports[#reports + 1] = r:get() end
  local elapsed = mp.time() - start
  if not quiet then print(("total time: %.2f s (one after another: %.0f s)"):format(elapsed, 5 * seconds)) end
  return elapsed, reports
end

function M.main(seconds)
  M.run(tonumber(seconds) or 2)
end

return M
