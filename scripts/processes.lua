-- processes.lua - seed 003/004's first steps with processes, in Lua.
--
--   mpengine run scripts/processes.lua [SCALE]
--
-- 1. three workers sleep 2, 3 and 4 s (times SCALE, default 0.1) side by
--    side: the whole run takes about the longest, not the sum;
-- 2. active_children() lists them while they run, with name and pid (they
--    begin to sleep once the parent has listed them: an Event);
-- 3. a daemon child is stopped when the main part ends, a normal one joined;
-- 4. a Pipe: the reader sees EOF ("closed") once the writer is done.
local mp = require "mpengine"

local M = {}

-- Runs the three sleeping workers; returns elapsed seconds and their report.
function M.workers(scale, out)
  out = out or print
  local r, w = mp.Pipe(false)
  local listed_them = mp.Event()
  local procs = {}
  for i, interval in ipairs{2, 3, 4} do
    procs[i] = mp.Process{name = "worker_" .. i, args = {w, interval * scale}, target = function(conn, s)
      conn:send(("%s starts, sleeps %.2f s"):format(mp.current_process().name, s))
      listed_them:wait()
      mp.sleep(s)
      conn:send(("end %s"):format(mp.current_process().name))
    end}
  end
  local t0 = mp.time()
  for _, p in ipairs(procs) do p:start() end
  w:close() -- the children hold the only writing ends now
  out(("The number of CPU is: %d"):format(mp.cpu_count()))
  local lines = {}
  for i = 1, #procs do -- every worker has started
    lines[i] = r:recv()
    out(lines[i])
  end
  local listed = {}
  for _, p in ipairs(mp.active_children()) do
    listed[#listed + 1] = p.name
    out(("child   p.name: %s\tp.pid: %d"):format(p.name, p.pid))
  end
  listed_them:set()
  for line in function() return (r:recv()) end do -- until every writer is gone
    lines[#lines + 1] = line
    out(line)
  end
  for _, p in ipairs(procs) do p:join() end
  local elapsed = mp.time() - t0
  out(("all workers done in %.2f s (one after another: %.2f s)"):format(elapsed, 9 * scale))
  table.sort(listed)
  return elapsed, lines, listed, procs
end

function M.main(scale)
  scale = tonumber(scale) or 0.1
  M.workers(scale)
  local d = mp.Process{daemon = true, name = "daemon", target = function()
    for i = 1, 100 do mp.sleep(scale) print("daemon still running", i) end
  end}
  d:start()
  print("Main process ended! (the daemon child is stopped with it)")
end

return M
