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

  it("modules and their functions in the arguments travel by name", function()
    -- (the arguments' own table is never a module; what it holds may be)
    assert.is_true(pool:apply(function(s, f, t) return s == string and f == string.format and t.m == math end,
      {string, string.format, {m = math}}))
    assert.are.same({true, true}, pool:starmap(function(s, f) return s == table and f == table.concat end,
      {{table, table.concat}, {table, table.concat}}))
  end)

  it("the same function applied again: a closure travels with its upvalues as they are now", function()
    local k = 1
    local add = function(x) return x + k end
    local plain = function(x) return x * 2 end -- no upvalue of its own: remembered by identity
    for i = 1, 5 do
      k = i * 10
      assert.are.equal(i + k, pool:apply(add, {i}))
      assert.are.equal(i * 2, pool:apply(plain, {i}))
      assert.are.equal(("%d"):format(i), pool:apply(function(x) return tostring(x) end, {i}))
    end
    -- many distinct closures: the registry starts over and plain still runs
    for i = 1, 600 do assert.are.equal(i, pool:apply(function() return i end)) end
    assert.are.equal(14, pool:apply(plain, {7}))
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

  it("ready() alone, polled, sees the result come in", function()
    local r = pool:apply_async(function() return 7 end)
    local polls = 0
    while not r:ready() and polls < 30000 do -- bounded: fails rather than hangs
      polls = polls + 1
      mp.sleep(0.001)
    end
    assert.is_true(r:ready())
    assert.are.equal(7, r:get(0))
  end)

  it("runs callbacks in the parent, in completion order", function()
    local order = {}
    local me = mp.getpid()
    local release = mp.Event() -- the slow task ends only after the others did
    local a = pool:apply_async(function() assert(release:wait(60)) return "slow" end, nil,
      {callback = function(v) order[#order + 1] = v assert(mp.getpid() == me) end})
    local b = pool:apply_async(function() return "fast" end, nil,
      {callback = function(v) order[#order + 1] = v end})
    local c = pool:apply_async(function() error("bad") end, nil,
      {error_callback = function() order[#order + 1] = "error" end})
    b:wait(); c:wait()
    assert.are.same({"fast", "error"}, order)
    release:set()
    a:wait()
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
    assert.matches("\nPool: the task of apply failed; worker traceback:\n\t[^\n]*spec/pool_spec.lua:%d+", err)
    ok, err = pcall(pool.map, pool, function(x) if x == 3 then error("three") end return x end, range(5), 1)
    assert.is_false(ok)
    assert.matches("^spec/pool_spec.lua:%d+: three\nPool: task 3 of map failed; worker traceback:\n", err)
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
    local line = debug.getinfo(1, "l").currentline + 1
    local ok0, err0 = pcall(function() pool:apply(function() return co end) end)
    assert.is_false(ok0)
    assert.are.equal(("spec/pool_spec.lua:%d: cannot send value at value[upvalue co]: thread"):format(line), err0)
    local ok, err = pcall(pool.apply, pool, function(x) return x end, {{cb = co}})
    assert.is_false(ok)
    assert.matches("cannot send value at args%[1%]%.cb: thread", err)
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
    assert.has_error(function() p:apply(print, {}) end, "Pool: cannot apply: the pool is closed")
    assert.has_error(function() p:apply_async(print, {}) end, "Pool: cannot apply_async: the pool is closed")
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

  it("a pool used inside its own task raises at that call in the worker; the pool is unharmed", function()
    local ok, err = pcall(pool.map, pool, function(x)
      local y = pool:apply(function(y) return y end, {x})
      return y
    end, {1, 2, 3, 4})
    assert.is_false(ok)
    local line = debug.getinfo(1, "l").currentline - 4
    assert.matches(("^spec/pool_spec.lua:%d: Pool: cannot be used from one of its own workers\nPool: task 1 of map")
      :format(line), err)
    -- in a tail call, the task's own line is gone: no position rather than a wrong one
    ok, err = pcall(pool.map, pool, function(x) return pool:apply(print, {x}) end, {1, 2})
    assert.is_false(ok)
    assert.matches("^Pool: cannot be used from one of its own workers\n", err)
    -- a nested apply_async is refused too, and nothing reaches the next map
    local got = pool:map(function()
      local sent, why = pcall(pool.apply_async, pool, function() return "nested" end)
      return sent and "sent" or why
    end, {1, 2}, 1)
    for i = 1, 2 do assert.matches("Pool: cannot be used from one of its own workers", got[i]) end
    assert.are.same({10, 20, 30}, pool:map(function(x) return 10 * x end, {1, 2, 3}))
    -- another process than the one that made it
    local q = mp.Queue()
    local p = mp.Process{target = function() q:put(select(2, pcall(pool.apply, pool, print))) end}
    p:start()
    assert.matches("Pool: can only be used from the process that made it", q:get(30))
    p:join()
    assert.are.equal(7, pool:apply(function() return 7 end))
  end)

  it("a running imap keeps its function while hundreds of other functions come and go", function()
    local i = 0
    local out = {}
    for _, v in pool:imap(function(x) return x + 1 end, function() i = i + 1 if i <= 40 then return i end end) do
      out[#out + 1] = v
      if #out == 1 then
        local rs = {}
        for k = 1, 600 do rs[k] = pool:apply_async(function() return k end) end
        for k = 1, 600 do assert.are.equal(k, rs[k]:get()) end
      end
    end
    assert.are.equal(40, #out)
    for k = 1, 40 do assert.are.equal(k + 1, out[k]) end
  end)

  it("map reads a list through its metatable, as map_async and imap do", function()
    local proxy = setmetatable({}, {__index = function(_, k) return k * 10 end, __len = function() return 3 end})
    local f = function(x) return x end
    assert.are.same({10, 20, 30}, pool:map(f, proxy))
    assert.are.same({10, 20, 30}, pool:map_async(f, proxy):get())
  end)

  it("an item that cannot be sent fails its own task; the pool keeps serving", function()
    local co = coroutine.create(print)
    local ok, err = pcall(pool.map, pool, function(x) return x end, {co})
    assert.is_false(ok)
    assert.matches("cannot send value at list%[1%]: thread\nPool: task 1 of map failed", err)
    assert.are.same({1, 2}, pool:map(function(x) return x end, {1, 2}))
    ok, err = pcall(pool.map, pool, function(x) return x end, {1, 2, co, 4, 5})
    assert.is_false(ok)
    assert.matches("cannot send value at list%[3%]: thread", err)
    local steps = {}
    for _ = 1, 5 do steps[#steps + 1] = select(2, pcall(pool.imap(pool, function(x) return x end, {1, co, 3}))) end
    local r = pool:map_async(function(x) return x end, {co, 2})
    assert.is_false(pcall(r.get, r, 30))
    assert.are.same({3, 4}, pool:map(function(x) return x + 2 end, {1, 2}))
    -- with one worker and one item, close and join return
    local p = mp.Pool(1)
    assert.is_false(pcall(p.map, p, function(x) return x end, {co}))
    assert.are.equal(1, p:apply(function() return 1 end))
    p:close()
    p:join()
  end)

  it("imap gives the results of the items read before its iterator raised, then raises its error", function()
    for _, kind in ipairs{"imap", "imap_unordered"} do
      local k = -1
      local function gen()
        k = k + 1
        if k == 3 then error("the generator broke") end
        return k
      end
      local got = {}
      local ok, err = pcall(function()
        for a, b in pool[kind](pool, function(x) return x * x end, gen, 1) do got[#got + 1] = b or a end
      end)
      assert.is_false(ok)
      assert.matches("spec/pool_spec.lua:%d+: the generator broke", err)
      table.sort(got)
      assert.are.same({0, 1, 4}, got)
    end
    assert.are.same({1}, pool:map(function(x) return x end, {1}))
  end)

  it("imap's timeout option raises 'Pool: timeout' at the step that waits too long; the pool goes on", function()
    local release = mp.Event()
    local it = pool:imap(function(x) if x == 2 then assert(release:wait(60)) end return x end, {1, 2, 3}, 1,
      {timeout = 1})
    assert.are.same({1, 1}, {it()})
    local ok, err = pcall(it)
    assert.is_false(ok)
    assert.matches("^spec/pool_spec.lua:%d+: Pool: timeout$", err)
    release:set()
    assert.are.same({2, 2}, {it()})
    assert.are.same({3, 3}, {it()})
    assert.is_nil(it())
    release:clear()
    local seen = {}
    ok, err = pcall(function()
      for v in pool:imap_unordered(function(x) if x == 1 then assert(release:wait(60)) end return x end,
        {1, 2}, 1, {timeout = 1}) do seen[#seen + 1] = v end
    end)
    assert.is_false(ok)
    assert.matches("Pool: timeout", err)
    assert.are.same({2}, seen)
    release:set()
    assert.are.same({1, 2}, pool:map(function(x) return x end, {1, 2}))
  end)

  it("map and starmap read an iterator function to its end", function()
    local function upto(n, f)
      local i = 0
      return function() i = i + 1 if i <= n then return f(i) end end
    end
    local id = function(x) return x end
    assert.are.same({2, 4, 6, 8, 10}, pool:map(function(x) return 2 * x end, upto(5, id)))
    assert.are.same({2, 4, 6}, pool:map_async(function(x) return 2 * x end, upto(3, id)):get())
    local pair = function(i) return {i, i} end
    assert.are.same({2, 4, 6}, pool:starmap(function(a, b) return a + b end, upto(3, pair)))
    assert.are.same({2, 4}, pool:starmap_async(function(a, b) return a + b end, upto(2, pair)):get())
    assert.are.same({}, pool:map(id, upto(0, id)))
    local big = pool:map(function(x) return x + 1 end, upto(5000, id)) -- packed numbers too
    assert.are.equal(5000, #big)
    assert.are.equal(5001, big[5000])
  end)

  it("a task's non-string error value comes back beside the traceback", function()
    local ok, err = pcall(pool.apply, pool, function() error(123) end)
    assert.is_false(ok)
    assert.are.equal(123, err.value)
    assert.are.equal(1, err.task)
    assert.matches("^123\nPool: the task of apply failed; worker traceback:\n", tostring(err))
    assert.matches("\ncaller traceback:\n", tostring(err))
    ok, err = pcall(pool.apply, pool, function() error({code = 5, why = "no disk"}) end)
    assert.is_false(ok)
    assert.are.same({code = 5, why = "no disk"}, err.value)
    assert.matches("^%(error object is a table value%)", tostring(err))
    ok, err = pcall(pool.apply, pool, function()
      error(setmetatable({}, {__tostring = function() return "a custom error" end}))
    end)
    assert.is_false(ok)
    assert.matches("^a custom error\n", tostring(err))
    ok, err = pcall(pool.map, pool, function(x) if x == 3 then error(false) end return x end, range(4), 1)
    assert.is_false(ok)
    assert.are.equal(false, err.value)
    assert.are.equal(3, err.task)
    assert.matches("^false\nPool: task 3 of map failed", tostring(err))
    local seen
    pool:apply_async(function() error(42) end, nil, {error_callback = function(e) seen = e end}):wait()
    assert.are.equal(42, seen.value)
    -- a value that cannot travel: its text still does
    ok, err = pcall(pool.apply, pool, function() error({co = coroutine.create(print)}) end)
    assert.is_false(ok)
    assert.matches("^%(error object is a table value%)\nPool: the task of apply failed", err)
  end)

  it("misuse raises at the caller's line", function()
    local function blames_caller(f, msg)
      local ok, err = pcall(f)
      assert.is_false(ok)
      local line = debug.getinfo(f, "S").linedefined
      assert.are.equal(("spec/pool_spec.lua:%d: %s"):format(line, msg), err)
    end
    blames_caller(function() pool:apply(5, {}) end, "Pool: function expected, got number")
    blames_caller(function() pool:map("x", {1}) end, "Pool: function expected, got string")
    blames_caller(function() pool:map(print, 5) end, "Pool:map: a list or an iterator function expected, got number")
    blames_caller(function() pool:imap(print, {1}, 0) end, "Pool:imap: chunksize must be an integer >= 1")
    blames_caller(function() pool:apply_async(print, 5) end, "Pool:apply_async: args must be a table")
    blames_caller(function() pool:join() end, "Pool: call close() or terminate() before join()")
    local r = pool:apply_async(function() return 1 end)
    blames_caller(function() r:get(-1) end, "AsyncResult:get: timeout must be a number of seconds >= 0")
    r:get()
  end)

  it("options are read in every argument shape; unknown ones raise", function()
    local sq = function(x) return x * x end
    local sq2 = function(x) return x * x end
    for _, kind in ipairs{"map", "map_async", "starmap", "starmap_async"} do
      local list = kind:match("^star") and {{1}, {2}} or {1, 2}
      -- chunksize, options: nil then options, options alone, a number then options
      for _, shape in ipairs{{nil, true}, {true}, {1, true}, {2, true}} do
        local got
        local opts = {callback = function(v) got = v end}
        local a, b = shape[1], shape[2]
        if a == true then a = opts else b = opts end
        local r = pool[kind](pool, sq, list, a, b)
        if kind:match("async") then r:wait() end
        assert.are.same({1, 4}, got, kind)
        opts.bogus = 1
        local ok, err = pcall(pool[kind], pool, sq2, list, a, b)
        assert.is_false(ok)
        assert.matches("Pool:" .. kind .. ": unknown option 'bogus' %(expected callback, error_callback, progress%)",
          err)
      end
      local r = pool[kind](pool, sq, list, nil, nil)
      if kind:match("async") then r = r:get() end
      assert.are.same({1, 4}, r)
      assert.is_false(pcall(pool[kind], pool, sq, list, nil, {callback = 5}))
      assert.is_false(pcall(pool[kind], pool, sq, list, {}, {}))
      assert.is_false(pcall(pool[kind], pool, sq, list, "2"))
    end
    for _, kind in ipairs{"imap", "imap_unordered"} do
      for _, shape in ipairs{{nil, true}, {true}, {1, true}} do
        local opts = {timeout = 30, progress = false}
        local a, b = shape[1], shape[2]
        if a == true then a = opts else b = opts end
        local n = 0
        for _ in pool[kind](pool, sq, {1, 2, 3}, a, b) do n = n + 1 end
        assert.are.equal(3, n)
        opts.bogus = 1
        local ok, err = pcall(pool[kind], pool, sq, {1}, a, b)
        assert.is_false(ok)
        assert.matches("Pool:" .. kind .. ": unknown option 'bogus' %(expected progress, timeout%)", err)
      end
      assert.is_false(pcall(pool[kind], pool, sq, {1}, nil, {timeout = -1}))
      assert.is_false(pcall(pool[kind], pool, sq, {1}, nil, {callback = print}))
    end
    local got
    pool:apply_async(sq, {3}, {callback = function(v) got = v end}):wait()
    assert.are.equal(9, got)
    pool:apply_async(sq, nil, nil):wait()
    local ok, err = pcall(pool.apply_async, pool, sq, {3}, {callback = print, bogus = 1})
    assert.is_false(ok)
    assert.matches("Pool:apply_async: unknown option 'bogus' %(expected callback, error_callback%)", err)
    assert.is_false(pcall(pool.apply, pool, sq, {3}, {callback = print}))
    assert.are.equal(16, pool:apply(sq, {4}, nil))
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
    assert.matches("mpengine: interrupted by SIGINT\n", out)
    assert.not_matches("mpengine%.pool", out)
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
