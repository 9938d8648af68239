-- A plain script (no main): its Pool made at the top, a module of its own
-- folder required after the Pool (lua_hosts_test.sh).
local mp = require "mpengine"
local pool <close> = mp.Pool()
local helper = require "helper"
print("plain " .. table.concat(pool:map(function(x) return helper.square(x) end, {2, 3}), ","))
