-- process_spec.lua - mp.Process across real processes.
local mp = require "mpengine"
local H = require "helpers"

describe("Process", function()
  it("runs a closure with args in a child and reports exit code 0", function()
    local r, w = mp.Pipe(false)
    local offset = 100
    local p = mp.Process{target = function(conn, a, b) conn:send(a + b + offset) end, args = {w, 1, 2},
                         name = "adder"}
    assert.is_nil(p.pid)
    assert.is_nil(p.exitcode)
    assert.are.equal("adder", p.name)
    p:start()
    w:close()
    assert.is_number(p.pid)
    assert.are.equal(103, r:recv(10))
    assert.is_true(p:join(10))
    assert.are.equal(0, p.exitcode)
    assert.is_false(p:is_alive())
  end)

  it("gives default names and daemon flags", function()
    local p = mp.Process{target = function() end}
    assert.matches("^Process%-%d+$", p.name)
    assert.is_false(p.daemon)
    p.daemon = true
    p.name = "renamed"
    assert.is_true(p.daemon)
    assert.are.equal("renamed", p.name)
    p:start()
    assert.is_true(p:join(10))
    assert.has_error(function() p.daemon = false end, "Process: cannot set daemon after start")
  end)

  it("sets exitcode 1 on a Lua error and os.exit(n) to n", function()
    -- in a run of its own, so that the failing child's report is captured
    local out, rc = H.sh(H.CLI .. [[ run -e '
      local mp = require "mpengine"
      local p = mp.Process{target = function() error("boom") end}
      local q = mp.Process{target = function() os.exit(7) end}
      local t = mp.Process{target = function() os.exit(true) end}
      p:start(); q:start(); t:start()
      p:join(); q:join(); t:join()
      print("exitcodes", p.exitcode, q.exitcode, t.exitcode)']])
    assert.are.equal(0, rc)
    assert.matches("exitcodes\t1\t7\t0", out)
    assert.matches("Process Process%-1 %(pid %d+%) failed:\n%(command line%):3: boom", out)
  end)

  it("reports -N when killed by signal N, with terminate and kill", function()
    local a = mp.Process{target = function() mp.sleep(60) end}
    local b = mp.Process{target = function() mp.sleep(60) end}
    a:start(); b:start()
    assert.is_true(a:is_alive())
    assert.is_false(a:join(0.05))
    assert.is_nil(a.exitcode)
    a:terminate(); b:kill()
    assert.is_true(a:join(10)); assert.is_true(b:join(10))
    assert.are.equal(-15, a.exitcode)
    assert.are.equal(-9, b.exitcode)
    assert.is_false(H.alive(a.pid))
  end)

  it("honours join timeouts: not early, not hung", function()
    local p = mp.Process{target = function() mp.sleep(0.3) end}
    p:start()
    local t0 = mp.time()
    assert.is_false(p:join(0.1))
    local waited = mp.time() - t0
    assert.is_true(waited >= 0.099, "returned early: " .. waited)
    assert.is_true(p:join(30))
    assert.are.equal(0, p.exitcode)
  end)

  it("knows its children and its own name inside a child", function()
    local r, w = mp.Pipe(false)
    local p = mp.Process{target = function(c) c:send(mp.current_process()) c:send(#mp.active_children()) end,
                         args = {w}, name = "worker-7"}
    p:start()
    local me = r:recv(10)
    assert.are.equal("worker-7", me.name)
    assert.are.equal(p.pid, me.pid)
    assert.are.equal(0, r:recv(10))
    p:join()
    assert.are.equal("MainProcess", mp.current_process().name)
    local s = mp.Process{target = function() mp.sleep(60) end}
    s:start()
    local kids = mp.active_children()
    assert.are.equal(1, #kids)
    assert.are.equal(s, kids[1])
    s:kill(); s:join()
    assert.are.equal(0, #mp.active_children())
  end)

  it("a child under a default name knows it, and keeps it when it starts a child of its own", function()
    local r, w = mp.Pipe(false)
    local p = mp.Process{args = {w}, target = function(c)
      local before = mp.current_process().name
      local q = mp.Process{target = function() end}
      q:start()
      q:join()
      c:send({before, mp.current_process().name, q.name})
    end}
    p:start()
    w:close()
    local got = r:recv(10)
    assert.is_true(p:join(10))
    assert.matches("^Process%-%d+$", p.name)
    assert.are.equal(p.name, got[1])
    assert.are.equal(p.name, got[2])
    assert.matches("^Process%-%d+$", got[3])
    assert.are_not.equal(got[1], got[3])
  end)

  it("active_children() stays exact as children start and end in any order", function()
    local function sleeper()
      local r, w = mp.Pipe(false)
      local p = mp.Process{args = {r}, target = function(c) c:recv(30) end}
      p:start()
      r:close()
      return {p = p, w = w}
    end
    local function active()
      local pids = {}
      for _, p in ipairs(mp.active_children()) do pids[#pids + 1] = p.pid end
      table.sort(pids)
      return pids
    end
    local function pids_of(list)
      local pids = {}
      for _, k in ipairs(list) do pids[#pids + 1] = k.p.pid end
      table.sort(pids)
      return pids
    end
    local kids = {}
    for i = 1, 5 do kids[i] = sleeper() end
    assert.are.same(pids_of(kids), active())
    kids[2].w:send(true)
    assert.is_true(kids[2].p:join(10)) -- joined
    kids[4].w:send(true)               -- ended, never joined
    H.wait_until(function() return not kids[4].p:is_alive() end, 10)
    assert.are.same(pids_of{kids[1], kids[3], kids[5]}, active())
    kids[6], kids[7] = sleeper(), sleeper() -- into the slots left
    assert.are.same(pids_of{kids[1], kids[3], kids[5], kids[6], kids[7]}, active())
    for _, i in ipairs{7, 1, 6, 3, 5} do
      kids[i].w:send(true)
      assert.is_true(kids[i].p:join(10))
    end
    -- none is kept alive once joined, or ended and seen so
    local weak = setmetatable({kids[2].p, kids[4].p, kids[5].p}, {__mode = "v"})
    kids = nil
    collectgarbage()
    collectgarbage()
    assert.are.same({}, {weak[1], weak[2], weak[3]})
    assert.are.same({}, active())
  end)

  it("tricky values keep their shape through a Process's args and back over a Pipe", function()
    -- cycles, a table shared by several, the root met again, shared
    -- metatables, closures sharing a variable, functions as keys, and a
    -- table tried as an array then sent as a map
    local function shape(a, b, m, c, keyed, mixed, again)
      local f = next(keyed)
      c.inc(); c.inc()
      local x, y = mixed[2]()
      return {
        a.self == a, a[1] == a, a[2].up == a,
        b[1] == b[2], b[3][1] == b[1],
        getmetatable(m[1]) == getmetatable(m[2]), m[1] == m[3], m[2].hi,
        c.get(),
        keyed[f] == f, f(),
        mixed[1](), x, y[1], mixed.name,
        again == a,
      }
    end
    local want = {true, true, true, true, true, true, true, "hi!", 2, true, 3, 5, 5, 7, "t", true}
    local function values()
      local a = {}
      a.self, a[1], a[2] = a, a, {up = a}
      local s = {}
      local mt = {__index = function(_, k) return k .. "!" end}
      local m1 = setmetatable({}, mt)
      local n = 0
      local c = {inc = function() n = n + 1 end, get = function() return n end}
      local three = function() return 3 end
      local v, w = 5, {7}
      local function get() return v end
      local function both() return v, w end
      return a, {s, s, {s}}, {m1, setmetatable({}, mt), m1}, c, {[three] = three}, {get, both, name = "t"}, a
    end
    assert.are.same(want, shape(values()))
    local r, w = mp.Pipe(false)
    local p = mp.Process{args = {w, shape, values()}, target = function(conn, sh, ...)
      conn:send({sh(...), {...}})
    end}
    p:start()
    w:close()
    local got = r:recv(10)
    assert.is_true(p:join(10))
    assert.are.same(want, got[1])
    -- and back: the child's values, sent over the Pipe (its counter was at 2)
    want[9] = 4
    assert.are.same(want, shape(table.unpack(got[2], 1, 7)))
  end)

  it("raises on misuse", function()
    assert.has_error(function() mp.Process{target = 1} end, "Process: target must be a function")
    assert.has_error(function() mp.Process{target = print, bogus = 1} end,
      "Process: unknown option 'bogus' (expected target, args, name, daemon)")
    local p = mp.Process{target = function() end}
    assert.has_error(function() p:join() end, "Process: cannot join a process that was not started")
    assert.has_error(function() p:terminate() end, "Process: not started")
    assert.has_error(function() p:join(-1) end)
    p:start()
    assert.has_error(function() p:start() end, "Process: cannot start a process twice")
    p:join()
    p:close()
    assert.has_error(function() p:join() end, "Process: cannot join a closed process")
  end)

  it("refuses a target or args that cannot travel, naming the path", function()
    local co = coroutine.create(print)
    local p = mp.Process{target = function() end, args = {1, {cb = co}}}
    assert.has_error(function() p:start() end, "cannot send value at args[2].cb: thread")
    assert.is_nil(p.pid)
  end)

  it("leaves the child only the pipe ends it was given, so EOF works", function()
    local r, w = mp.Pipe(false)
    local other_r, other_w = mp.Pipe(false)
    local p = mp.Process{target = function(conn) conn:send("one") end, args = {w}}
    p:start()
    w:close() -- the child's copy is the only writer now
    assert.are.equal("one", r:recv(10))
    local v, why = r:recv(10)
    assert.is_nil(v)
    assert.are.equal("closed", why)
    p:join()
    other_w:close()
    assert.are.same({nil, "closed"}, {other_r:recv(1)})
  end)

  it("prints the process name and a traceback with file:line on error", function()
    local out, rc = H.run("spec/fixtures/child_error.lua")
    assert.are.equal(0, rc)
    assert.matches("Process failing%-worker %(pid %d+%) failed:", out)
    assert.matches("spec/fixtures/child_error.lua:%d+: something broke", out)
    assert.matches("stack traceback:", out)
    assert.matches("exitcode=1", out)
  end)

  it("a Process sent to another process is a foreign handle: pid and is_alive only", function()
    local q, out = mp.Queue(), mp.Queue()
    local sleeper = mp.Process{target = function() mp.sleep(60) end}
    sleeper:start()
    local p = mp.Process{target = function()
      local h = q:get(30)
      out:put({pid = h.pid, alive = h:is_alive(), join = select(2, pcall(h.join, h)),
               kill = select(2, pcall(h.kill, h))})
    end}
    p:start()
    q:put(sleeper)
    local r = out:get(30)
    p:join()
    assert.are.equal(sleeper.pid, r.pid)
    assert.is_true(r.alive)
    assert.matches("cannot join a foreign process", r.join)
    assert.matches("cannot signal", r.kill)
    sleeper:kill(); sleeper:join()
  end)

  it("a child joins the children it started before it ends (none is killed mid-work)", function()
    local out, rc = H.run("spec/fixtures/grandchild.lua")
    assert.are.equal(0, rc)
    assert.matches("^1\n2\n3\n4\n5\ngrandchild done\nchild exitcode=0\n$", out)
  end)

  it("os.exit(n) in a child also joins the children it started", function()
    local out, rc = H.sh(H.CLI .. [[ run -e '
      local mp = require "mpengine"
      local p = mp.Process{target = function()
        mp.Process{target = function() mp.sleep(0.1) print("grandchild done") end}:start()
        os.exit(5)
      end}
      p:start(); p:join()
      print("exitcode", p.exitcode)']])
    assert.are.equal(0, rc)
    assert.are.equal("grandchild done\nexitcode\t5\n", out)
  end)

  it("a child that fails kills the children it started, and reaps them before it ends", function()
    local out, rc = H.run("spec/fixtures/failing_parent.lua")
    assert.are.equal(0, rc)
    assert.matches("child exitcode=1\ngrandchild gone=true\n", out)
  end)

  it("start() reaps ended children: 200 never joined under ulimit -n 64", function()
    -- (the fixture takes 2000 and ulimit -n 256 as well; fewer keep the spec short)
    local out, rc = H.sh("sh -c 'ulimit -n 64; " .. H.CLI .. " run spec/fixtures/fire_and_forget.lua 200'")
    assert.are.equal(0, rc, out)
    assert.matches("files and pipes still open", out)
  end)

  it("an unstarted Process sent to another process is not alive and has no pid", function()
    local q = mp.Queue()
    q:put(mp.Process{target = function() end})
    local h = q:get(10)
    assert.is_nil(h.pid)
    assert.is_false(h:is_alive())
    assert.has_error(function() h:kill() end,
      "Process: a handle received from another process cannot signal")
  end)

  it("a forged pid (0, or negative as a pid_t) is never signalled: not alive", function()
    for _, pid in ipairs{0, 0xffffffff, 0x80000000} do
      -- an EXT_OBJECT of kind Process with that 32-bit pid
      local ok, h = pcall(mp.decode, string.pack(">BBBBI4", 0xc7, 5, 6, 2, pid))
      if ok then
        assert.is_nil(h.pid)
        assert.is_false(h:is_alive())
        assert.has_error(function() h:terminate() end,
          "Process: a handle received from another process cannot signal")
      else -- a decoder that refuses unauthenticated objects says so
        assert.matches("cannot receive value", h)
      end
    end
  end)

  it("a closed Process refuses is_alive, terminate and kill", function()
    local p = mp.Process{target = function() end}
    p:start()
    p:join()
    p:close()
    assert.has_error(function() p:is_alive() end, "Process: closed")
    assert.has_error(function() p:terminate() end, "Process: closed")
    assert.has_error(function() p:kill() end, "Process: closed")
    assert.has_error(function() p:join() end, "Process: cannot join a closed process")
  end)

  it("current_process() tells name, pid, daemon, exitcode and is_alive; parent_process() the parent", function()
    assert.is_nil(mp.parent_process())
    local me = mp.current_process()
    assert.are.equal(me, mp.current_process())
    assert.are.equal("MainProcess", me.name)
    assert.are.equal(mp.getpid(), me.pid)
    assert.is_false(me.daemon)
    assert.is_nil(me.exitcode)
    assert.is_true(me:is_alive())
    assert.has_error(function() me:join() end, "Process: the current process cannot join itself")
    local r, w = mp.Pipe(false)
    local p = mp.Process{name = "kid", daemon = true, args = {w}, target = function(c)
      local self, parent = mp.current_process(), mp.parent_process()
      c:send({name = self.name, pid = self.pid, daemon = self.daemon, alive = self:is_alive(),
              exitcode = self.exitcode, parent_pid = parent.pid, parent_name = parent.name,
              parent_alive = parent:is_alive(), parent_join = select(2, pcall(parent.join, parent))})
      local g = mp.Process{args = {c}, target = function(c2)
        c2:send({parent_name = mp.parent_process().name, parent_pid = mp.parent_process().pid,
                 daemon = mp.current_process().daemon})
      end}
      g:start()
      g:join()
    end}
    p:start()
    w:close()
    local got = r:recv(30)
    assert.are.same({name = "kid", pid = p.pid, daemon = true, alive = true, parent_pid = mp.getpid(),
                     parent_name = "MainProcess", parent_alive = true,
                     parent_join = got.parent_join}, got)
    assert.matches("cannot join a foreign process", got.parent_join)
    assert.are.same({parent_name = "kid", parent_pid = p.pid, daemon = false}, r:recv(30))
    assert.is_true(p:join(30))
  end)

  it("a child asked late still names its parent (renamed since, or a long name); its children are its own", function()
    local long = ("n"):rep(300)
    local r, w = mp.Pipe(false)
    local sibling = mp.Process{target = function() end}
    sibling:start()
    local p = mp.Process{name = long, args = {w}, target = function(c)
      local kids0 = #mp.active_children()
      mp.current_process().name = "renamed"
      collectgarbage() collectgarbage()
      local g = mp.Process{args = {c}, target = function(c2)
        mp.current_process().name = "grandchild"
        collectgarbage() collectgarbage()
        c2:send({parent = mp.parent_process().name, me = mp.current_process().name,
                 kids = #mp.active_children()})
      end}
      g:start()
      local kids1 = #mp.active_children()
      g:join()
      c:send({parent = mp.parent_process().name, kids0 = kids0, kids1 = kids1})
    end}
    p:start()
    w:close()
    assert.are.same({parent = "renamed", me = "grandchild", kids = 0}, r:recv(30))
    assert.are.same({parent = "MainProcess", kids0 = 0, kids1 = 1}, r:recv(30))
    assert.is_true(p:join(30))
    sibling:join()
    -- a long name reaches a grandchild whole
    local r2, w2 = mp.Pipe(false)
    local p2 = mp.Process{name = long, args = {w2}, target = function(c)
      local g = mp.Process{args = {c}, target = function(c2) c2:send(mp.parent_process().name) end}
      g:start()
      g:join()
    end}
    p2:start()
    w2:close()
    assert.are.equal(long, r2:recv(30))
    assert.is_true(p2:join(30))
  end)

  -- How a Process handle looks from inside a child (run there).
  local function seen_in_child(h)
    local ok, err = pcall(h.join, h, 0.1)
    return {ok = ok, err = tostring(err), alive = h:is_alive(), code = h.exitcode, pid = h.pid,
            text = tostring(h)}
  end

  it("a sibling's handle a child inherited is not the child's: it cannot join it, and it stays running", function()
    local r, w = mp.Pipe(false)
    local gate_r, gate_w = mp.Pipe(false)
    local sibling = mp.Process{target = function(g) g:recv() end, args = {gate_r}}
    sibling:start()
    local p = mp.Process{args = {w}, target = function(c) c:send(seen_in_child(sibling)) end}
    p:start()
    local got = r:recv(30)
    assert.is_false(got.ok)
    assert.matches("No child processes", got.err, 1, true)
    assert.is_true(got.alive)
    assert.is_nil(got.code)
    assert.are.equal(sibling.pid, got.pid) -- learnt after the sibling's fork, known at the child's
    assert.matches("(started)", got.text, 1, true)
    assert.is_true(p:join(30))
    gate_w:send(true)
    assert.is_true(sibling:join(30)) -- ours to reap, once: its references given back once
    assert.are.equal(0, sibling.exitcode)
  end)

  it("a child's copy of the Process it was started from is that handle as it was: not started", function()
    local r, w = mp.Pipe(false)
    local p
    p = mp.Process{args = {w}, target = function(c) c:send(seen_in_child(p)) end}
    p:start()
    local got = r:recv(30)
    assert.is_false(got.alive)
    assert.matches("(initial)", got.text, 1, true)
    assert.is_nil(got.pid)
    assert.is_nil(got.code)
    assert.is_false(got.ok)
    assert.matches("cannot join a process that was not started", got.err, 1, true)
    assert.is_true(p:join(30))
    assert.matches("(stopped)", tostring(p), 1, true)
    assert.is_true(p.pid > 0)
  end)

  it("after join, the parent keeps nothing of the target and its args alive", function()
    local weak = setmetatable({}, {__mode = "v"})
    do
      local big, captured = {}, {}
      weak[1], weak[2] = big, captured
      local p = mp.Process{target = function(t) return #t + #captured end, args = {big}}
      p:start()
      assert.is_true(p:join(30))
      assert.are.equal(0, p.exitcode)
    end
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
    assert.is_nil(weak[2])
  end)

  it("a child that ended unjoined keeps nothing alive once dropped: its pipe end's reader sees EOF", function()
    local weak = setmetatable({}, {__mode = "v"})
    local r, w = mp.Pipe(false)
    weak[1] = w
    local pid
    do
      local p = mp.Process{target = function(c) c:send("hi") end, args = {w}}
      p:start()
      pid = p.pid
    end
    w = nil -- luacheck: ignore
    assert.are.equal("hi", r:recv(30))
    H.wait_until(function() -- ended, and seen so: out of the children
      for _, c in ipairs(mp.active_children()) do
        if c.pid == pid then return false end
      end
      return true
    end, 30)
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
    assert.are.same({nil, "closed"}, {r:recv(10)})
  end)

  it("a child gives back what it made when it ends, before its parent reaps it", function()
    -- Measured against a child that makes nothing: the arena then holds only
    -- the child's ledger until the join.
    local function held_after_end(make)
      collectgarbage()
      collectgarbage()
      local used0 = mp.arena_stats()
      local r, w = mp.Pipe(false)
      local p = mp.Process{args = {make, w}, target = function(m)
        if m then KEEP = {mp.Event(), mp.Value("i", 1)} end -- luacheck: ignore 111
      end}
      p:start()
      w:close()
      assert.are.same({nil, "closed"}, {r:recv(30)}) -- ended (its end closed at exit), not reaped
      local used = mp.arena_stats() - used0
      assert.is_true(p:join(30))
      return used
    end
    assert.are.equal(held_after_end(false), held_after_end(true))
  end)

  it("a child's buffered output is written when it ends: a file left open, and stdout to a pipe", function()
    local path = H.tmpname()
    local p = mp.Process{target = function()
      KEEPF = io.open(path, "w") -- luacheck: ignore 111
      KEEPF:write("kept") -- luacheck: ignore 113
    end}
    p:start()
    assert.is_true(p:join(30))
    local f = assert(io.open(path))
    local got = f:read("a")
    f:close()
    os.remove(path)
    assert.are.equal("kept", got)
    local out, rc = H.sh(("%s run -e \"local mp = require 'mpengine' local p = mp.Process{target = function() "
                          .. "io.write('from the child') end} p:start() p:join()\" | cat"):format(H.CLI))
    assert.are.equal(0, rc, out)
    assert.are.equal("from the child", out)
  end)

  it("runs a closure made after the child started, sent through a pipe", function()
    local a, b = mp.Pipe()
    local p = mp.Process{target = function(c)
      local f = c:recv(10)
      c:send(f(20))
    end, args = {b}}
    p:start()
    local k = 22
    a:send(function(x) return x + k end)
    assert.are.equal(42, a:recv(10))
    p:join()
  end)

  it("a target may outgrow the thread it runs on: many arguments, deep calls, then again", function()
    -- The first start's thread is made in a small fixed block: its stack
    -- grows into the heap here, in this process (100 arguments) and in the
    -- child (deep recursion); the next start reuses the grown thread.
    local function depth(n) if n == 0 then return 0 end return 1 + depth(n - 1) end
    for round = 1, 2 do
      local r, w = mp.Pipe(false)
      local args = {w}
      for i = 1, 100 do args[#args + 1] = i end
      local p = mp.Process{args = args, target = function(c, ...)
        local sum = 0
        for _, v in ipairs({...}) do sum = sum + v end
        c:send({select("#", ...), sum, depth(5000)})
      end}
      p:start()
      w:close()
      assert.are.same({100, 5050, 5000}, r:recv(10), "round " .. round)
      assert.is_true(p:join(10))
      assert.are.equal(0, p.exitcode)
    end
  end)

  it("a start+join makes few system calls: the child resets only the caught handlers", function()
    if select(2, H.sh("strace -qq -o /dev/null true")) ~= 0 then
      pending("strace is missing or may not trace here")
      return
    end
    -- Counted with strace over N starts and over none: what one start+join adds.
    local function calls(n)
      local out = H.tmpname()
      local code = ("local mp = require 'mpengine' for _ = 1, %d do "
                    .. "local p = mp.Process{target = function() end} p:start() p:join() end"):format(n)
      local log, rc = H.sh(("strace -f -qq -c -e trace=rt_sigaction,wait4 -o %s %s run -e \"%s\" >/dev/null 2>&1")
                  :format(out, H.CLI, code))
      assert(rc == 0, log)
      local got = {rt_sigaction = 0, wait4 = 0}
      for line in io.lines(out) do
        local count, name = line:match("^%s*[%d.]+%s+[%d.]+%s+%d+%s+(%d+)%s+%d*%s*(%S+)$")
        if name and got[name] then got[name] = tonumber(count) end
      end
      os.remove(out)
      return got
    end
    local none, twenty = calls(0), calls(20)
    -- the CLI catches SIGINT and SIGTERM (a sanitizer a few more): not 62
    assert.is_true((twenty.rt_sigaction - none.rt_sigaction) / 20 <= 8)
    assert.are.equal(20, twenty.wait4 - none.wait4) -- one per join: the pidfd said it ended
  end)
end)
