-- sync_spec.lua - locks, semaphores, events, conditions, barriers and shared
-- values across processes, with timeouts, killed holders and misuse.
local mp = require "mpengine"
local H = require "helpers"

-- Starts a child that takes obj (via take(obj)), reports, and sleeps until
-- killed; returns the Process once the child holds it.
local function holder(take)
  local ready = mp.Queue()
  local p = mp.Process{target = function() take() ready:put(true) mp.sleep(120) end}
  p:start()
  assert(ready:get(30))
  return p
end

local function within(t0, at_least)
  local dt = mp.time() - t0
  assert.is_true(dt >= at_least - 0.001, ("returned after %.3f s, before %.3f s"):format(dt, at_least))
end

describe("Lock", function()
  it("excludes across processes: the seed-002 counter is exactly 200", function()
    local counter = require("counter")
    for _ = 1, 3 do assert.are.equal(200, counter.count(true)) end
  end)

  it("acquire, release, locked, guard, timeouts", function()
    local l = mp.Lock()
    assert.is_false(l:locked())
    assert.is_true(l:acquire())
    assert.is_true(l:locked())
    local p = mp.Process{target = function() os.exit(l:acquire(0.05) and 1 or 0) end}
    p:start(); p:join()
    assert.are.equal(0, p.exitcode) -- another process timed out
    l:release()
    assert.is_false(l:locked())
    do
      local _ <close> = l:guard()
      assert.is_true(l:locked())
    end
    assert.is_false(l:locked())
    local h = holder(function() l:acquire() end)
    local t0 = mp.time()
    assert.are.same({false, "timeout"}, {l:acquire(0.1)})
    within(t0, 0.1)
    h:kill(); h:join()
  end)

  it("recovers when its holder is SIGKILLed: the next acquire succeeds and is told", function()
    for _, make in ipairs{mp.Lock, mp.RLock} do
      local l = make()
      local h = holder(function() l:acquire() end)
      assert.is_true(l:locked())
      h:kill(); h:join()
      assert.are.same({true, "owner died"}, {l:acquire(10)})
      l:release()
      assert.are.same({true}, {l:acquire(0)})
      l:release()
    end
  end)

  it("a Condition's lock recovers too", function()
    local c = mp.Condition()
    local h = holder(function() c:acquire() end)
    h:kill(); h:join()
    assert.are.same({true, "owner died"}, {c:acquire(10)})
    c:release()
  end)

  it("raises on misuse", function()
    local l = mp.Lock()
    assert.has_error(function() l:release() end, "Lock: cannot release a lock this process does not hold")
    l:acquire()
    assert.has_error(function() l:acquire() end,
      "Lock: already held by this process; waiting for it would never end (use an RLock)")
    assert.are.same({false, "timeout"}, {l:acquire(0)})
    assert.has_error(function() l:acquire(-1) end)
    assert.has_error(function() l.acquire(mp.Event()) end)
    l:release()
    -- a process cannot release a lock another one holds
    l:acquire()
    local p = mp.Process{target = function() l:release() end}
    p:start(); p:join()
    assert.are.equal(1, p.exitcode)
    assert.is_true(l:locked())
    l:release()
  end)
end)

describe("RLock", function()
  it("is re-entrant in the same process and exclusive across processes", function()
    local r = mp.RLock()
    assert.is_true(r:acquire()); assert.is_true(r:acquire())
    local p = mp.Process{target = function() os.exit(r:acquire(0.05) and 1 or 0) end}
    p:start(); p:join()
    assert.are.equal(0, p.exitcode)
    r:release(); r:release()
    assert.has_error(function() r:release() end, "RLock: cannot release a lock this process does not hold")
    assert.is_false(r:locked())
  end)
end)

