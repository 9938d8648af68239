-- redis_helper.lua - a Redis server of a spec's own: loopback, a free port,
-- a password (in a config file only its owner reads, never on a command
-- line), no persistence; stopped by stop(), pass or fail.
--
--   local R = require "redis_helper"
--   local srv = R.start()      -- nil, why when redis-server is missing
--   srv.url                    -- "redis://:PASSWORD@127.0.0.1:PORT"
--   srv:stop()
local R = {}

local function sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1"))
  local out = f:read("a")
  local ok, _, rc = f:close()
  return out, ok and 0 or rc
end

function R.available()
  local _, rc = sh("command -v redis-server >/dev/null")
  return rc == 0
end

local function free_port()
  -- the kernel picks a free port for a socket bound to port 0
  local out = sh([[python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])']])
  return assert(tonumber(out:match("%d+")), "no free port: " .. out)
end

local function random_hex(n)
  local f = assert(io.open("/dev/urandom", "rb"))
  local b = f:read(n)
  f:close()
  return (b:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

function R.start()
  if not R.available() then return nil, "redis-server is not installed" end
  local dir = sh("mktemp -d"):gsub("%s+$", "")
  local pass = random_hex(12)
  for _ = 1, 5 do
    local port = free_port()
    local conf = dir .. "/redis.conf"
    local f = assert(io.open(conf, "w"))
    f:write(string.format("port %d\nbind 127.0.0.1\nrequirepass %s\nsave \"\"\nappendonly no\n" ..
      "daemonize no\npidfile %s/redis.pid\nlogfile %s/redis.log\ndir %s\n", port, pass, dir, dir, dir))
    f:close()
    sh("chmod 600 " .. conf)
    -- exec: setpriv's parent is this process, and its death signal stays set
    -- across the exec of redis-server
    local child = io.popen("exec setpriv --pdeathsig KILL redis-server " .. conf .. " 2>&1", "r")
    for _ = 1, 200 do
      local out = sh(string.format("REDISCLI_AUTH=%s redis-cli -p %d ping", pass, port))
      if out:match("PONG") then
        local srv = {url = string.format("redis://:%s@127.0.0.1:%d", pass, port), port = port, pass = pass,
          dir = dir}
        function srv.stop()
          local pid = tonumber((io.open(dir .. "/redis.pid") or io.open("/dev/null")):read("a"):match("%d+") or "")
          if pid then sh("kill " .. pid) end
          child:close() -- waits for the server to end
          sh("rm -rf " .. dir)
        end
        function srv.cli(_, ...)
          local args = {}
          for i = 1, select("#", ...) do args[i] = "'" .. tostring(select(i, ...)) .. "'" end
          return (sh(string.format("REDISCLI_AUTH=%s redis-cli --no-raw -p %d %s", pass, port,
            table.concat(args, " "))))
        end
        return srv
      end
      sh("sleep 0.05")
    end
    -- the port was taken meanwhile: try another
    sh("kill $(cat " .. dir .. "/redis.pid 2>/dev/null) 2>/dev/null")
    child:close()
  end
  sh("rm -rf " .. dir)
  return nil, "redis-server did not start"
end

return R
