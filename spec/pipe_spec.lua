-- pipe_spec.lua - mp.Pipe and Connection.
local mp = require "mpengine"
local H = require "spec.helpers"

-- A message that says who sent it and when, and is otherwise checkable.
local function body(id, seq)
  local n = 65536 + ((id * 7 + seq * 13) % 16) * 61440 -- 64 KiB .. 1 MiB
  local head = string.pack("<I4I4I4", id, seq, n)
  return head .. string.char(id, seq % 256, 7):rep((n - #head) // 3 + 1):sub(1, n - #head)
end

describe("Pipe", function()
  it("is duplex by default and carries any value", function()
    local a, b = mp.Pipe()
    assert.is_true(a:send({1, "two", {three = 3.0}}))
    assert.are.same({1, "two", {three = 3.0}}, b:recv(1))
    assert.is_true(b:send("back"))
    assert.are.equal("back", a:recv(1))
    assert.is_true(a.readable and a.writable)
  end)

  it("one-way: the first end receives, the second sends", function()
    local r, w = mp.Pipe(false)
    assert.is_true(r.readable); assert.is_false(r.writable)
    assert.is_true(w.writable); assert.is_false(w.readable)
    assert.has_error(function() r:send(1) end, "Connection is read-only")
    assert.has_error(function() w:recv(0) end, "Connection is write-only")
    w:send(5)
    assert.are.equal(5, r:recv(1))
  end)

  it("times out without hanging, and polls", function()
    local a, b = mp.Pipe()
    local t0 = mp.time()
    local v, why = b:recv(0.1)
    assert.is_true(mp.time() - t0 >= 0.099)
    assert.is_nil(v); assert.are.equal("timeout", why)
    assert.are.same({nil, "timeout"}, {b:recv(0)})
    assert.is_false(b:poll())
    assert.is_false(b:poll(0.05))
    a:send(true)
    assert.is_true(b:poll())
    assert.is_true(b:recv())
  end)

  it("reports closed once every writing end is gone, after delivering what was sent", function()
    local a, b = mp.Pipe()
    a:send("last words")
    a:close()
    assert.is_true(a.closed)
    assert.are.equal("last words", b:recv(1))
    assert.is_true(b:poll(1))
    assert.are.same({nil, "closed"}, {b:recv(1)})
    assert.are.same({nil, "closed"}, {b:send(1)})
    assert.has_error(function() a:send(1) end, "Connection is closed")
    assert.has_error(function() a:recv() end, "Connection is closed")
  end)

  it("raises on nil and on bad timeouts", function()
    local a = mp.Pipe()
    assert.has_error(function() a:send(nil) end)
    assert.has_error(function() a:recv(-1) end)
    assert.has_error(function() a:recv("soon") end)
    assert.has_error(function() a:send_bytes(nil) end)
  end)

  it("moves bytes as they are, 0 B to 16 MiB, between processes", function()
    local a, b = mp.Pipe()
    local p = mp.Process{target = function(c)
      while true do
        local s = c:recv_bytes(30)
        if not s then return end
        c:send_bytes(s)
      end
    end, args = {b}}
    p:start()
    b:close()
    local big = ("0123456789abcdef"):rep(1 << 20)
    for _, s in ipairs{"", "x", ("\0\255"):rep(32768), big} do
      a:send_bytes(s)
      local back = a:recv_bytes(30)
      assert.are.equal(#s, #back)
      assert.is_true(s == back)
    end
    a:send("value")                     -- recv_bytes of a value gives its encoding
    assert.are.equal(mp.encode("value"), a:recv_bytes(30))
    a:send_bytes("raw")                 -- recv of raw bytes gives the string
    assert.are.equal("raw", a:recv(30))
    a:close()
    assert.is_true(p:join(30))
    assert.are.equal(0, p.exitcode)
  end)

  it("sends a pipe end through a pipe: the same pipe on the other side", function()
    local a, b = mp.Pipe()
    local x, y = mp.Pipe()
    local p = mp.Process{target = function(c)
      local ends = c:recv(10)
      ends.conn:send("through the sent end")
      assert(ends.again == ends.conn)
    end, args = {b}}
    p:start()
    a:send({conn = y, again = y})
    assert.are.equal("through the sent end", x:recv(10))
    assert.is_true(p:join(10))
    assert.are.equal(0, p.exitcode)
  end)

  it("is usable with <close>", function()
    local r
    do
      local a <close>, b = mp.Pipe()
      r = a
      b:close()
    end
    assert.is_true(r.closed)
  end)

  it("fileno: the end's descriptor, for an outside event loop; raises once closed", function()
    local a, b = mp.Pipe()
    local fa, fb = a:fileno(), b:fileno()
    assert.are.equal("integer", math.type(fa))
    assert.is_true(fa > 2 and fb > 2 and fa ~= fb)
    local ls = io.popen("readlink /proc/" .. mp.getpid() .. "/fd/" .. fa)
    assert.matches("^socket:", ls:read("l"))
    ls:close()
    a:close()
    assert.has_error(function() a:fileno() end, "Connection is closed")
  end)

  it("send_bytes(s, i, n): n bytes from position i (1-based, as string.sub counts)", function()
    local a, b = mp.Pipe()
    a:send_bytes("hello world", 7)
    assert.are.equal("world", b:recv_bytes(1))
    a:send_bytes("hello world", 1, 5)
    assert.are.equal("hello", b:recv_bytes(1))
    a:send_bytes("hello world", 5, 3)
    assert.are.equal("o w", b:recv_bytes(1))
    a:send_bytes("abc", 4)                -- just past the end: empty
    assert.are.equal("", b:recv_bytes(1))
    a:send_bytes("abc", 2, 0)
    assert.are.equal("", b:recv_bytes(1))
    for _, bad in ipairs{{0}, {5}, {-1}, {2, 3}, {1, -1}, {1.5}} do
      assert.has_error(function() a:send_bytes("abc", bad[1], bad[2]) end)
    end
    assert.are.same({nil, "timeout"}, {b:recv(0)}) -- nothing went out
  end)

  it("recv_bytes(timeout, maxlength): a longer message raises, then that direction is closed", function()
    local a, b = mp.Pipe()
    a:send_bytes("12345")
    assert.are.equal("12345", b:recv_bytes(1, 5))
    a:send_bytes("123456")
    assert.has_error(function() b:recv_bytes(1, 5) end,
      "recv_bytes: message longer than maxlength (5 bytes); this direction of the pipe is now closed")
    local why = "a message longer than the receiver's maxlength was refused"
    assert.are.same({nil, "closed", why}, {b:recv(1)})
    assert.are.same({nil, "closed", why}, {a:send("more")})
    assert.is_true(b:send("the other way works")) -- the other direction is untouched
    assert.are.equal("the other way works", a:recv(1))
    assert.has_error(function() b:recv_bytes(1, -1) end)
    assert.has_error(function() b:recv_bytes(1, 2.5) end)
  end)

  it("a sender killed in the middle of a message: recv(1.0) returns, the stream is closed", function()
    local a, b = mp.Pipe()
    local p = mp.Process{target = function(c) c:send_bytes(("x"):rep(64 << 20)) end, args = {b}}
    p:start()
    assert.is_true(a:poll(30)) -- part of it is in; b stays open here, so no EOF comes
    p:kill()
    p:join()
    local v, why, detail
    for _ = 1, 30 do -- each call returns by its timeout; one of them sees the sender died
      v, why, detail = a:recv(1.0)
      if why ~= "timeout" then break end
    end
    assert.is_nil(v)
    assert.are.equal("closed", why)
    assert.are.equal("a sender died in the middle of a message", detail)
    assert.are.same({nil, "closed", detail}, {b:send("more")})
    assert.is_true(a:send("back")) -- the other direction still works
    assert.are.equal("back", b:recv(1))
  end)

  it("a timeout in the middle of a message keeps it: the next recv finishes it", function()
    local a, b = mp.Pipe()
    local p = mp.Process{target = function(c) c:send_bytes(("y"):rep(32 << 20)) end, args = {b}}
    p:start()
    assert.is_true(a:poll(30))
    os.execute("kill -STOP " .. p.pid) -- the rest will not come until CONT
    assert.are.same({nil, "timeout"}, {a:recv_bytes(0.1)})
    os.execute("kill -CONT " .. p.pid)
    local s = a:recv_bytes(60)
    assert.are.equal(32 << 20, #s)
    assert.is_true(s == ("y"):rep(32 << 20))
    assert.is_true(p:join(30))
    assert.are.equal(0, p.exitcode)
  end)

  it("many processes sending on one end: every message arrives whole, in each sender's order", function()
    local a, b = mp.Pipe()
    local N, M = 4, 8 -- more than the socket's buffer holds: senders wait in the middle of messages
    local go = mp.Event()
    local ps = {}
    for id = 1, N do
      ps[id] = mp.Process{target = function(c)
        local msgs = {}
        for seq = 1, M do msgs[seq] = body(id, seq) end
        go:wait()
        for seq = 1, M do c:send_bytes(msgs[seq]) end
      end, args = {b}}
      ps[id]:start()
    end
    go:set()
    local last = {}
    for _ = 1, N * M do
      local s = a:recv_bytes(30)
      local id, seq = string.unpack("<I4I4", s)
      assert.are.equal((last[id] or 0) + 1, seq)
      last[id] = seq
      assert.is_true(s == body(id, seq))
    end
    for id = 1, N do
      assert.are.equal(M, last[id])
      assert.is_true(ps[id]:join(30))
      assert.are.equal(0, ps[id].exitcode)
    end
    assert.are.same({nil, "timeout"}, {a:recv(0)})
  end)

  it("many processes receiving on one end: each message goes whole to exactly one", function()
    local a, b = mp.Pipe()
    local r, w = mp.Pipe(false)
    local N, M = 3, 20
    local ps = {}
    for i = 1, N do
      ps[i] = mp.Process{target = function(c, out)
        local got = {}
        while true do
          local s = c:recv_bytes(30)
          if s == "stop" then break end
          local _, seq = string.unpack("<I4I4", s)
          assert(s == body(99, seq), "a message came in pieces")
          got[#got + 1] = seq
        end
        out:send(got)
      end, args = {b, w}}
      ps[i]:start()
    end
    for seq = 1, M do a:send_bytes(body(99, seq)) end
    for _ = 1, N do a:send_bytes("stop") end
    local count, seen = 0, {}
    for _ = 1, N do
      for _, seq in ipairs(r:recv(30)) do
        assert.is_nil(seen[seq])
        seen[seq] = true
        count = count + 1
      end
    end
    assert.are.equal(M, count)
    for i = 1, N do
      assert.is_true(ps[i]:join(30))
      assert.are.equal(0, ps[i].exitcode)
    end
  end)

  it("the first SIGINT or SIGTERM ends a send blocked on a peer that does not read, and a half-read recv", function()
    for _, case in ipairs{{"send", "TERM", 143}, {"send", "INT", 130}, {"recv", "TERM", 143}} do
      local pidfile = H.tmpname()
      local cli, run = H.spawn_cli("spec/fixtures/pipe_blocked.lua " .. case[1] .. " " .. pidfile)
      local pids = H.pids_from(pidfile)
      os.execute("kill -" .. case[2] .. " " .. cli)
      local out, rc = run.finish()
      assert.are.equal(case[3], rc)
      assert.matches("interrupted by SIG" .. case[2], out)
      assert.is_nil(out:find("the wait returned", 1, true))
      H.wait_until(function() return not H.alive(pids[1]) end, 10)
      os.remove(pidfile)
    end
  end)
end)