describe("Semaphore", function()
  it("counts permits across processes, with timeouts", function()
    local s = mp.Semaphore(2)
    assert.are.equal(2, s:get_value())
    assert.is_true(s:acquire()); assert.is_true(s:acquire())
    local t0 = mp.time()
    assert.are.same({false, "timeout"}, {s:acquire(0.1)})
    within(t0, 0.1)
    local p = mp.Process{target = function() mp.sleep(0.05) s:release() end}
    p:start()
    assert.is_true(s:acquire(30))
    p:join()
    s:release(); s:release(); s:release() -- a plain Semaphore may go above its start
    assert.are.equal(3, s:get_value())
    do local _ <close> = s:guard() assert.are.equal(2, s:get_value()) end
    assert.are.equal(3, s:get_value())
  end)

  it("gets back a permit whose holder was SIGKILLed", function()
    local s = mp.Semaphore(1)
    local h = holder(function() s:acquire() end)
    assert.are.same({false, "timeout"}, {s:acquire(0.05)})
    h:kill(); h:join()
    assert.is_true(s:acquire(10))
  end)

  it("gets back a killed holder's permit after any number of holders (more than its 32 slots)", function()
    local s = mp.Semaphore(1)
    for _ = 1, 40 do
      local p = mp.Process{target = function() assert(s:acquire(30)) s:release() end}
      p:start(); p:join()
      assert.are.equal(0, p.exitcode)
    end
    local h = holder(function() s:acquire() end)
    h:kill(); h:join()
    assert.are.same({true}, {s:acquire(10)})
  end)

  it("BoundedSemaphore raises when released above its value", function()
    local b = mp.BoundedSemaphore(1)
    assert.has_error(function() b:release() end, "BoundedSemaphore: released too many times")
    b:acquire(); b:release()
    assert.has_error(function() mp.Semaphore(-1) end)
    assert.has_error(function() mp.BoundedSemaphore(0) end)
  end)
end)

describe("Event", function()
  it("set, clear, is_set, wait across processes", function()
    local e = mp.Event()
    assert.is_false(e:is_set())
    local t0 = mp.time()
    assert.is_false(e:wait(0.1))
    within(t0, 0.1)
    local p = mp.Process{target = function() mp.sleep(0.05) e:set() end}
    p:start()
    assert.is_true(e:wait(30))
    assert.is_true(e:is_set())
    assert.is_true(e:wait(0))
    e:clear()
    assert.is_false(e:is_set())
    p:join()
  end)

  it("set() then clear() at once: every waiter already waiting returns true", function()
    local e, out = mp.Event(), mp.Queue()
    for round = 1, 3 do
      local procs = {}
      for i = 1, 5 do
        procs[i] = mp.Process{target = function() out:put((e:wait(60))) end}
        procs[i]:start()
      end
      H.wait_until(function() return e:_waiting() == 5 end, 60) -- all five are inside wait
      e:set(); e:clear()
      for _ = 1, 5 do assert.is_true(out:get(60), "round " .. round) end
      for _, p in ipairs(procs) do p:join(); assert.are.equal(0, p.exitcode) end
      assert.is_false(e:is_set())
    end
  end)
end)

describe("Condition", function()
  it("wait, notify, wait_for across processes; the lock is held again after", function()
    local c = mp.Condition()
    local items = mp.Value('i', 0)
    local p = mp.Process{target = function()
      for _ = 1, 5 do
        mp.sleep(0.01)
        local _ <close> = c:guard()
        items:add(1)
        c:notify()
      end
    end}
    c:acquire()
    p:start()
    assert.is_true(c:wait_for(function() return items.value == 5 end, 30))
    assert.is_true(c:get_lock():locked())
    local t0 = mp.time()
    assert.is_false(c:wait(0.1))
    within(t0, 0.1)
    c:release()
    p:join()
    assert.are.equal(0, p.exitcode)
  end)

  it("works over a given Lock and wakes every waiter with notify_all", function()
    local l = mp.Lock()
    local c = mp.Condition(l)
    local go, woke = mp.Value('i', 0), mp.Value('i', 0)
    local procs = {}
    for i = 1, 3 do
      procs[i] = mp.Process{target = function()
        local _ <close> = c:guard()
        c:wait_for(function() return go.value == 1 end)
        woke:add(1)
      end}
      procs[i]:start()
    end
    -- every waiter has read its notify point under the lock: notify_all reaches all three
    H.wait_until(function() return c:_waiting() == 3 end, 60)
    do
      local _ <close> = c:guard()
      go.value = 1
      c:notify_all()
    end
    for _, p in ipairs(procs) do p:join(); assert.are.equal(0, p.exitcode) end
    assert.are.equal(3, woke.value)
  end)

  it("raises when used without its lock", function()
    local c = mp.Condition()
    assert.has_error(function() c:wait(0.01) end, "Condition: cannot wait without holding its lock")
    assert.has_error(function() c:notify() end, "Condition: cannot notify without holding its lock")
    assert.has_error(function() c:notify_all() end, "Condition: cannot notify without holding its lock")
    assert.has_error(function() mp.Condition(mp.Event()) end)
  end)
end)

