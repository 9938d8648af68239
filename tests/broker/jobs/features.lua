-- What a task on a broker's host sees, one line each (lua_hosts_test.sh).
local mp = require "mpengine"
local helper = require "helper"
local M = {}
SCALE = 10 -- a global of the script: the hosts load it (main not called)

function M.main(what)
  local pool <close> = mp.Pool{timeout = tonumber(os.getenv("JOB_TIMEOUT") or "30")}
  if what == "basic" then
    local base = 1
    local r = pool:map(function(x) return helper.square(x) * SCALE + base end, {1, 2, 3})
    print("map " .. table.concat(r, ","))
    print("host " .. tostring(pool:apply(function() return mp.broker() ~= nil end)))
    local ok, err = pcall(pool.apply, pool, function() error("boom") end)
    print("error " .. tostring(ok) .. " " .. tostring(err):gsub("\n", " | "))
    local q = mp.Queue()
    ok, err = pcall(pool.apply, pool, function(x) return x end, {{q}})
    print("local " .. tostring(ok) .. " " .. tostring(err):gsub("\n", " | "))
  elseif what == "die" then
    local r = pool:map_async(function(x)
      if x == 3 then os.execute("kill -9 " .. mp.getpid()) end
      return x
    end, {1, 2, 3, 4})
    r:wait()
    local ok, err = pcall(r.get, r)
    print("die " .. tostring(ok) .. " " .. tostring(err):gsub("\n", " | "))
  elseif what == "timeout" then
    local ok, err = pcall(pool.apply, pool, function() while true do end end)
    print("timeout " .. tostring(ok) .. " " .. tostring(err):gsub("\n", " | "))
  end
end
return M
