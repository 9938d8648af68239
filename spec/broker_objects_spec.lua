-- broker_objects_spec.lua - the objects on a broker (a Redis server the spec
-- starts): every method and its return shape, exact counts from many
-- processes, the Lock's lease and fence, a JoinableQueue's redelivery,
-- objects that travel, timeouts and SIGINT, keys that expire.
local mp = require "mpengine"
local H = require "helpers"
local R = require "redis_helper"

local srv, why = R.start()

-- `mpengine run` with the broker in MPENGINE_BROKER (read from a file: the
-- password is on no command line).
local function spawn_run(args)
  local envfile = H.tmpname()
  local f = assert(io.open(envfile, "w"))
  f:write(srv.url)
  f:close()
  local p = assert(io.popen("exec 2>/dev/null; MPENGINE_BROKER=$(cat " .. envfile .. ") " .. H.CLI .. " run " ..
    args .. " 2>&1 & echo $!; wait $!; echo \"__rc=$?\""))
  local pid = tonumber(p:read("l"))
  return pid, {finish = function()
    local out = p:read("a")
    p:close()
    os.remove(envfile)
    local body, rc = out:match("^(.*)__rc=(%d+)%s*$")
    return body, tonumber(rc)
  end}
end

local function run(n, target, ...)
  local ps = {}
  for i = 1, n do
    ps[i] = mp.Process{target = target, args = {i, ...}}
    ps[i]:start()
  end
  for i = 1, n do
    ps[i]:join()
    assert.are.equal(0, ps[i].exitcode)
  end
end

