-- wait_spec.lua - mp.wait: many Connections, Queues, Events and Processes in one sleep.
local mp = require "mpengine"
local H = require "helpers"

-- A child that waits for the go Event, then does fn(...).
local function after_go(go, fn, ...)
  local p = mp.Process{target = function(g, ...)
    assert(g:wait(60))
    fn(...)
  end, args = {go, ...}}
  p:start()
  return p
end

describe("mp.wait", function()
  it("returns each kind at once when it is ready, the handles given, in order", function()
    local a, b = mp.Pipe()
    b:send("x")
    local q, e = mp.Queue(), mp.Event()
    q:put(1)
    e:set()
    local p = mp.Process{target = function() end}
    p:start()
    assert.is_true(p:join(60))
    for _, o in ipairs{a, q, e, p} do
      local r = mp.wait({o}, 0)
      assert.are.equal(1, #r)
      assert.are.equal(o, r[1])
    end
    local r = mp.wait({e, p, q, a})
    assert.are.equal(4, #r)
    assert.are.equal(e, r[1]); assert.are.equal(p, r[2]); assert.are.equal(q, r[3]); assert.are.equal(a, r[4])
    assert.are.equal(1, q:qsize()) -- nothing taken
    assert.are.equal("x", a:recv())
  end)

  it("wakes when another process makes each kind ready", function()
    local cases = {
      function(go) local a, b = mp.Pipe(false); return a, after_go(go, function(c) c:send("hi") end, b) end,
      function(go) local q = mp.Queue(); return q, after_go(go, function(qq) qq:put(1) end, q) end,
      function(go) local e = mp.Event(); return e, after_go(go, function(ee) ee:set() end, e) end,
      function(go) local p = after_go(go, function() end); return p, p end,
    }
    for _, make in ipairs(cases) do
      local go = mp.Event()
      local obj, child = make(go)
      assert.are.same({}, mp.wait({obj}, 0))
      go:set()
      local r = mp.wait({obj})
      assert.are.equal(1, #r)
      assert.are.equal(obj, r[1])
      assert.is_true(child:join(60))
      assert.are.equal(0, child.exitcode)
    end
  end)

  it("in a mixed set only the one that became ready comes back", function()
    local go = mp.Event()
    local a, _ = mp.Pipe()
    local other = mp.Process{target = function() mp.sleep(60) end}
    other:start()
    local e, q = mp.Event(), mp.Queue()
    local child = after_go(go, function(qq) qq:put("last") end, q)
    local set = {a, other, e, q}
    assert.are.same({}, mp.wait(set, 0.05))
    go:set()
    local r = mp.wait(set)
    assert.are.equal(1, #r)
    assert.are.equal(q, r[1])
    assert.are.equal("last", q:get())
    assert.is_true(child:join(60))
    other:kill()
    assert.is_true(other:join(60))
  end)

  it("returns the empty list on timeout", function()
    local a, _ = mp.Pipe()
    assert.are.same({}, mp.wait({a, mp.Queue(), mp.Event()}, 0.05))
    assert.are.same({}, mp.wait({mp.Queue()}, 0))
    assert.are.same({}, mp.wait({}, 0.01))
  end)

  it("a closed queue and a connection at EOF are ready", function()
    local q = mp.Queue()
    q:close()
    assert.are.equal(q, mp.wait({q})[1])
    local a, b = mp.Pipe(false)
    local child = mp.Process{target = function() end, args = {b}}
    child:start()
    b:close()
    assert.are.equal(a, mp.wait({a})[1]) -- the child's end closes when it ends
    assert.is_nil(select(1, a:recv()))
    assert.is_true(child:join(60))
  end)

  it("raises on what cannot be waited on", function()
    assert.has_error(function() mp.wait({}) end, "mp.wait: no objects and no timeout (would wait forever)")
    assert.has_error(function() mp.wait({mp.Queue(), 5}, 0) end,
                     "mp.wait: objects[2] is a number, not a Connection, Process, Queue or Event")
    assert.has_error(function() mp.wait({mp.Lock()}, 0) end,
                     "mp.wait: objects[1] is a userdata, not a Connection, Process, Queue or Event")
    local a, b = mp.Pipe(false)
    a:close()
    assert.has_error(function() mp.wait({a}, 0) end, "Connection is closed")
    assert.has_error(function() mp.wait({b}, 0) end, "Connection is send-only")
    local p = mp.Process{target = function() end}
    assert.has_error(function() mp.wait({p}, 0) end, "Process: not started")
    p:start()
    assert.is_true(p:join(60))
    p:close()
    assert.has_error(function() mp.wait({p}, 0) end, "Process: closed")
    assert.has_error(function() mp.wait({mp.current_process()}, 0) end,
                     "Process: only a child of this process can be waited on")
  end)

  it("does not busy-poll: a 1 s wait costs well under 0.3 s of CPU (a busy-poll costs about 1 s)", function()
    local a, _ = mp.Pipe()
    local p = mp.Process{target = function() mp.sleep(60) end}
    p:start()
    for _, set in ipairs{{mp.Queue(), mp.Event()}, {a, p}, {a, p, mp.Queue(), mp.Event()}} do
      local c0 = os.clock()
      assert.are.same({}, mp.wait(set, 1))
      assert.is_true(os.clock() - c0 < 0.3, "CPU " .. (os.clock() - c0))
    end
    p:kill()
    assert.is_true(p:join(60))
  end)

  it("a get blocked in another process still gets its message while mp.wait watches the queue", function()
    local q, started = mp.Queue(), mp.Event()
    local getter = mp.Process{target = function(qq, s) s:set(); assert(qq:get(60) == "m") end, args = {q, started}}
    getter:start()
    assert.is_true(started:wait(60))
    local watcher_go = mp.Event()
    local putter = after_go(watcher_go, function(qq) qq:put("m") end, q)
    watcher_go:set()
    mp.wait({q}, 0.2)
    assert.is_true(getter:join(60))
    assert.are.equal(0, getter.exitcode)
    assert.is_true(putter:join(60))
  end)

  it("the first SIGINT or SIGTERM ends the run while it waits", function()
    for _, case in ipairs{{"INT", 130}, {"TERM", 143}} do
      local pidfile = H.tmpname()
      local cli, run = H.spawn_cli("spec/fixtures/wait_blocked.lua " .. pidfile)
      local pids = H.pids_from(pidfile)
      os.execute("kill -" .. case[1] .. " " .. cli)
      local out, rc = run.finish()
      assert.are.equal(case[2], rc)
      assert.matches("interrupted by SIG" .. case[1], out)
      assert.is_nil(out:find("the wait returned", 1, true))
      H.wait_until(function() return not H.alive(pids[1]) end, 10)
      os.remove(pidfile)
    end
  end)
end)
