-- A map whose tasks take a while (N tasks of MS ms), on a pool with a short
-- lease; prints "ok N" when every result is its own (lua_hosts_test.sh).
local mp = require "mpengine"
local M = {}
function M.main(n, ms, lease)
  n, ms = tonumber(n), tonumber(ms)
  local pool <close> = mp.Pool{lease = tonumber(lease), attempts = 5}
  local xs = {}
  for i = 1, n do xs[i] = i end
  print("started")
  io.stdout:flush()
  local r = pool:map(function(x)
    local t = mp.time() + ms / 1000
    while mp.time() < t do end
    return x * 2
  end, xs)
  for i = 1, n do assert(r[i] == 2 * i, "result " .. i) end
  print("ok " .. #r)
end
return M