describe("objects on a broker", function()
  if not srv then
    it("need redis-server", function() pending("skipped: " .. why) end)
    return
  end
  teardown(function() srv:stop() end)
  local url = srv.url
  local B = {broker = url}

  it("Dict: every method, every key type, the local return shapes", function()
    local d = mp.Dict(B)
    assert.matches("^Dict on redis://127%.0%.0%.1:%d+", tostring(d))
    assert.is_nil(tostring(d):find(srv.pass, 1, true))
    assert.are.equal(0, #d)
    assert.is_nil(d.missing)
    assert.are.equal(7, d:get("missing", 7))
    d.a = 1
    assert.are.same({}, {d:set("b", "two")})
    d[2] = {x = {1, 2}}
    d[1.5] = 2.5
    d[true] = false
    d[3.0] = "three"
    assert.are.equal(1, d.a)
    assert.are.equal("two", d:get("b"))
    assert.are.same({x = {1, 2}}, d[2])
    assert.are.equal(2.5, d[1.5])
    assert.are.equal(false, d[true])
    assert.are.equal("three", d[3])
    assert.are.equal(6, #d)
    assert.are.equal(6, d:len())
    local items = d:items()
    assert.are.same({a = 1, b = "two", [2] = {x = {1, 2}}, [1.5] = 2.5, [true] = false, [3] = "three"}, items)
    assert.are.equal("integer", math.type(d:keys()[1] == 3 and 3 or 3))
    local seen = {}
    for k, v in pairs(d) do seen[k] = v end
    assert.are.same(items, seen)
    assert.are.equal("two", d:delete("b"))
    assert.is_nil(d:delete("b"))
    d.a = nil
    assert.is_nil(d.a)
    assert.is_function(d.keys)
    d:clear()
    assert.are.equal(0, #d)
    assert.has_error(function() d[{}] = 1 end, "Dict key must be a string, a number or a boolean, got table")
    assert.has_error(function() return d[0 / 0] end, "Dict key is NaN")
  end)

  it("Dict: incr keeps integers and floats apart; update stores fn(old)", function()
    local d = mp.Dict(B)
    assert.are.equal(1, d:incr("n"))
    assert.are.equal("integer", math.type(d:incr("n", 4)))
    assert.are.equal(5, d.n)
    assert.are.equal(5.5, d:incr("n", 0.5))
    assert.are.equal("float", math.type(d:incr("n", 1)))
    assert.are.equal(6.5, d.n)
    assert.are.equal(math.maxinteger, d:incr("big", math.maxinteger))
    d.s = "text"
    assert.has_error(function() d:incr("s") end, "Dict: incr: the value at key s is not a number")
    assert.are.equal(10, d:update("u", function(old) assert.is_nil(old); return 10 end))
    assert.are.same({10, 1}, d:update("u", function(old) return {old, 1} end))
    assert.is_nil(d:update("u", function() return nil end))
    assert.is_nil(d.u)
    assert.has_error(function() d:update("u", function() error("no") end) end)
    assert.is_nil(d.u)
  end)

  it("Dict: 4 processes x 300 incr and 4 x 50 update of one key are exact", function()
    local d = mp.Dict(B)
    run(4, function()
      for i = 1, 300 do d:incr("k" .. (i % 10)) end
      for _ = 1, 50 do d:update("u", function(old) return (old or 0) + 1 end) end
    end)
    local total = 0
    for i = 0, 9 do total = total + d["k" .. i] end
    assert.are.equal(1200, total)
    assert.are.equal(200, d.u)
  end)

  it("Value: add from 10 processes x 20 is exactly 200; so are increments under its lock", function()
    local v = mp.Value("i", 0, B)
    local w = mp.Value("i", 0, B)
    run(10, function()
      for _ = 1, 20 do
        v:add(1)
        local _ <close> = w:get_lock():guard()
        w.value = w.value + 1
      end
    end)
    assert.are.equal(200, v.value)
    assert.are.equal(200, w.value)
    assert.are.equal("i", v.typecode)
    assert.has_error(function() v.value = 2 ^ 40 end)
    local f = mp.Value("d", 1.5, B)
    assert.are.equal(2.0, f:add(0.5))
    assert.are.equal("float", math.type(f.value))
    local b = mp.Value("b", 120, B)
    assert.has_error(function() b:add(10) end, "Value: adding 10 goes out of range for typecode 'b'")
    assert.are.equal(120, b.value)
  end)

  it("Lock: the fence grows with every grant; a plain Lock refuses to wait on itself", function()
    local l = mp.Lock(B)
    assert.is_false(l:locked())
    assert.is_true(l:acquire())
    local f1 = l.fence
    assert.is_number(f1)
    assert.is_true(l:locked())
    assert.has_error(function() l:acquire() end,
      "Lock: already held by this process; waiting for it would never end (use an RLock)")
    assert.are.same({false, "timeout"}, {l:acquire(0.05)})
    l:release()
    assert.is_nil(l.fence)
    assert.has_error(function() l:release() end, "Lock: cannot release a lock this process does not hold")
    do
      local _ <close> = l:guard()
      assert.is_true(l.fence > f1)
    end
    assert.is_false(l:locked())
    local r = mp.RLock(B)
    assert.is_true(r:acquire())
    assert.is_true(r:acquire())
    r:release()
    assert.is_true(r:locked())
    r:release()
    assert.is_false(r:locked())
  end)

  it("Lock: 10 processes x 20 increments under it are exactly 200", function()
    local l, d = mp.Lock(B), mp.Dict(B)
    d.n = 0
    run(10, function()
      for _ = 1, 20 do
        l:acquire()
        d.n = d.n + 1
        l:release()
      end
    end)
    assert.are.equal(200, d.n)
  end)

  it("Lock: a paused holder's lease lapses: another gets it with a larger fence; the old release raises", function()
    local l = mp.Lock{broker = url, lease = 0.5}
    local fences, go = mp.Queue{broker = false}, mp.Event{broker = false}
    local holder = mp.Process{target = function()
      l:acquire()
      fences:put(l.fence)
      go:wait()
      local ok, err = pcall(l.release, l)
      fences:put(ok and "released" or err)
    end}
    holder:start()
    local first = fences:get()
    os.execute("kill -STOP " .. holder.pid) -- paused: its renewing thread too
    assert.is_true(l:acquire(30))
    assert.is_true(l.fence > first)
    os.execute("kill -CONT " .. holder.pid)
    go:set()
    assert.matches("Lock: lease lost", fences:get())
    holder:join()
    assert.is_true(l:locked())
    l:release()
  end)

  it("Lock: a holder keeps its lease while its process lives, even with no broker call", function()
    local l = mp.Lock{broker = url, lease = 0.3}
    local d = mp.Dict(B)
    local got, slept, done = mp.Queue{broker = false}, mp.Event{broker = false}, mp.Event{broker = false}
    local holder = mp.Process{target = function()
      l:acquire()
      d.fence = l.fence
      mp.sleep(1.5) -- five leases, renewed by the process's thread
      slept:set()
      done:wait()
      l:release()
    end}
    holder:start()
    slept:wait(30)
    assert.is_number(d.fence)
    local p = mp.Process{target = function() got:put((l:acquire(0))) end}
    p:start()
    p:join()
    assert.is_false(got:get(30))
    done:set()
    holder:join()
    assert.are.equal(0, holder.exitcode)
  end)

  it("Queue: the return shapes, timeouts, close", function()
    local q = mp.Queue(2, B)
    assert.are.equal(2, q:maxsize())
    assert.is_true(q:empty())
    assert.is_true(q:put(1))
    assert.is_true(q:put({a = "b"}))
    assert.is_true(q:full())
    assert.are.same({nil, "full"}, {q:put_nowait(3)})
    assert.are.same({nil, "timeout"}, {q:put(3, 0.05)})
    assert.are.equal(2, q:qsize())
    assert.are.equal(1, q:get())
    assert.are.same({a = "b"}, q:get_nowait())
    assert.are.same({nil, "empty"}, {q:get_nowait()})
    assert.are.same({nil, "timeout"}, {q:get(0.05)})
    assert.has_error(function() q:put(nil) end)
    q:put(5)
    q:close()
    assert.is_true(q:is_closed())
    assert.has_error(function() q:put(1) end, "Queue is closed")
    assert.are.equal(1, q:qsize())
    assert.are.equal(5, q:get())
    assert.are.same({nil, "closed"}, {q:get()})
    assert.are.same({nil, "closed"}, {q:get()})
    local s = mp.SimpleQueue(B)
    s:put("x")
    assert.are.equal("x", s:get())
    assert.is_nil(s.qsize)
  end)

  it("Queue: 2 producers x 3000, 3 consumers: every item exactly once; close wakes them all", function()
    local q, out = mp.Queue(B), mp.Queue(B)
    local consumers = {}
    for i = 1, 3 do
      consumers[i] = mp.Process{target = function()
        local n, sum = 0, 0
        for v in q:iter() do n, sum = n + 1, sum + v end
        out:put({n, sum})
      end}
      consumers[i]:start()
    end
    run(2, function(i) for j = 1, 3000 do q:put(i * 100000 + j) end end)
    q:close()
    local n, sum = 0, 0
    for _ = 1, 3 do
      local r = out:get(30)
      n, sum = n + r[1], sum + r[2]
    end
    for i = 1, 3 do consumers[i]:join() end
    local want = 0
    for i = 1, 2 do for j = 1, 3000 do want = want + i * 100000 + j end end
    assert.are.equal(6000, n)
    assert.are.equal(want, sum)
  end)

  it("JoinableQueue: join waits for task_done; a killed consumer's taken item comes back", function()
    local q = mp.JoinableQueue{broker = url, lease = 0.5}
    assert.are.same({true}, {q:join(0)})
    q:put("a")
    q:put("b")
    assert.are.same({false, "timeout"}, {q:join(0.05)})
    local took = mp.Queue{broker = false}
    local p = mp.Process{target = function()
      took:put(q:get())
      mp.sleep(60)
    end}
    p:start()
    assert.are.equal("a", took:get())
    p:kill()
    p:join()
    local got = {}
    for _ = 1, 2 do
      got[#got + 1] = q:get(10)
      q:task_done()
    end
    table.sort(got)
    assert.are.same({"a", "b"}, got)
    assert.is_true(q:join(5))
    assert.has_error(function() q:task_done() end, "task_done() called more times than items were put")
  end)

  it("Event and Semaphore: the return shapes; a set wakes every waiter", function()
    local e = mp.Event(B)
    assert.is_false(e:is_set())
    assert.are.same({false, "timeout"}, {e:wait(0.05)})
    local woke = mp.Queue(B)
    local ps = {}
    for i = 1, 3 do
      ps[i] = mp.Process{target = function() woke:put(e:wait(30)) end}
      ps[i]:start()
    end
    H.wait_until(function() return e:_waiting() == 3 end, 30)
    e:set()
    for _ = 1, 3 do assert.is_true(woke:get(30)) end
    for i = 1, 3 do ps[i]:join() end
    assert.is_true(e:is_set())
    e:clear()
    assert.is_false(e:is_set())
    local s = mp.BoundedSemaphore(2, B)
    assert.is_true(s:acquire())
    assert.is_true(s:acquire())
    assert.are.same({false, "timeout"}, {s:acquire(0.05)})
    assert.are.equal(0, s:get_value())
    s:release()
    s:release()
    assert.has_error(function() s:release() end, "BoundedSemaphore: released too many times")
  end)

  it("objects travel through queues, pipes and Process args as the same objects", function()
    local d, q = mp.Dict(B), mp.Queue(B)
    local lq = mp.Queue{broker = false}
    local a, b = mp.Pipe()
    local p = mp.Process{target = function(dd)
      local qq = lq:get()
      local ee = b:recv()
      dd.child = "yes"
      qq:put(ee)
    end, args = {d}}
    p:start()
    lq:put(q)
    a:send(mp.Event(B))
    local e = q:get(30)
    p:join()
    assert.are.equal("yes", d.child)
    assert.matches("^Event on ", tostring(e))
    local back = mp.decode(mp.encode(d))
    assert.is_true(back == d)
    q:put({d, q})
    local t = q:get()
    assert.are.equal("yes", t[1].child)
    assert.is_true(t[2] == q)
    -- a local engine object cannot go where another host may read it
    assert.has_error(function() q:put(mp.Lock{broker = false}) end)
  end)

  it("named objects: two constructors with one name are one object", function()
    local d1 = mp.Dict{broker = url, name = "spec-shared"}
    d1.x = 42
    local d2 = mp.Dict{broker = url, name = "spec-shared"}
    assert.are.equal(42, d2.x)
    assert.has_error(function() mp.Queue{broker = url, name = "spec-shared"} end)
  end)

  it("every key has a TTL", function()
    local d, q, l = mp.Dict(B), mp.JoinableQueue(B), mp.Lock(B)
    d.a = 1
    q:put(1)
    q:get()
    l:acquire()
    l:release()
    local keys = srv:cli("--scan")
    local n = 0
    for key in keys:gmatch('"?([^\n"]+)"?\n') do
      n = n + 1
      local pttl = tonumber(srv:cli("PTTL", key):match("%-?%d+"))
      assert.is_true(pttl ~= -1, key .. " has no TTL") -- -2: gone meanwhile; >= 0: expires
    end
    assert.is_true(n > 5)
  end)

  it("a run's broker: constructors make broker objects; {broker = false} local; SIGINT ends each wait", function()
    for _, scenario in ipairs {"queue", "joinable", "lock", "event"} do
      local pidfile = H.tmpname()
      local cli, r = spawn_run("spec/fixtures/broker_wait.lua " .. scenario .. " " .. pidfile)
      H.wait_until(function() return (H.read(pidfile) or ""):match("done") end, 30)
      os.execute("kill -INT " .. cli)
      H.wait_until(function() return not H.alive(cli) end, 5)
      local out, rc = r.finish()
      assert.are.equal(130, rc)
      assert.matches("broker dict\tlocal dict", out)
      assert.matches("interrupted by SIGINT", out)
      assert.is_nil(out:find(srv.pass, 1, true))
      os.remove(pidfile)
    end
  end)

  it("Array: elements, ranges, add from 4 processes exact, slice and store", function()
    local a = mp.Array("i", 3, B)
    assert.are.equal(3, #a)
    assert.are.same({0, 0, 0}, a:totable())
    a[2] = 5
    assert.are.equal(5, a[2])
    assert.has_error(function() return a[4] end, "Array index 4 out of range (1..3)")
    assert.has_error(function() a[1] = 2 ^ 40 end)
    run(4, function() for _ = 1, 50 do a:add(1, 1) end end)
    assert.are.equal(200, a[1])
    a:store({7, 8}, 2)
    assert.are.same({200, 7, 8}, a:slice())
    assert.are.same({7}, a:slice(2, 2))
    assert.has_error(function() a:slice(2, 4) end, "Array: elements 2..4 out of range (1..3)")
    local f = mp.Array("d", {1.5, 2}, B)
    assert.are.same({1.5, 2.0}, f:totable())
    assert.are.equal("float", math.type(f[2]))
    local c = mp.Array("c", "hey", B)
    c[1] = "j"
    assert.are.same({"j", "e", "y"}, c:totable())
    assert.are.equal("i", a.typecode)
    local b = mp.Array("b", {120}, B)
    assert.has_error(function() b:add(1, 10) end, "Array: adding 10 goes out of range for typecode 'b'")
  end)

  it("Condition: wait needs the lock, times out holding it, notify and notify_all wake waiters", function()
    local c, d = mp.Condition(B), mp.Dict(B)
    assert.has_error(function() c:wait(0) end, "Condition: cannot wait without holding its lock")
    assert.has_error(function() c:notify() end, "Condition: cannot notify without holding its lock")
    assert.is_true(c:acquire())
    assert.are.same({false, "timeout"}, {c:wait(0.05)})
    assert.is_true(c:get_lock():locked())
    c:release()
    local out = mp.Queue(B)
    local ps = {}
    for i = 1, 3 do
      ps[i] = mp.Process{target = function()
        local _ <close> = c:guard()
        out:put(c:wait_for(function() return d.ready end, 30))
      end}
      ps[i]:start()
    end
    H.wait_until(function() return c:_waiting() == 3 end, 30)
    c:acquire()
    d.ready = "go"
    c:notify()
    c:release()
    assert.are.equal("go", out:get(30))
    c:acquire()
    c:notify_all()
    c:release()
    assert.are.equal("go", out:get(30))
    assert.are.equal("go", out:get(30))
    for i = 1, 3 do ps[i]:join() end
    local l = mp.Lock(B)
    local c2 = mp.Condition(l, B)
    assert.is_true(c2:get_lock() == l)
  end)

  it("Barrier: rounds with an action, indices, timeout breaks it, reset", function()
    local d = mp.Dict(B)
    local b = mp.Barrier(3, function() d:incr("actions") end, nil, B)
    assert.are.equal(3, b.parties)
    local out = mp.Queue(B)
    run(3, function()
      for _ = 1, 2 do out:put(b:wait(30)) end
    end)
    local got = {}
    for _ = 1, 6 do got[#got + 1] = out:get(1) end
    table.sort(got)
    assert.are.same({0, 0, 1, 1, 2, 2}, got)
    assert.are.equal(2, d.actions)
    local b2 = mp.Barrier(2, nil, nil, B)
    assert.are.same({nil, "timeout"}, {b2:wait(0.05)})
    assert.is_true(b2.broken)
    assert.are.same({nil, "closed", "broken"}, {b2:wait()})
    b2:reset()
    assert.is_false(b2.broken)
    assert.are.equal(0, b2.n_waiting)
  end)
end)
