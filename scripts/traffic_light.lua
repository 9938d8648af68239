-- traffic_light.lua - seed 004's Event demo: a light process turns green
-- (event set) and red (event cleared); cars wait for green before passing.
--
--   mpengine run scripts/traffic_light.lua [CARS] [SECONDS_PER_LIGHT]
local mp = require "mpengine"

local M = {}

function M.light(green, period, cycles)
  for _ = 1, cycles do
    green:clear()
    print("light: red")
    mp.sleep(period)
    green:set()
    print("light: green")
    mp.sleep(period)
  end
end

function M.car(green, n, passed)
  local saw_green = green:is_set()
  if not saw_green then
    print(("car %d: waiting at red"):format(n))
    saw_green = green:wait() -- true: the light turned green while it waited
  end
  passed:put({n = n, green = saw_green})
  print(("car %d: passes on green"):format(n))
end

-- Returns what each car saw when it passed.
function M.run(cars, period)
  local green, passed = mp.Event(), mp.Queue()
  local light = mp.Process{target = M.light, args = {green, period, 100}, name = "light", daemon = true}
  light:start()
  local procs = {}
  for n = 1, cars do
    mp.sleep(math.random() * period)
    procs[n] = mp.Process{target = M.car, args = {green, n, passed}, name = "car-" .. n}
    procs[n]:start()
  end
  local seen = {}
  for _ = 1, cars do seen[#seen + 1] = passed:get() end
  for _, p in ipairs(procs) do p:join() end
  light:terminate()
  light:join()
  return seen
end

function M.main(cars, period)
  local seen = M.run(tonumber(cars) or 10, tonumber(period) or 0.2)
  print(("%d cars passed"):format(#seen))
end

return M
