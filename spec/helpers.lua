-- helpers.lua - what the specs share: running the CLI, reading /proc.
local H = {}

H.CLI = os.getenv("MPENGINE_CLI") or "./build/mpengine"

-- Runs a shell command; returns its output (stdout and stderr) and exit code.
function H.sh(cmd)
  local f = assert(io.popen(cmd .. " 2>&1; echo \"__rc=$?\""))
  local out = f:read("a")
  f:close()
  local body, rc = out:match("^(.*)__rc=(%d+)%s*$")
  return body, tonumber(rc)
end

-- Runs `mpengine run` on a script with arguments.
function H.run(script, ...)
  local args = {}
  for i = 1, select("#", ...) do args[#args + 1] = "'" .. tostring(select(i, ...)) .. "'" end
  return H.sh(H.CLI .. " run " .. script .. " " .. table.concat(args, " "))
end

-- true while pid names a live process (a zombie counts as gone).
function H.alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local text = f:read("a") -- nil if the process went away meanwhile
  f:close()
  local st = text and text:match("^%d+ %b() (%a)")
  return st ~= nil and st ~= "Z"
end

function H.tmpname()
  local n = os.tmpname()
  os.remove(n)
  return n
end

function H.read(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("a")
  f:close()
  return s
end

-- Waits (by handshake, not by guessing) until pred() holds; fails after limit s.
function H.wait_until(pred, limit)
  local mp = require "mpengine"
  local t0 = mp.time()
  while not pred() do
    if mp.time() - t0 > (limit or 10) then error("condition not reached in time", 2) end
    mp.sleep(0.005)
  end
end

-- Pids of the zombie children of pid (scanning /proc).
function H.zombies_of(pid)
  local out = {}
  local ls = io.popen("ls /proc")
  for name in ls:lines() do
    if name:match("^%d+$") then
      local st = H.read("/proc/" .. name .. "/stat")
      if st then
        local state, ppid = st:match("^%d+ %b() (%a) (%d+)")
        if state == "Z" and tonumber(ppid) == tonumber(pid) then out[#out + 1] = tonumber(name) end
      end
    end
  end
  ls:close()
  return out
end

-- Starts `mpengine run SCRIPT ARGS` in the background; returns its pid and a
-- handle whose :finish() waits for it and returns (output, exit code). The
-- shell's own report of a killed job ("Killed") is dropped: specs kill on purpose.
function H.spawn_cli(args)
  local f = assert(io.popen("exec 2>/dev/null; " .. H.CLI .. " run " .. args ..
                            " 2>&1 & echo $!; wait $!; echo \"__rc=$?\""))
  local pid = tonumber(f:read("l"))
  return pid, {finish = function()
    local out = f:read("a")
    f:close()
    local body, rc = out:match("^(.*)__rc=(%d+)%s*$")
    return body, tonumber(rc)
  end}
end

-- Waits for a pid file a fixture wrote; returns the pids in it.
function H.pids_from(path)
  H.wait_until(function() return (H.read(path) or ""):match("done") end, 30)
  local pids = {}
  for pid in H.read(path):gmatch("(%d+)") do pids[#pids + 1] = tonumber(pid) end
  return pids
end

return H
