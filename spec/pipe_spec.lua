-- pipe_spec.lua - mp.Pipe and Connection.
local mp = require "mpengine"

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
end)
