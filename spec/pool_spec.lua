-- pool_spec.lua - mp.Pool: every call of the API, errors, dead and slow
-- workers, recycling, initializers, ending, interruption, progress, demos.
local mp = require "mpengine"
local H = require "helpers"

local function range(n)
  local t = {}
  for i = 1, n do t[i] = i end
  return t
end

local function distinct(list)
  local seen, n = {}, 0
  for _, v in ipairs(list) do if not seen[v] then seen[v], n = true, n + 1 end end
  return n
end

describe("Pool", function()
  local pool
  before_each(function() pool = mp.Pool(2) end)
  after_each(function() pool:terminate() end)

  it("apply runs an inline closure with its upvalues; globals and modules are there", function()
    local k = 100
    assert.are.equal(103, pool:apply(function(a, b) return a + b + k end, {1, 2}))
    assert.are.equal('[1,2]', pool:apply(function() return require("cjson").encode({1, 2}) end))
    assert.are.equal("function", pool:apply(function() return type(string.format) end))
  end)

  it("apply_async: get, wait, ready, successful", function()
    local r = pool:apply_async(function(x) mp.sleep(0.05) return x * 2 end, {21})
    assert.is_false(r:wait(0))
    assert.has_error(function() r:successful() end, "AsyncResult: not ready yet")
    assert.is_true(r:wait(30))
    assert.is_true(r:ready())
    assert.is_true(r:successful())
    assert.are.equal(42, r:get())
    assert.are.equal(42, r:get(0))
    local slow = pool:apply_async(function() mp.sleep(0.5) return 1 end)
    assert.has_error(function() slow:get(0.05) end)
    local _, err = pcall(slow.get, slow, 0.05)
    assert.matches("timeout", err)
    assert.are.equal(1, slow:get(30))
  end)

  it("runs callbacks in the parent, in completion order", function()
    local order = {}
    local me = mp.getpid()
    local a = pool:apply_async(function() mp.sleep(0.2) return "slow" end, nil,
      {callback = function(v) order[#order + 1] = v assert(mp.getpid() == me) end})
    local b = pool:apply_async(function() return "fast" end, nil,
      {callback = function(v) order[#order + 1] = v end})
    local c = pool:apply_async(function() error("bad") end, nil,
      {error_callback = function() order[#order + 1] = "error" end})
    a:wait(); b:wait(); c:wait()
    assert.are.same({"fast", "error", "slow"}, order)
    local got
    pool:map_async(function(x) return x + 1 end, {1, 2}, {callback = function(v) got = v end}):wait()
    assert.are.same({2, 3}, got)
  end)

  it("map keeps order, with default and explicit chunks, and empty lists", function()
    local xs = range(1000)
    local sq = pool:map(function(x) return x * x end, xs)
    for i = 1, 1000 do assert.are.equal(i * i, sq[i]) end
    assert.are.same({2, 4, 6}, pool:map(function(x) return 2 * x end, {1, 2, 3}, 1))
    assert.are.same({2, 4, 6}, pool:map(function(x) return 2 * x end, {1, 2, 3}, 100))
    assert.are.same({}, pool:map(function(x) return x end, {}))
    assert.are.same({3, 7}, pool:starmap(function(a, b) return a + b end, {{1, 2}, {3, 4}}))
    assert.are.same({3, 7}, pool:starmap_async(function(a, b) return a + b end, {{1, 2}, {3, 4}}):get())
    assert.are.same({1, 4}, pool:map_async(function(x) return x * x end, {1, 2}):get())
  end)

  it("long lists of numbers (packed in shared memory) give exact results of every kind", function()
    local n = 10000
    local ints, floats, mixed = {}, {}, {}
    for i = 1, n do
      ints[i], floats[i] = i, i + 0.5
      mixed[i] = i <= n // 2 and i or i + 0.25
    end
    local sq = pool:map(function(x) return x * x end, ints)
    for i = 1, n do assert(sq[i] == i * i and math.type(sq[i]) == "integer", i) end
    local half = pool:map(function(x) return x / 2 end, ints) -- int in, float out
    for i = 1, n do assert(half[i] == i / 2 and math.type(half[i]) == "float", i) end
    local fl = pool:map(function(x) return x * 2 end, floats)
    for i = 1, n do assert(fl[i] == 2 * i + 1 and math.type(fl[i]) == "float", i) end
    local mx = pool:map(function(x) return x end, mixed)
    for i = 1, n do assert(mx[i] == mixed[i] and math.type(mx[i]) == math.type(mixed[i]), i) end
    local str = pool:map(function(x) return tostring(x) end, ints)
    for i = 1, n do assert(str[i] == tostring(i), i) end
    local some = pool:map(function(x) if x % 1000 == 0 then return "k" end return x end, ints)
    for i = 1, n do assert(some[i] == (i % 1000 == 0 and "k" or i), i) end
    local ok, err = pcall(pool.map, pool, function(x) if x == 7777 then error("seven sevens") end return x end, ints)
    assert.is_false(ok)
    assert.matches("seven sevens", err)
    ok, err = pcall(pool.map, pool, function(x)
      if x == 6000 then os.execute("kill -9 " .. mp.getpid()) mp.sleep(10) end
      return x
    end, ints)
    assert.is_false(ok)
    assert.matches("killed by signal 9", err)
    assert.are.same(ints, pool:map(function(x) return x end, ints))
  end)

  it("imap streams in order; imap_unordered as tasks finish", function()
    local seen = {}
    for i, v in pool:imap(function(x) return x * 10 end, range(50)) do
      assert.are.equal(#seen + 1, i)
      seen[#seen + 1] = v
    end
    assert.are.equal(50, #seen)
    assert.are.equal(500, seen[50])
    local sum = 0
    for v in pool:imap_unordered(function(x) mp.sleep((x % 3) * 0.01) return x end, range(30), 1) do
      sum = sum + v
    end
    assert.are.equal(465, sum)
  end)

  it("imap reads an endless generator lazily, with bounded memory", function()
    local produced = 0
    local function naturals() produced = produced + 1 return produced end
    local got = 0
    for _, v in pool:imap(function(x) return x end, naturals) do
      got = got + 1
      assert.are.equal(got, v)
      if got == 200 then break end
    end
    assert.are.equal(200, got)
    assert.is_true(produced < 400, "read " .. produced .. " items ahead")
    -- the pool is fine afterwards
    assert.are.same({1}, pool:map(function(x) return x end, {1}))
  end)

  it("raises a task's error where it is read, with the worker's traceback; the pool goes on", function()
    local ok, err = pcall(pool.apply, pool, function() local t = nil; return t.field end)
    assert.is_false(ok)
    assert.matches("spec/pool_spec.lua:%d+: attempt to index a nil value", err)
    assert.matches("stack traceback:", err)
    ok, err = pcall(pool.map, pool, function(x) if x == 3 then error("three") end return x end, range(5), 1)
    assert.is_false(ok)
    assert.matches("spec/pool_spec.lua:%d+: three", err)
    local r = {}
    for _, v in pool:imap(function(x) return x end, {1, 2}) do r[#r + 1] = v end
    assert.are.same({1, 2}, r)
    ok, err = pcall(function()
      for _ in pool:imap(function(x) if x == 2 then error("in imap") end return x end, {1, 2, 3}, 1) do end
    end)
    assert.is_false(ok)
    assert.matches("in imap", err)
    assert.are.equal(5, pool:apply(function() return 5 end))
  end)

  it("refuses a function or argument that cannot travel, naming the path", function()
    local co = coroutine.create(print)
    assert.has_error(function() pool:apply(function() return co end) end,
      "cannot send value at value[upvalue co]: thread")
    local ok, err = pcall(pool.apply, pool, function(x) return x end, {{cb = co}})
    assert.is_false(ok)
    assert.matches("cannot send value", err)
    ok, err = pcall(pool.apply, pool, function() return coroutine.create(print) end)
    assert.is_false(ok)
    assert.matches("cannot send value at the result of task 1: thread", err)
  end)

  it("a worker killed by a signal fails only its task, is replaced, nothing hangs", function()
    local ok, err = pcall(pool.map, pool, function(x)
      if x == 5 then os.execute("kill -9 " .. mp.getpid()) mp.sleep(10) end
      return x
    end, range(10), 1)
    assert.is_false(ok)
    assert.matches("Pool: the worker running this task %(pid %d+%) was killed by signal 9 %(SIGKILL%)", err)
    local results = {}
    for i = 1, 10 do
      results[i] = pool:apply_async(function(x)
        if x == 4 then os.exit(7) end
        return x
      end, {i})
    end
    for i = 1, 10 do
      if i == 4 then
        local ok4, e4 = pcall(results[i].get, results[i], 30)
        assert.is_false(ok4)
        assert.matches("exited with code 7", e4)
      else
        assert.are.equal(i, results[i]:get(30))
      end
    end
    assert.are.same(range(20), pool:map(function(x) return x end, range(20)))
    -- in a chunk of many, the task that kills its worker is found and fails
    -- alone; the others of its chunk (rerun one at a time) all return
    local it = pool:imap(function(x)
      if x == 37 then os.execute("kill -9 " .. mp.getpid()) mp.sleep(10) end
      return -x
    end, range(100), 25)
    local got, failed = 0, {}
    while true do
      local step_ok, i, v = pcall(it)
      if step_ok and i == nil then break end
      if step_ok then
        assert.are.equal(-i, v)
        got = got + 1
      else
        failed[#failed + 1] = i
      end
    end
    assert.are.equal(99, got)
    assert.are.equal(1, #failed)
    assert.matches("killed by signal 9", failed[1])
  end)

  it("maxtasksperchild recycles workers; initializer runs once in each", function()
    -- (_G: under busted a spec's own functions see busted's environment,
    -- while functions sent to workers see the worker's globals)
    local p = mp.Pool{processes = 2, maxtasksperchild = 2, initializer = function(tag)
      _G.INIT_TAG = tag .. mp.getpid()
      _G.INIT_COUNT = (_G.INIT_COUNT or 0) + 1
    end, initargs = {"w"}}
    local r = p:map(function() return {mp.getpid(), INIT_TAG, INIT_COUNT} end, range(12), 1)
    local pids = {}
    for _, v in ipairs(r) do
      pids[#pids + 1] = v[1]
      assert.are.equal("w" .. v[1], v[2])
      assert.are.equal(1, v[3])
    end
    assert.is_true(distinct(pids) >= 6, "workers were not recycled")
    p:close(); p:join()
  end)

  it("a task over the pool's timeout fails with a timeout error; its worker is replaced", function()
    local p = mp.Pool{processes = 2, timeout = 0.2}
    local ok, err = pcall(p.apply, p, function() mp.sleep(30) end)
    assert.is_false(ok)
    assert.matches("Pool: task timed out after 0.2 s", err)
    assert.are.same({1, 2, 3}, p:map(function(x) return x end, {1, 2, 3}))
    p:terminate()
  end)

  it("a failing initializer breaks the pool with its error instead of looping", function()
    local p = mp.Pool{processes = 2, initializer = function() error("no database") end}
    local ok, err = pcall(p.map, p, function(x) return x end, {1, 2})
    assert.is_false(ok)
    assert.matches("the initializer failed in a worker", err)
    assert.matches("no database", err)
    p:terminate()
  end)

  it("close, join and terminate", function()
    local p = mp.Pool(2)
    local r = p:apply_async(function() mp.sleep(0.05) return "done" end)
    assert.has_error(function() p:join() end, "Pool: call close() or terminate() before join()")
    p:close()
    assert.has_error(function() p:apply(print, {}) end, "Pool: cannot apply_async: the pool is closed")
    p:join()
    assert.are.equal("done", r:get())
    for _, w in pairs(p.workers) do assert.is_nil(w) end
    local t = mp.Pool(2)
    local pids = t:map(function() return mp.getpid() end, {1, 2}, 1)
    local slow = t:apply_async(function() mp.sleep(60) end)
    t:terminate()
    for _, pid in ipairs(pids) do assert.is_false(H.alive(pid)) end
    assert.has_error(function() slow:get(1) end)
    assert.has_error(function() t:map(print, {1}) end)
  end)

  it("works as a to-be-closed variable", function()
    local pids
    do
      local p <close> = mp.Pool(2)
      pids = p:map(function() return mp.getpid() end, {1, 2, 3}, 1)
    end
    for _, pid in ipairs(pids) do H.wait_until(function() return not H.alive(pid) end, 5) end
  end)

  it("as a to-be-closed variable, an error in its scope kills the workers", function()
    local pids
    local ok, err = pcall(function()
      local p <close> = mp.Pool(2)
      pids = p:map(function() return mp.getpid() end, {1, 2, 3}, 1)
      p:apply_async(function() mp.sleep(60) end)
      error("scope failed")
    end)
    assert.is_false(ok)
    assert.matches("scope failed", err)
    for _, pid in ipairs(pids) do assert.is_false(H.alive(pid)) end
  end)

  it("defaults to MPENGINE_WORKERS, and raises on bad options", function()
    local out = H.sh("MPENGINE_WORKERS=3 " .. H.CLI .. " run spec/fixtures/pool_workers.lua")
    assert.matches("workers=3", out)
    assert.has_error(function() mp.Pool{bogus = 1} end)
    assert.has_error(function() mp.Pool(0) end, "Pool: processes must be an integer >= 1")
    assert.has_error(function() pool:map(print, {1}, 0) end)
    assert.has_error(function() pool:map(print, {1}, {bogus = true}) end)
    assert.has_error(function() pool:map(print, 5) end)
    assert.has_error(function() pool:apply(5) end)
  end)
end)

describe("Pool under mpengine run", function()
  it("SIGINT during map stops the workers, prints a short message, exits non-zero, leaves no child", function()
    local pidfile = H.tmpname()
    local f = assert(io.popen(H.CLI .. " run spec/fixtures/pool_sigint.lua " .. pidfile ..
                              " 2>&1 & echo $!; wait $!; echo rc=$?"))
    local cli = tonumber(f:read("l"))
    H.wait_until(function() return (H.read(pidfile) or ""):match("done") end)
    local pids = {}
    for pid in H.read(pidfile):gmatch("(%d+)") do pids[#pids + 1] = pid end
    mp.sleep(0.1) -- let the second map reach its workers
    os.execute("kill -INT " .. cli)
    local out = f:read("a")
    f:close()
    assert.matches("interrupted by SIGINT", out)
    assert.are.equal("130", out:match("rc=(%d+)"))
    for _, pid in ipairs(pids) do H.wait_until(function() return not H.alive(pid) end, 2) end
    os.remove(pidfile)
  end)

  it("--progress draws a bar with count, rate and ETA on a terminal", function()
    local out, rc = H.sh("script -qfc '" .. H.CLI .. " run --progress spec/fixtures/pool_progress.lua' /dev/null")
    assert.are.equal(0, rc)
    assert.matches("200/200 100%%", out)
    assert.matches("/s", out)
    assert.matches("results\t200", out)
    -- and nothing when stderr is not a terminal
    out = H.sh(H.CLI .. " run --progress spec/fixtures/pool_progress.lua 2>&1 | cat")
    assert.not_matches("%[#", out)
  end)
end)

describe("pool demos", function()
  it("seed 000: Pool(4) runs 5 tasks in two rounds", function()
    local demo = require "pool_rounds"
    local _, reports = demo.run(0.2, true)
    table.sort(reports, function(a, b) return a.started < b.started end)
    -- the first four overlap: each started before any of them ended
    local first_end = math.huge
    for i = 1, 4 do first_end = math.min(first_end, reports[i].ended) end
    for i = 1, 4 do assert.is_true(reports[i].started < first_end) end
    -- the fifth waited for a free worker
    assert.is_true(reports[5].started >= first_end)
  end)

  it("seed 003: apply_async does not block, apply does", function()
    local demo = require "apply_vs_async"
    local events = demo.run("apply_async", 0.01)
    assert.are.same({"submitted", "submitted", "submitted", "submitted"}, {table.unpack(events, 1, 4)})
    events = demo.run("apply", 0.01)
    assert.are.same({"got hello 0", "got hello 1", "got hello 2", "got hello 3"}, {table.unpack(events, 1, 4)})
  end)

  it("word count: merged counts over a folder, written as JSON", function()
    local dir = H.tmpname()
    os.execute("mkdir -p " .. dir .. "/sub")
    local function write(path, text) local f = io.open(dir .. path, "w") f:write(text) f:close() end
    write("/a.txt", "the cat and the hat")
    write("/sub/b.txt", "The end. the END")
    local wc = require "wordcount"
    local counts, nfiles = wc.run(dir, 2)
    assert.are.equal(2, nfiles)
    assert.are.same({the = 4, cat = 1, ["and"] = 1, hat = 1, ["end"] = 2}, counts)
    local json = dir .. "/out.json"
    local _, rc = H.sh(H.CLI .. " run scripts/wordcount.lua " .. dir .. " " .. json)
    assert.are.equal(0, rc)
    local decoded = require("cjson").decode(H.read(json))
    assert.are.equal(4, decoded.the)
    os.execute("rm -rf " .. dir)
  end)
end)
