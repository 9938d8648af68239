-- luacheck: globals SCALE INITIALIZED
-- What a task on a broker's host sees, one line each (lua_hosts_test.sh).
local mp = require "mpengine"
local helper = require "helper"
local M = {}
SCALE = 10 -- a global of the script: the hosts load it (main not called)

function M.main(what)
  local pool <close> = mp.Pool{timeout = tonumber(os.getenv("JOB_TIMEOUT") or "30"),
                               initializer = function(v) INITIALIZED = v end, initargs = {"yes"}}
  if what == "basic" then
    local base = 1
    local r = pool:map(function(x) return helper.square(x) * SCALE + base end, {1, 2, 3})
    print("map " .. table.concat(r, ","))
    print("host " .. tostring(pool:apply(function() return mp.broker() ~= nil end)))
    print("initializer " .. tostring(pool:apply(function() return INITIALIZED end)))
    local u = {}
    for x in pool:imap_unordered(function(x) return x + 1 end, {1, 2, 3}) do u[#u + 1] = x end
    table.sort(u)
    print("starmap " .. table.concat(pool:starmap(function(a, b) return a * b end, {{2, 3}, {4, 5}}), ",")
      .. " imap_unordered " .. table.concat(u, ","))
    local ok, err = pcall(pool.apply, pool, function() error("boom") end)
    print("error " .. tostring(ok) .. " " .. tostring(err):gsub("\n", " | "))
    local q = mp.Queue{broker = false} -- of this host (a broker run makes them on the broker)
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
  elseif what == "build" then -- the test changes the run's build on the broker first
    print("ready")
    io.stdout:flush()
    io.read("l")
    local ok, err = pcall(pool.apply, pool, function() return 1 end)
    print("build " .. tostring(ok) .. " " .. tostring(err):gsub("\n", " | "))
  elseif what == "recycle" then -- maxtasksperchild is the hosts' (the driver's lanes never retire)
    local p2 <close> = mp.Pool{maxtasksperchild = 2}
    local xs = {}
    for i = 1, 100 do xs[i] = i end
    local r = p2:map(function(x) return x end, xs, 1)
    print("recycle " .. #r .. " " .. r[100])
  elseif what == "cap" then -- processes caps the tasks running at once, over every host
    local p2 <close> = mp.Pool{processes = 2}
    local spans = p2:map(function()
      local s = mp.time()
      while mp.time() < s + 0.03 do end
      return {s, mp.time()}
    end, {1, 2, 3, 4, 5, 6, 7, 8}, 1)
    local most = 0
    for _, a in ipairs(spans) do -- tasks running when a started
      local n = 0
      for _, b in ipairs(spans) do if b[1] <= a[1] and a[1] < b[2] then n = n + 1 end end
      most = math.max(most, n)
    end
    print("cap " .. most)
  elseif what == "objects" then -- the run's objects (on the broker) reach tasks on every host
    local d, q, lock, v = mp.Dict(), mp.Queue(), mp.Lock(), mp.Value("i", 0)
    pool:map(function(x)
      d:incr("n")
      q:put(x)
      lock:acquire()
      v.value = v.value + 1
      lock:release()
      return x
    end, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10}, 1)
    local got = 0
    for _ = 1, 10 do got = got + q:get(10) end
    print(("objects %d %d %d"):format(d:get("n"), got, v.value))
  elseif what == "away" then -- the broker stops for longer than broker_timeout
    local p2 <close> = mp.Pool{broker_timeout = 2}
    p2:map(function(x) return x end, {1})
    print("ready")
    io.stdout:flush()
    io.read("l")
    local ok, err = pcall(p2.map, p2, function(x) return x end, {1, 2, 3})
    print("away " .. tostring(ok) .. " " .. tostring(err):gsub("\n", " | "))
  elseif what == "timeout" then
    local ok, err = pcall(pool.apply, pool, function() while true do end end)
    print("timeout " .. tostring(ok) .. " " .. tostring(err):gsub("\n", " | "))
  end
end
return M
