-- hardening_spec.lua - faults and bad input: random worker kills during a
-- large map, signals to the run in each kind of wait, the parent killed,
-- memory limits, fork and descriptor exhaustion, descriptors in children,
-- and the errors scripts see.
local mp = require "mpengine"
local H = require "helpers"

local function shm_entries()
  local p = io.popen("ls -A /dev/shm 2>/dev/null")
  local s = p:read("a")
  p:close()
  return s
end

describe("faults", function()
  it("SIGKILL of random workers during a 100,000-task map: every task returns or fails as died", function()
    local pool = mp.Pool(2)
    local n = 100000
    local xs = {}
    for i = 1, n do xs[i] = i end
    local it = pool:imap(function(x) return x * 2 end, xs)
    local results, died, kills = 0, 0, 0
    local worker_pids = {}
    math.randomseed(7)
    while true do
      local ok, i, v = pcall(it)
      if ok then
        if i == nil then break end
        assert(v == 2 * i, "wrong result for task " .. i)
        results = results + 1
      else
        assert(tostring(i):match("^Pool: the worker running this task %(pid %d+%) was killed by signal 9"), i)
        died = died + 1
      end
      if (results + died) % 10000 == 5000 then
        local w = pool.workers[math.random(1, 2)]
        if w then
          worker_pids[#worker_pids + 1] = w.proc.pid
          w.proc:kill()
          kills = kills + 1
        end
      end
    end
    assert.are.equal(n, results + died)
    assert.is_true(kills >= 9)
    -- the pool is still usable, then ends with nothing left behind
    assert.are.same({2, 4}, pool:map(function(x) return 2 * x end, {1, 2}))
    for _, w in pairs(pool.workers) do worker_pids[#worker_pids + 1] = w.proc.pid end
    pool:close(); pool:join()
    -- no worker, killed or retired, is left as a zombie (or at all)
    local zombies = {}
    for _, z in ipairs(H.zombies_of(mp.getpid())) do zombies[z] = true end
    for _, pid in ipairs(worker_pids) do
      assert.is_nil(zombies[pid], "worker " .. pid .. " is a zombie")
      assert.is_false(H.alive(pid))
    end
  end)

  for _, sig in ipairs{"INT", "TERM"} do
    for _, scenario in ipairs{"map", "pipeline", "lock"} do
      it(("SIG%s during a %s wait: exits within a second, non-zero, leaves nothing"):format(sig, scenario), function()
        local shm = shm_entries()
        local pidfile = H.tmpname()
        local cli, run = H.spawn_cli("spec/fixtures/interrupt.lua " .. scenario .. " " .. pidfile)
        local pids = H.pids_from(pidfile)
        os.execute("kill -" .. sig .. " " .. cli)
        H.wait_until(function() return not H.alive(cli) end, 1)
        local out, rc = run.finish()
        assert.are.equal(sig == "INT" and 130 or 143, rc)
        assert.matches("interrupted by SIG" .. sig, out)
        for _, pid in ipairs(pids) do H.wait_until(function() return not H.alive(pid) end, 1) end
        assert.are.equal(shm, shm_entries())
        os.remove(pidfile)
      end)
    end
  end

  it("the parent SIGKILLed: every child exits within a second", function()
    local pidfile = H.tmpname()
    local cli, run = H.spawn_cli("spec/fixtures/orphans.lua " .. pidfile)
    local pids = H.pids_from(pidfile)
    assert.are.equal(3, #pids)
    os.execute("kill -KILL " .. cli)
    for _, pid in ipairs(pids) do H.wait_until(function() return not H.alive(pid) end, 1) end
    local _, rc = run.finish()
    assert.are.equal(137, rc)
    os.remove(pidfile)
  end)

  it("a worker over the pool's memory_limit fails its task with a clear error", function()
    local pool = mp.Pool{processes = 1, memory_limit = 64 * 1024 * 1024}
    local ok, err = pcall(pool.apply, pool, function()
      local t = {}
      for i = 1, 1e9 do t[i] = i end
      return #t
    end)
    assert.is_false(ok)
    assert.matches("Pool: the task ran out of memory %(the pool's memory_limit is 67108864 bytes a worker%)", err)
    assert.are.equal(3, pool:apply(function() return 3 end))
    pool:terminate()
    assert.has_error(function() mp.Pool{memory_limit = -1} end)
  end)

  it("descriptor exhaustion (RLIMIT_NOFILE): a clear error, no crash", function()
    local out, rc = H.sh("ulimit -n 24; " .. H.CLI .. [[ run spec/fixtures/nofile.lua]])
    assert.are.equal(0, rc)
    assert.matches("Pipe: Too many open files", out)
  end)

  local _, has_tools = H.sh("command -v setpriv && command -v prlimit")
  local nproc_test = has_tools == 0 and it or function(name)
    pending(name .. " [needs setpriv and prlimit (util-linux), not found here]")
  end
  nproc_test("fork failure (RLIMIT_NPROC, as an unprivileged user): a clear error, no crash", function()
    -- the unprivileged user runs copies in a folder of its own (the checkout
    -- may sit where it cannot look)
    local dir = H.tmpname()
    assert(os.execute(("mkdir -m 755 %s && cp %s spec/fixtures/nproc.lua %s/ && chmod 755 %s/mpengine")
      :format(dir, H.CLI, dir, dir)))
    local out, rc = H.sh(("cd %s && prlimit --nproc=3 setpriv --reuid=65534 --regid=65534 --clear-groups "
      .. "./mpengine run nproc.lua"):format(dir))
    os.execute("rm -rf " .. dir)
    assert.are.equal(0, rc)
    assert.matches("Process: cannot start: Resource temporarily unavailable", out)
    assert.matches("Pool: .*Resource temporarily unavailable", out)
  end)

  it("a child keeps only stdio and the pipe end it was given", function()
    local out, rc = H.run("spec/fixtures/child_fds.lua")
    assert.are.equal(0, rc)
    assert.matches("child fds: 5", out) -- 0, 1, 2, the end it was given and its lock page
  end)
end)

describe("load", function()
  it("memory stays flat over 300,000 imap_unordered tasks and 2,000,000 queue messages", function()
    local load = dofile("scripts/bench/load.lua")
    local silent = print
    print = function() end -- luacheck: ignore 121
    local ok, rows = pcall(load.tasks, 300000)
    print = silent -- luacheck: ignore 121
    assert(ok, rows) -- load.tasks asserts that every result came back
    assert.are.equal(10, #rows)
    assert.is_true(rows[2][3] > 0, "the parent's resident memory could not be read")
    -- AddressSanitizer keeps freed memory in quarantine on purpose: the
    -- figures mean something only without it
    local sanitized = os.getenv("ASAN_OPTIONS") ~= nil
    -- parent and worker memory at 20% and at the end, in kB
    assert.is_true(sanitized or rows[10][3] - rows[2][3] < 4096,
      ("parent grew %d kB"):format(rows[10][3] - rows[2][3]))
    print = function() end -- luacheck: ignore 121
    ok, rows = pcall(load.messages, 2000000)
    print = silent -- luacheck: ignore 121
    assert(ok, rows) -- load.messages asserts that every message came through
    assert.are.equal(10, #rows)
    assert.is_true(sanitized or rows[10][3] - rows[2][3] < 4096,
      ("parent grew %d kB"):format(rows[10][3] - rows[2][3]))
  end)
end)

describe("errors scripts see", function()
  it("a table given a shared object's metatable: tostring raises, collecting it frees nothing", function()
    -- in a separate process: before, collecting such a table crashed the process
    local code = [[local mp = require 'mpengine'
for _, o in ipairs{mp.Queue(), mp.JoinableQueue(), mp.SimpleQueue(), mp.Lock(), mp.RLock(),
                   mp.Value('i', 0), mp.Array('i', 2), mp.Event(), mp.Semaphore(), mp.Dict()} do
  local fake = setmetatable({}, getmetatable(o))
  assert(not pcall(tostring, fake))
  fake = nil
  collectgarbage() collectgarbage()
  assert(tostring(o):match('^%a'))
end
print('done')]]
    local path = H.tmpname()
    local f = assert(io.open(path, "w"))
    f:write(code)
    f:close()
    local out, rc = H.run(path)
    os.remove(path)
    assert.are.equal(0, rc, out)
    assert.matches("done", out)
  end)

  it("a handle whose metatable was taken away never passes for another class's", function()
    local ctors = {function() return mp.Value("i", 7) end, function() return mp.Event() end,
                   function() return mp.Semaphore(1) end, function() return mp.Queue() end}
    for _ = 1, 5 do
      local l = mp.Lock()
      l:acquire()
      l:release()
      local acq = l.acquire
      local v = mp.Value("i", 1)
      local get = getmetatable(v).__index
      assert.are.equal(1, v.value)
      debug.setmetatable(l, nil)
      debug.setmetatable(v, nil)
      l, v = nil, nil -- luacheck: ignore
      collectgarbage()
      collectgarbage()
      local objs = {} -- luacheck: ignore
      for i = 1, 200 do
        local o = ctors[i % #ctors + 1]()
        objs[i] = o -- kept: every object a fresh address
        if getmetatable(o).__name ~= "Value" then
          assert.is_false((pcall(acq, o)))
          assert.is_false((pcall(get, o, "value")))
        end
      end
    end
  end)

  it("Lock and Value methods check every call, also right after a handle was used", function()
    local l, r, v = mp.Lock(), mp.RLock(), mp.Value('i', 0, {lock = false})
    local acquire, release = l.acquire, l.release
    local mt = getmetatable(v)
    for _ = 1, 2 do -- the second round starts with the handles just used
      assert.is_true(l:acquire())
      v.value = v.value + 1
      assert.has_error(function() acquire(setmetatable({}, getmetatable(l))) end, nil)
      assert.has_error(function() acquire(io.stdout) end, nil)
      assert.has_error(function() release(v) end, nil)
      assert.has_error(function() mt.__index(setmetatable({}, mt), "value") end, nil)
      assert.has_error(function() mt.__newindex(io.stdout, "value", 1) end, nil)
      assert.has_error(function() v.valu = 1 end, "Value: cannot set field 'valu' (only value)")
      assert.has_error(function() v["value\0"] = 1 end)
      assert.is_nil(v.values)
      assert.is_nil(v[1])
      l:release()
      assert.is_true(acquire(r, nil)) -- another class's handle through the same function
      assert.are.same({true}, {acquire(r, 0)})
      release(r) release(r)
      assert.has_error(function() l:acquire(-1) end)
      assert.has_error(function() l:acquire("x") end)
    end
    assert.are.equal(2, v.value)
    -- a handle collected while it was the one used last: a new one at any address works
    for i = 1, 50 do
      do
        local x = mp.Lock()
        x:acquire() x:release()
        local w = mp.Value('i', i, {lock = false})
        w.value = w.value + 1
        assert.are.equal(i + 1, w.value)
      end
      collectgarbage()
      assert.has_error(function() acquire(setmetatable({}, getmetatable(l))) end, nil)
    end
  end)

  it("a runtime error in a worker: file:line, non-zero exit", function()
    local out, rc = H.run("spec/fixtures/errors.lua", "worker")
    assert.are.equal(1, rc)
    assert.matches("mpengine: spec/fixtures/errors.lua:6: task two broke", out)
    assert.matches("stack traceback:", out)
  end)

  it("an error in a callback: file:line, non-zero exit", function()
    local out, rc = H.run("spec/fixtures/errors.lua", "callback")
    assert.are.equal(1, rc)
    assert.matches("spec/fixtures/errors.lua:8: callback broke", out)
  end)

  it("an error in an initializer: file:line, non-zero exit, no endless respawn", function()
    local out, rc = H.run("spec/fixtures/errors.lua", "initializer")
    assert.are.equal(1, rc)
    assert.matches("the initializer failed in a worker", out)
    assert.matches("spec/fixtures/errors.lua:10: initializer broke", out)
  end)
end)

describe("misuse raises a clear error", function()
  local cases = {
    {"negative timeout: Queue:get", function() mp.Queue():get(-1) end, "timeout must be a number of seconds >= 0"},
    {"negative timeout: Lock:acquire", function() mp.Lock():acquire(-0.5) end, "timeout must be"},
    {"negative timeout: Event:wait", function() mp.Event():wait(-1) end, "timeout must be"},
    {"negative timeout: Semaphore:acquire", function() mp.Semaphore():acquire(-1) end, "timeout must be"},
    {"negative timeout: Barrier:wait", function() mp.Barrier(2):wait(-1) end, "timeout must be"},
    {"negative timeout: Connection:recv", function() mp.Pipe():recv(-1) end, "timeout must be"},
    {"negative timeout: Process:join", function() local p = mp.Process{target = print} p:start() p:join(-1) end,
     "timeout must be"},
    {"timeout of the wrong type", function() mp.Queue():get("soon") end, "number expected, got string"},
    {"negative size: Queue", function() mp.Queue(-1) end, "maxsize must be >= 0"},
    {"negative size: Array", function() mp.Array('i', -1) end, "size must be >= 0"},
    {"negative size: Semaphore", function() mp.Semaphore(-1) end, "value must be >= 0"},
    {"zero parties: Barrier", function() mp.Barrier(0) end, "parties must be >= 1"},
    {"zero processes: Pool", function() mp.Pool(0) end, "processes must be an integer >= 1"},
    {"bad typecode", function() mp.Value('z', 0) end, "bad typecode 'z'"},
    {"unknown option: Process", function() mp.Process{target = print, colour = 1} end, "unknown option 'colour'"},
    {"unknown option: Pool", function() mp.Pool{colour = 1} end, "unknown option 'colour'"},
    {"unknown option: Value", function() mp.Value('i', 0, {colour = 1}) end, "unknown option 'colour'"},
    {"unknown option: map", function()
       local p = mp.Pool(1)
       local _, e = pcall(p.map, p, print, {}, {colour = 1})
       p:terminate()
       error(e, 0)
     end, "unknown option 'colour'"},
    {"wrong self", function() mp.Queue().get(mp.Lock()) end, "Queue expected, got Lock"},
    {"wrong self: Lock", function() mp.Lock().acquire(mp.Queue()) end, "Lock expected, got Queue"},
    {"put(nil)", function() mp.Queue():put(nil) end, "cannot put nil"},
    {"send(nil)", function() mp.Pipe():send(nil) end, "cannot send nil"},
    {"use after close: Queue", function() local q = mp.Queue() q:close() q:put(1) end, "Queue is closed"},
    {"use after close: Connection", function() local a = mp.Pipe() a:close() a:send(1) end, "Connection is closed"},
    {"use after close: Pool", function() local p = mp.Pool(1) p:close() p:join() p:map(print, {}) end,
     "the pool is joined"},
    {"join before start", function() mp.Process{target = print}:join() end, "not started"},
    {"release of an unheld lock", function() mp.RLock():release() end, "does not hold"},
    {"task_done too often", function() mp.JoinableQueue():task_done() end, "task_done() called more times"},
    {"out of range", function() return mp.Array('i', 2)[3] end, "Array index 3 out of range (1..2)"},
    {"value out of range", function() mp.Value('B', 256) end, "256 is out of range for typecode 'B'"},
  }
  for _, c in ipairs(cases) do
    it(c[1], function()
      local ok, err = pcall(c[2])
      assert.is_false(ok)
      assert.is_truthy(tostring(err):find(c[3], 1, true), ("%q does not say %q"):format(tostring(err), c[3]))
    end)
  end
end)