describe("Barrier", function()
  it("lets parties through together, gives indexes, runs the action once per round", function()
    local rounds = mp.Value('i', 0)
    local b = mp.Barrier(3, function() rounds:add(1) end)
    assert.are.equal(3, b.parties)
    local seen = mp.Queue()
    local procs = {}
    for i = 1, 3 do
      procs[i] = mp.Process{target = function()
        for r = 1, 4 do
          local idx = assert(b:wait(30))
          seen:put({r, idx})
          assert(rounds.value >= r)
        end
      end}
      procs[i]:start()
    end
    for _, p in ipairs(procs) do p:join(); assert.are.equal(0, p.exitcode) end
    assert.are.equal(4, rounds.value)
    local idx = {}
    for _ = 1, 12 do
      local s = seen:get()
      idx[s[1]] = (idx[s[1]] or 0) + (1 << s[2])
    end
    for r = 1, 4 do assert.are.equal(7, idx[r]) end -- indexes 0, 1, 2 each round
  end)

  it("breaks on timeout, abort and reset", function()
    local b = mp.Barrier(2)
    local t0 = mp.time()
    assert.are.same({nil, "timeout"}, {b:wait(0.1)})
    within(t0, 0.1)
    assert.is_true(b.broken)
    assert.are.same({nil, "closed", "broken"}, {b:wait(1)})
    b:reset()
    assert.is_false(b.broken)
    assert.are.equal(0, b.n_waiting)
    b:abort()
    assert.are.same({nil, "closed", "broken"}, {b:wait(1)})
    assert.has_error(function() mp.Barrier(0) end)
  end)

  it("a party killed inside the action breaks the round; the others are told its pid", function()
    local inside, out = mp.Queue(), mp.Queue()
    local b = mp.Barrier(3, function() inside:put(mp.getpid()) mp.sleep(120) end)
    local procs = {}
    for i = 1, 2 do
      procs[i] = mp.Process{target = function() out:put({b:wait(60)}) end}
      procs[i]:start()
    end
    H.wait_until(function() return b.n_waiting == 2 end, 60)
    local last = mp.Process{target = function() b:wait(60) end}
    last:start()
    assert.are.equal(last.pid, inside:get(60)) -- the third arrival is in the action
    last:kill(); last:join()
    local told = ("broken: process %d died in the barrier"):format(last.pid)
    for _ = 1, 2 do assert.are.same({nil, "closed", told}, out:get(60)) end
    for _, p in ipairs(procs) do p:join(); assert.are.equal(0, p.exitcode) end
    assert.is_true(b.broken)
    assert.are.same({nil, "closed", told}, {b:wait(1)})
    b:reset()
    assert.is_false(b.broken)
  end)

  it("a waiter killed while the others gather breaks the round", function()
    local b = mp.Barrier(3)
    local w = mp.Process{target = function() b:wait(60) end}
    w:start()
    H.wait_until(function() return b.n_waiting == 1 end, 60)
    w:kill(); w:join()
    assert.are.same({nil, "closed", ("broken: process %d died in the barrier"):format(w.pid)}, {b:wait(60)})
  end)
end)

