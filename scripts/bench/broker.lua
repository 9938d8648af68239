-- broker.lua - the Pool on a broker (Redis) beside the local engine's and
-- Python's multiprocessing, in the same run.
--
--   mpengine run scripts/bench/broker.lua
--
-- As root with ip(8), it runs itself again through broker_hosts.sh, with
-- the broker, the driver and each worker host in a network namespace of
-- its own (MPENGINE_BENCH_NETNS=0: not). Otherwise it starts its own
-- redis-server (a free port on loopback, a password in a config file, no
-- persistence) and worker hosts as `mpengine worker` processes here. Each
-- host has one process; all are stopped at the end, pass or fail.
-- Targets: 16 x 50 ms CPU-bound tasks on 2 hosts >= 1.8x faster than on 1
-- (1 host and 2 measured in turn, seven times: a VM's speed drifts, so
-- each ratio compares two runs a second apart; the tasks' own time over the
-- wall time says the same without the drift); map of 200,000 tiny tasks through the broker
-- with default chunking >= 0.5 M tasks/s; apply's round trip median beside
-- Redis's own round trip (the floor). It also says how many tasks ran twice
-- (from the hosts' counts: 0 when nothing died).
local mp = require "mpengine"
local B = require "common"

local M = {}

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1")
  local out = p:read("a")
  p:close()
  return out
end

local function self_exe()
  return sh("readlink /proc/$PPID/exe"):match("[^\n]+") or "mpengine"
end

-- Loops of busy()'s work per millisecond where it runs (here, or on a host).
local loops_per_ms
local function loop_speed()
  local n, x = 2000000, 0
  local t0 = mp.time()
  for i = 1, n do x = x + i % 7 end
  return math.floor(n / ((mp.time() - t0) * 1000)) + x * 0
end

-- The broker and hosts of this run; stop() ends them all.
local Env = {}
Env.__index = Env

local function start_redis(dir)
  for _ = 1, 10 do
    local port = 20000 + math.random(0, 40000)
    local pass = sh("od -An -N12 -tx1 /dev/urandom"):gsub("%s", "")
    local conf = dir .. "/redis.conf"
    local f = assert(io.open(conf, "w"))
    f:write(("port %d\nbind 127.0.0.1\nrequirepass %s\nsave \"\"\nappendonly no\ndir %s\n" ..
      "pidfile %s/redis.pid\ndaemonize yes\nlogfile %s/redis.log\n"):format(port, pass, dir, dir, dir))
    f:close()
    os.execute("chmod 600 " .. conf)
    if os.execute("redis-server " .. conf .. " >/dev/null 2>&1") then
      for _ = 1, 100 do
        if sh(("REDISCLI_AUTH=%s redis-cli -p %d ping"):format(pass, port)):match("PONG") then
          return port, pass
        end
        mp.sleep(0.05)
      end
    end
  end
  error("redis-server did not start")
end

function Env.new()
  local dir = sh("mktemp -d"):match("[^\n]+")
  local env = setmetatable({dir = dir, hosts = {}}, Env)
  local url = os.getenv("MPE_BENCH_BROKER") -- broker_hosts.sh's, in its namespace
  if url then
    env.url, env.ns = url, os.getenv("MPE_BENCH_NS")
    env.pass, env.addr, env.port = url:match("^redis://:([^@]*)@([^:]+):(%d+)")
    return env
  end
  env.port, env.pass = start_redis(dir)
  env.addr, env.own = "127.0.0.1", true
  env.url = ("redis://:%s@127.0.0.1:%d"):format(env.pass, env.port)
  return env
end

-- A worker host with one process, until it says it serves.
function Env:host(name)
  local log = ("%s/%s.log"):format(self.dir, name)
  local netns = self.ns and ("ip netns exec %s%s "):format(self.ns, name) or ""
  local pid = sh(("MPENGINE_BROKER='%s' %s%s worker --procs 1 --name %s >%s 2>&1 & echo $!")
    :format(self.url, netns, self_exe(), name, log)):match("%d+")
  self.hosts[name] = pid
  for _ = 1, 400 do
    local f = io.open(log)
    local s = f and f:read("a") or ""
    if f then f:close() end
    if s:find("serving") then return end
    mp.sleep(0.01)
  end
  error("worker host " .. name .. " did not start")
end

function Env:stop_host(name)
  local pid = self.hosts[name]
  if not pid then return end
  os.execute("kill -TERM " .. pid .. " 2>/dev/null")
  for _ = 1, 500 do
    if not os.execute("kill -0 " .. pid .. " 2>/dev/null") then break end
    mp.sleep(0.01)
  end
  os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  self.hosts[name] = nil
end

function Env:stop()
  for name in pairs(self.hosts) do self:stop_host(name) end
  if self.own then
    os.execute(("REDISCLI_AUTH=%s redis-cli -p %d shutdown nosave >/dev/null 2>&1"):format(self.pass, self.port))
  end
  os.execute("rm -rf " .. self.dir)
end

-- Tasks the hosts ran (their counts in mpe:hosts).
function Env:tasks_run()
  local out = sh(("MPENGINE_BROKER='%s' %s status --json"):format(self.url, self_exe()))
  local n = 0
  local hosts = out:match('"hosts": (%b[])') or ""
  for done, failed in hosts:gmatch('"done": (%d+), "failed": (%d+)') do n = n + done + failed end
  return n
end

-- Redis's own round trip (PING, one client), median seconds.
function Env:redis_rtt()
  local out = sh(("redis-benchmark -h %s -p %d -a %s -c 1 -n 3000 -t ping --csv")
    :format(self.addr, self.port, self.pass))
  local rps = tonumber(out:match('"PING_MBULK","([%d.]+)"') or out:match('"PING_INLINE","([%d.]+)"') or "")
  return rps and 1 / rps
end

local PY = [[
import json, multiprocessing as mp, statistics, time
def sq(x): return x * x
def noop(): return None
def busy(n):
    x = 0
    for i in range(n): x += i % 7
    return x
if __name__ == "__main__":
    mp.set_start_method("fork")
    out = {}
    with mp.Pool(2) as p:
        xs = list(range(200000))
        t = time.monotonic(); p.map(sq, xs); out["map"] = 200000 / (time.monotonic() - t)
        for _ in range(50): p.apply(noop)
        ts = []
        for _ in range(300):
            t = time.monotonic(); p.apply(noop); ts.append(time.monotonic() - t)
        out["apply"] = statistics.median(ts)
        t0 = time.monotonic(); busy(10000000); per = (time.monotonic() - t0) / 10000000
        n = int(0.05 / per)
        t = time.monotonic(); p.map(busy, [n] * 16, 1); out["cpu16"] = time.monotonic() - t
    print(json.dumps(out))
]]

local function busy(ms) -- loops_per_ms travels as its upvalue; returns the seconds it ran
  local t0, x = mp.time(), 0
  for i = 1, ms * loops_per_ms do x = x + i % 7 end
  return mp.time() - t0 + x * 0
end

-- 16 x 50 ms on the pool: wall seconds, and the tasks' own seconds over it.
local function cpu16(pool, items)
  local t0, ran = mp.time(), 0
  for _, d in ipairs(pool:map(busy, items)) do ran = ran + d end
  local wall = mp.time() - t0
  return wall, ran / wall
end

local function measure(pool, xs, rounds)
  pool:map(function(x) return x * x end, {1, 2, 3})
  local map = 200000 / B.time_median(3, function() pool:map(function(x) return x * x end, xs) end)
  local noop = function() return nil end
  for _ = 1, 20 do pool:apply(noop) end
  local apply = B.time_median(rounds, function() pool:apply(noop) end)
  return map, apply
end

-- The loop's speed where the tasks run (best of 5: the machine may be busy).
local function host_loops(pool)
  local best = 0
  for _ = 1, 5 do
    best = math.max(best, pool:apply(loop_speed))
  end
  return best
end

-- In a namespace of its own when it can: run again through broker_hosts.sh.
local function in_namespaces(args)
  if os.getenv("MPE_BENCH_BROKER") or os.getenv("MPENGINE_BENCH_NETNS") == "0" then return nil end
  if sh("id -u"):match("%d+") ~= "0" or not os.execute("ip netns list >/dev/null 2>&1") then
    return nil
  end
  local here = debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or "."
  local quoted = {}
  for i, a in ipairs(args) do quoted[i] = "'" .. a:gsub("'", "'\\''") .. "'" end
  print("(hosts as network namespaces: broker, driver, h1, h2)")
  local ok = os.execute(("sh %s/broker_hosts.sh %s %s"):format(here, self_exe(), table.concat(quoted, " ")))
  return ok and 0 or 1
end

function M.main(...)
  local rc = in_namespaces({...})
  if rc then return rc end
  loops_per_ms = loop_speed()
  local xs, items = {}, {}
  for i = 1, 200000 do xs[i] = i end
  for i = 1, 16 do items[i] = 50 end
  -- the local engine, for comparison
  local lmap, lapply, lcpu
  do
    local pool <close> = mp.Pool{processes = 2, broker = false}
    lmap, lapply = measure(pool, xs, 300)
    local walls = {}
    for r = 1, 3 do walls[r] = cpu16(pool, items) end
    lcpu = B.median(walls)
  end
  local env = Env.new()
  local ok, err = pcall(function()
    env:host("h1")
    local pool <close> = mp.Pool{broker = env.url}
    loops_per_ms = host_loops(pool)
    -- 1 host, then 2, in turn: each ratio compares two runs a second apart
    local ratios, one_par, two_par, twos = {}, {}, {}, {}
    for r = 1, 7 do
      local one
      one, one_par[r] = cpu16(pool, items)
      env:host("h2")
      -- h2 joins the run (its pool of the run, the job loaded) before the
      -- clock starts, as h1 did: a host that is there when a run starts pays
      -- that once, at its first batch, in either measure
      pool:map(function() mp.sleep(0.02) end, {1, 2, 3, 4, 5, 6}, 1)
      twos[r], two_par[r] = cpu16(pool, items)
      ratios[r] = one / twos[r]
      if r < 7 then env:stop_host("h2") end
    end
    mp.sleep(1.5) -- the hosts' counts are written about once a second
    local before = env:tasks_run()
    local map, apply = measure(pool, xs, 200)
    pool:close()
    pool:join()
    mp.sleep(1.5)
    local submitted = 3 + 3 * 200000 + 20 + 200 -- (measure's tasks)
    local twice = env:tasks_run() - before - submitted
    local rtt = env:redis_rtt()
    local py, why = B.python(PY)
    if not py then print("python: " .. why) py = {} end
    local where = env.ns and "hosts as network namespaces" or "Redis on loopback"
    B.report(("Pool on a broker (%s, 1 process each) on %d CPUs"):format(where, mp.cpu_count()), {
      {"16 x 50 ms CPU, 2 hosts vs 1: speedup", B.median(ratios), nil, "x", true,
       (">= 1.8x (%.2f-%.2f)"):format(math.min(table.unpack(ratios)), math.max(table.unpack(ratios))), 2},
      {"  tasks' time / wall, 2 hosts over 1", B.median(two_par) / B.median(one_par), nil, "x", true,
       "(the speedup without the drift)", 2},
      {"16 x 50 ms CPU on 2 hosts", B.median(twos), py.cpu16, "s", false, ("local Pool(2): %.3f s"):format(lcpu)},
      {"map 200,000 x*x, 2 hosts", map / 1e6, py.map and py.map / 1e6, "M/s", true,
       (">= 0.5 M/s; local: %.2f M/s"):format(lmap / 1e6)},
      {"apply round trip, median", apply * 1e6, py.apply and py.apply * 1e6, "us", false,
       ("local: %.0f us"):format(lapply * 1e6), rtt and rtt * 1e6},
    })
    print(("tasks run twice: %d (hosts' counts minus tasks submitted)"):format(math.max(twice, 0)))
  end)
  env:stop()
  if not ok then error(err, 0) end
end

return M
