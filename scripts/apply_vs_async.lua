-- apply_vs_async.lua - seed 003: apply_async does not block the caller,
-- apply does. Pool(3), four messages, tasks of 3 s (times SCALE).
--
--   mpengine run scripts/apply_vs_async.lua [SCALE]
local mp = require "mpengine"

local M = {}

function M.func(msg, seconds)
  print("msg:", msg)
  mp.sleep(seconds)
  print("end", msg)
  return msg
end

-- Runs the seed's loop with submit = "apply" or "apply_async"; returns the
-- order of events as seen by the parent and the elapsed time.
function M.run(submit, seconds, events)
  events = events or {}
  local pool = mp.Pool(3)
  local t0 = mp.time()
  for i = 0, 3 do
    local r = pool[submit](pool, M.func, {("hello %d"):format(i), seconds})
    events[#events + 1] = submit == "apply" and ("got " .. r) or "submitted"
  end
  events[#events + 1] = "Mark~ Mark~ Mark~~~~~~~~~~~~~~~~~~~~~~"
  pool:close()
  pool:join()
  events[#events + 1] = "Sub-process(es) done."
  return events, mp.time() - t0
end

function M.main(scale)
  local seconds = 3 * (tonumber(scale) or 0.1)
  for _, submit in ipairs{"apply_async", "apply"} do
    print(("== %s"):format(submit))
    local events, elapsed = M.run(submit, seconds)
    for _, e in ipairs(events) do print(e) end
    print(("%s: %.2f s"):format(submit, elapsed))
  end
end

return M