describe("Value and Array", function()
  it("reads and writes from any process, add is atomic", function()
    local v = mp.Value('q', 5)
    assert.are.equal(5, v.value)
    assert.are.equal('q', v.typecode)
    local procs = {}
    for i = 1, 2 do
      procs[i] = mp.Process{target = function() for _ = 1, 10000 do v:add(1) end end}
      procs[i]:start()
    end
    for _, p in ipairs(procs) do p:join() end
    assert.are.equal(20005, v.value)
    v.value = -3
    assert.are.equal(-3, v.value)
    local single = mp.Value('f', 0.1) -- a C float: rounded to single precision
    assert.are.equal(string.unpack("f", string.pack("f", 0.1)), single.value)
    assert.are.equal(1.5, single:add(1.4)) -- 1.4 + float(0.1) rounded to single = 1.5
    local f = mp.Value('d', 0.5)
    assert.are.equal(1.0, f:add(0.5))
    assert.are.equal("float", math.type(f.value))
    assert.are.equal("integer", math.type(v.value))
  end)

  it("every typecode keeps its range", function()
    local ranges = {b = {-128, 127}, B = {0, 255}, h = {-32768, 32767}, H = {0, 65535},
                    i = {-(1 << 31), (1 << 31) - 1}, I = {0, (1 << 32) - 1},
                    l = {math.mininteger, math.maxinteger}, q = {math.mininteger, math.maxinteger},
                    L = {0, math.maxinteger}, Q = {0, math.maxinteger}}
    for tc, r in pairs(ranges) do
      local v = mp.Value(tc, r[1])
      assert.are.equal(r[1], v.value)
      v.value = r[2]
      assert.are.equal(r[2], v.value)
      if r[2] < math.maxinteger then
        assert.has_error(function() v.value = r[2] + 1 end,
          ("Value: %d is out of range for typecode '%s'"):format(r[2] + 1, tc))
        assert.has_error(function() v:add(1) end)
        assert.are.equal(r[2], v.value)
      end
      if r[1] > math.mininteger then
        assert.has_error(function() v.value = r[1] - 1 end)
      end
    end
  end)

  it("Array: 1-based, #, totable, from a size or a table", function()
    local a = mp.Array('i', 4)
    assert.are.equal(4, #a)
    assert.are.same({0, 0, 0, 0}, a:totable())
    a[1] = 10; a[4] = 40
    assert.are.equal(10, a[1]); assert.are.equal(40, a[4])
    local b = mp.Array('d', {1.5, 2.5})
    assert.are.same({1.5, 2.5}, b:totable())
    local p = mp.Process{target = function() b[2] = 9.0 a:add(1, 5) end}
    p:start(); p:join()
    assert.are.equal(9.0, b[2])
    assert.are.equal(15, a[1])
  end)

  it("get_lock guards compound updates; lock = false has none", function()
    local v = mp.Value('i', 0)
    local l = v:get_lock()
    assert.are.equal(l, v:get_lock())
    assert.is_true(l:acquire()); assert.is_true(l:acquire()) -- an RLock
    l:release(); l:release()
    local own = mp.Lock()
    local w = mp.Value('i', 0, {lock = own})
    w:get_lock():acquire()
    assert.is_true(own:locked())
    w:get_lock():release()
    local bare = mp.Value('i', 0, {lock = false})
    assert.has_error(function() bare:get_lock() end, "this Value was made with {lock = false}: it has no lock")
    local bare_array = mp.Array('i', 2, {lock = false})
    assert.has_error(function() bare_array:get_lock() end, "this Array was made with {lock = false}: it has no lock")
  end)

  it("raises on misuse", function()
    assert.has_error(function() mp.Value('x', 1) end, "bad typecode 'x' (expected one of b B h H i I l L q Q f d c)")
    assert.has_error(function() mp.Value('ii', 1) end)
    assert.has_error(function() mp.Value('i', 1.5) end, "Value: typecode 'i' holds integers, got 1.5")
    assert.has_error(function() mp.Value('i', "x") end)
    assert.has_error(function() mp.Value('i', 0, {bogus = 1}) end, "unknown option 'bogus' (expected lock)")
    local a = mp.Array('b', 3)
    assert.has_error(function() return a[0] end, "Array index 0 out of range (1..3)")
    assert.has_error(function() return a[4] end, "Array index 4 out of range (1..3)")
    assert.has_error(function() a[4] = 1 end)
    assert.has_error(function() a[1] = 200 end, "Array: 200 is out of range for typecode 'b'")
    assert.has_error(function() mp.Array('i', -1) end)
    local v = mp.Value('i', 0)
    assert.has_error(function() v.other = 1 end)
  end)

  it("v.value and a lock's methods check what they are called on, and what they are given", function()
    local v, a, l, r = mp.Value('i', 7), mp.Array('i', 2), mp.Lock(), mp.RLock()
    -- the metamethods, taken out and called on the wrong object
    local vmt, amt = getmetatable(v), getmetatable(a)
    assert.are.equal(7, vmt.__index(v, "value"))
    assert.has_error(function() return vmt.__index(l, "value") end)
    assert.has_error(function() return vmt.__index(io.stdout, "value") end)
    assert.has_error(function() vmt.__newindex(l, "value", 1) end)
    assert.are.equal(0, vmt.__index(a, "value")) -- an Array is a Value too: its first element
    amt.__newindex(v, 1, 8) -- and a Value an Array of one
    assert.are.equal(8, amt.__index(v, 1))
    assert.has_error(function() amt.__newindex(v, 2, 1) end, "Array index 2 out of range (1..1)")
    -- a Lock's method on an RLock, on something else, on a dropped handle
    assert.are.same({true}, {l.acquire(r)})
    assert.is_true(r:locked())
    r:release()
    assert.has_error(function() l.acquire(v) end)
    assert.has_error(function() l.release(io.stdout) end)
    assert.has_error(function() r.locked(nil) end)
    -- arguments after the handle are still read where they are
    assert.is_true(l:acquire(nil))
    assert.are.same({false, "timeout"}, {l:acquire(0)})
    l:release()
    -- what a store accepts: integers, integral floats and numeric strings for
    -- integer typecodes, with the same errors as before
    v.value = 3.0
    assert.are.equal(3, v.value)
    assert.is_true(math.type(v.value) == "integer")
    v.value = "5"
    assert.are.equal(5, v.value)
    assert.has_error(function() v.value = 1.5 end, "Value: typecode 'i' holds integers, got 1.5")
    assert.has_error(function() v.value = 2 ^ 31 end)
    assert.has_error(function() v.value = 1 << 40 end, "Value: 1099511627776 is out of range for typecode 'i'")
    assert.has_error(function() v.value = {} end, "Value: number expected, got table")
    assert.are.equal(5, v.value)
    local d, c = mp.Value('d', 0), mp.Value('c', "a")
    d.value = 2
    assert.are.equal(2.0, d.value)
    assert.is_true(math.type(d.value) == "float")
    assert.has_error(function() c.value = 98 end)
    c.value = "b"
    assert.are.equal("b", c.value)
  end)
end)

describe("every primitive is an engine object", function()
  it("travels through a Queue and a Pipe and is the same object there", function()
    local l, e, v, a = mp.Lock(), mp.Event(), mp.Value('i', 1), mp.Array('i', 2)
    local s, c, b = mp.Semaphore(0), mp.Condition(), mp.Barrier(2)
    local q = mp.Queue()
    local p = mp.Process{target = function()
      local t = q:get(30)
      t.v.value = 42
      t.a[2] = 7
      t.e:set()
      t.s:release()
      assert(t.l:acquire(5))
      t.l:release()
      assert(t.b:wait(10))
    end}
    p:start()
    q:put({l = l, e = e, v = v, a = a, s = s, c = c, b = b})
    assert.is_true(e:wait(30))
    assert.is_true(s:acquire(30))
    assert.is_truthy(b:wait(30))
    p:join()
    assert.are.equal(0, p.exitcode)
    assert.are.equal(42, v.value)
    assert.are.equal(7, a[2])
    local r, w = mp.Pipe(false)
    local p2 = mp.Process{target = function() local t = r:recv(30) t.v:add(8) t.l:acquire() end}
    p2:start()
    w:send({v = v, l = l})
    p2:join()
    assert.are.equal(50, v.value)
    assert.are.same({true, "owner died"}, {l:acquire(10)}) -- it ended holding the lock
    l:release()
  end)
end)

describe("sync demos", function()
  it("tickets (seed 004): exactly 3 buyers succeed and the file ends at 0", function()
    local tickets = require "tickets"
    for _ = 1, 3 do
      local path = H.tmpname()
      local sold, left = tickets.sale(path, 10, true)
      assert.are.equal(3, sold)
      assert.are.equal(0, left)
      os.remove(path)
    end
  end)

  it("counter without the lock loses an update when two processes interleave", function()
    -- the demo's unlocked read-modify-write, the interleaving made certain
    -- by a Barrier: both read, then both write
    local v = mp.Value('i', 0, {lock = false})
    local both_read = mp.Barrier(2)
    local procs = {}
    for i = 1, 2 do
      procs[i] = mp.Process{target = function()
        local x = v.value
        assert(both_read:wait(60))
        v.value = x + 1
      end}
      procs[i]:start()
    end
    for _, p in ipairs(procs) do p:join(); assert.are.equal(0, p.exitcode) end
    assert.are.equal(1, v.value) -- two increments, one of them lost
  end)

  it("traffic light: every car passes on green", function()
    local demo = require "traffic_light"
    local seen = demo.run(5, 0.05)
    assert.are.equal(5, #seen)
    for _, s in ipairs(seen) do assert.is_true(s.green) end
  end)

  it("barrier phases: the parallel result equals the one-process result", function()
    local demo = require "barrier_phases"
    local init = {}
    for i = 1, 200 do init[i] = (i % 7 == 0) and 50.0 or 0.0 end
    local par, ran = demo.parallel(init, 20, 3)
    assert.are.equal(20, ran)
    assert.are.same(demo.sequential(init, 20), par)
  end)

  it("the demo scripts exit 0 under mpengine run", function()
    for _, s in ipairs{"counter.lua 2", "tickets.lua", "barrier_phases.lua 100 5 2"} do
      local _, rc = H.sh(H.CLI .. " run scripts/" .. s .. " >/dev/null")
      assert.are.equal(0, rc, s)
    end
  end)
end)

describe("Condition made by a killed child", function()
  it("keeps the lock it made for itself", function()
    local out, rc = H.sh(H.CLI .. " run spec/fixtures/cond_killed_creator.lua 2>&1")
    assert.are.equal(0, rc, out)
    assert.are.equal("true\n", out)
  end)
end)
