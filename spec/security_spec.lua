-- security_spec.lua - bytes from outside the run decode to plain data only;
-- references stay balanced however often bytes are decoded; the codec's
-- limits hold (nesting, memory) and its errors say where they happened.
local mp = require "mpengine"
local H = require "helpers"

-- Writes a script to a fresh folder; returns the folder and the script path.
local function script(text)
  local dir = H.tmpname()
  assert(os.execute("mkdir -p '" .. dir .. "'"))
  local path = dir .. "/s.lua"
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  return dir, path
end

local function rmdir(dir) os.execute("rm -rf '" .. dir .. "'") end

-- Encodes in another run (another key): returns the bytes it wrote.
local function bytes_of_another_run(lua_expr, dir)
  local out = dir .. "/msg.bin"
  local _, path = script(([[
    local mp = require "mpengine"
    local f = assert(io.open(%q, "wb"))
    local v = %s
    f:write(mp.encode(v))
    f:close()
    if type(v) == "table" then setmetatable(v, nil) end -- its __gc is for the receiver
  ]]):format(out, lua_expr))
  local text, rc = H.run(path)
  assert(rc == 0, text)
  return assert(H.read(out))
end

describe("decoding untrusted bytes", function()
  it("refuses a table whose metatable would run code, with no side effect (issue 10, 1)", function()
    local dir = script("")
    local mark = dir .. "/ran"
    local msg = bytes_of_another_run(([[setmetatable({processes = 1, initializer = os.execute,
      initargs = {"touch %s"}}, {__gc = mp.Pool})]]):format(mark), dir)
    for _, bytes in ipairs{msg, msg .. "\0"} do -- whole, and malformed by one trailing byte
      local ok, err = pcall(mp.decode, bytes)
      assert.is_false(ok)
      assert.matches("not encoded by this run", err)
      collectgarbage()
      collectgarbage()
      assert.is_nil(H.read(mark))
    end
    rmdir(dir)
  end)

  it("refuses a function, a module and an engine object from another run", function()
    local dir = script("")
    for _, expr in ipairs{"function() return 1 end", "{s = string}", "{f = string.format}",
                          "{q = mp.Queue()}", "setmetatable({}, {})"} do
      local ok, err = pcall(mp.decode, bytes_of_another_run(expr, dir))
      assert.is_false(ok)
      assert.matches("cannot receive value: the message's seal does not match: it was not encoded by this run", err)
    end
    rmdir(dir)
  end)

  it("never calls require for a name the message chose (issue 10, 2)", function()
    local dir = script("")
    local f = assert(io.open(dir .. "/evil.lua", "w"))
    f:write("EVIL_LOADED = true return {}")
    f:close()
    local path = package.path
    package.path = dir .. "/?.lua;" .. path
    local ok, err = pcall(mp.decode, string.pack(">BBB", 0xc7, 4, 2) .. "evil")
    local ok2, err2 = pcall(mp.decode, string.pack(">BBBB", 0xc7, 9, 3, 0) .. "evil\0run") -- MODFIELD
    package.path = path
    assert.is_false(ok)
    assert.matches("carries a module but was not encoded by this run", err)
    assert.is_false(ok2)
    assert.matches("carries a module field but was not encoded by this run", err2)
    assert.is_nil(rawget(_G, "EVIL_LOADED"))
    assert.is_nil(package.loaded.evil)
    rmdir(dir)
  end)

  it("never sets the metatable of a live table (issue 10, 2)", function()
    -- MTTABLE { MODULE "_G", {__newindex = {}} }
    local body = string.pack(">BBB", 0xc7, 2, 2) .. "_G" .. string.char(0x81, 0xaa) .. "__newindex" .. string.char(0x80)
    local msg = string.pack(">BBB", 0xc7, #body, 5) .. body
    local ok, err = pcall(mp.decode, msg)
    assert.is_false(ok)
    assert.matches("not encoded by this run", err)
    assert.is_nil(getmetatable(package.loaded._G))
  end)

  it("decodes plain MessagePack from anywhere, never with a metatable", function()
    -- {1, "a", {x = true}, 2.5} written by hand, and a table from another run
    local msg = string.char(0x94, 0x01, 0xa1, 0x61, 0x81, 0xa1, 0x78, 0xc3, 0xcb) .. string.pack(">d", 2.5)
    local t = mp.decode(msg)
    assert.are.same({1, "a", {x = true}, 2.5}, t)
    assert.is_nil(getmetatable(t))
    local dir = script("")
    local cyc = mp.decode(bytes_of_another_run("(function() local t = {n = {1, 2}} t.self = t return t end)()", dir))
    assert.are.equal(cyc, cyc.self)
    assert.are.same({1, 2}, cyc.n)
    rmdir(dir)
    -- plain data is not sealed: it costs nothing extra
    assert.are.equal(string.char(0x93, 1, 2, 3), mp.encode{1, 2, 3})
  end)

  it("refuses a forged object reference, even one that looks like a live Array (issue 10, 3)", function()
    local a = mp.Array('B', 64)
    -- A real reference, then the same bytes unsealed, then pointing 32 bytes into the data.
    local sealed = mp.encode(a)
    local body = sealed:sub(11)
    local ok, err = pcall(mp.decode, body)
    assert.is_false(ok)
    assert.matches("carries an engine object but was not encoded by this run", err)
    local changed = sealed:sub(1, -2) .. string.char((sealed:byte(-1) + 1) % 256)
    ok, err = pcall(mp.decode, changed)
    assert.is_false(ok)
    assert.matches("seal does not match", err)
  end)
end)

describe("references across encode and decode (issue 10, 4)", function()
  it("survives decoding one encoding twice, and fails clearly once the object is gone", function()
    local _, path = script([[
      local mp = require "mpengine"
      local v = mp.Value('i', 7)
      local s = mp.encode(v)
      local a, b = mp.decode(s), mp.decode(s)
      a, b = nil, nil
      collectgarbage() collectgarbage()
      local w = mp.Value('i', 99) -- would take v's place if v had been freed
      assert(v.value == 7 and w.value == 99 and v ~= w)
      v = nil
      collectgarbage() collectgarbage()
      local ok, err = pcall(mp.decode, s)
      assert(not ok and err:find("the Value it names is gone", 1, true), err)
      local x = mp.Value('i', 5) -- may take the freed place: s still does not name it
      ok, err = pcall(mp.decode, s)
      assert(not ok and err:find("gone", 1, true), err)
      assert(x.value == 5)
      print("ok")
    ]])
    local out, rc = H.run(path)
    assert.are.equal(0, rc, out)
    assert.are.equal("ok\n", out)
  end)

  it("takes no reference for mp.encode: an encoded object is freed with its last handle", function()
    collectgarbage()
    collectgarbage()
    local used0 = mp.arena_stats()
    do
      local a = mp.Array('d', 1 << 16) -- 512 KiB
      for _ = 1, 200 do assert(mp.encode({a, a})) end
      assert.are.equal(a, mp.decode(mp.encode(a)))
    end
    collectgarbage()
    collectgarbage()
    assert.are.equal(used0, (mp.arena_stats()))
  end)

  it("gives back the reference in flight of a put that fails", function()
    collectgarbage()
    collectgarbage()
    local used0 = mp.arena_stats()
    do
      local q = mp.Queue(1)
      local a = mp.Array('d', 1 << 16)
      assert.is_true(q:put(1))
      for _ = 1, 50 do
        local ok, why = q:put_nowait({a, {a}})
        assert.is_falsy(ok)
        assert.are.equal("full", why)
      end
      q:close()
      assert.has_error(function() q:put({a}) end)
    end
    collectgarbage()
    collectgarbage()
    assert.are.equal(used0, (mp.arena_stats()))
  end)

  it("gives back the reference in flight of a send that fails", function()
    collectgarbage()
    collectgarbage()
    local used0 = mp.arena_stats()
    do
      local r, w = mp.Pipe(false)
      local a = mp.Array('d', 1 << 16)
      r:close()
      for _ = 1, 50 do
        local ok, why = w:send({a, {a}})
        assert.is_falsy(ok)
        assert.are.equal("closed", why)
      end
      w:close()
    end
    collectgarbage()
    collectgarbage()
    assert.are.equal(used0, (mp.arena_stats()))
  end)

  it("a Pool task capturing an object does not pin it once per call", function()
    local stale
    do
      local pool = mp.Pool(1)
      local a = mp.Array('d', 4)
      stale = mp.encode(a) -- decodes only while the Array is alive
      for i = 1, 100 do assert.are.equal(i, pool:apply(function(x) return x + a[1] end, {i})) end
      pool:close()
      pool:join() -- the worker gives its references back as it ends
    end
    collectgarbage()
    collectgarbage()
    local ok, err = pcall(mp.decode, stale)
    assert.is_false(ok)
    assert.matches("the Array it names is gone", err)
  end)
end)

describe("the codec's limits", function()
  it("refuses one level past the nesting limit without harm, from every sender (issue 10, 5)", function()
    local _, path = script([[
      local mp = require "mpengine"
      local function deep(n) local t = {} local c = t for _ = 1, n do c[1] = {} c = c[1] end return t end
      local function deepf(n) local f = function() return 0 end
        for _ = 1, n do local g = f f = function() return g() end end return f end
      local a, b = mp.Pipe()
      local q = mp.Queue()
      for _, n in ipairs{121, 130, 400} do
        for _, send in ipairs{
          function(v) return mp.encode(v) end,
          function(v) return q:put(v) end,
          function(v) return a:send(v) end,
          function(v) return mp.Process{target = print, args = {v}}:start() end,
        } do
          for _, v in ipairs{deep(n), deepf(n)} do
            local ok, err = pcall(send, v)
            assert(not ok and err:find("nested too deeply", 1, true), tostring(err))
          end
        end
      end
      collectgarbage()
      assert(#mp.encode(deep(100)) > 100)
      print("ok")
    ]])
    local out, rc = H.run(path)
    assert.are.equal(0, rc, out)
    assert.are.equal("ok\n", out)
  end)

  it("decodes a small message claiming huge counts at every level in bounded memory (issue 10, 7)", function()
    local _, path = script([[
      local mp = require "mpengine"
      local size, levels = 1 << 20, 100
      local parts = {}
      for i = 1, levels do parts[i] = string.pack(">BI4", 0xdd, size - 5 * i) end
      local msg = table.concat(parts)
      msg = msg .. ("\0"):rep(size - #msg)
      collectgarbage()
      assert(mp._limit_memory(96 << 20)) -- 96 MiB more: a small multiple of 1 MiB
      local ok, err = pcall(mp.decode, msg)
      assert(not ok and err:find("truncated", 1, true), tostring(err))
      print("ok")
    ]])
    local out, rc = H.run(path)
    assert.are.equal(0, rc, out)
    assert.are.equal("ok\n", out)
  end)
end)

describe("codec errors", function()
  it("name the script's line that sent the value, and hint at files (issue 10, 19)", function()
    local a, b = mp.Pipe()
    local q = mp.Queue()
    local fh = io.tmpfile()
    local line = debug.getinfo(1, "l").currentline
    local cases = {
      function() q:put({c = a}) end,
      function() a:send({f = fh}) end,
      function() mp.Process{target = print, args = {fh}}:start() end,
      function() mp.encode({coroutine.create(print)}) end,
    }
    for i, f in ipairs(cases) do
      local ok, err = pcall(f)
      assert.is_false(ok)
      assert.matches("^[^:]*security_spec%.lua:" .. (line + 1 + i) .. ": cannot send value at ", err)
    end
    local _, err = pcall(a.send, a, {f = fh})
    assert.matches("value%.f: userdata %(FILE%*%): an open file cannot travel; open files in the child", err)
    local pool = mp.Pool(1)
    local co = coroutine.create(print)
    local pline = debug.getinfo(1, "l").currentline + 1
    local ok, perr = pcall(function() return pool:apply(function() return co end) end)
    assert.is_false(ok)
    assert.matches("security_spec%.lua:" .. pline .. ": cannot send value at value%[upvalue co%]: thread", perr)
    pool:close()
    pool:join()
    fh:close()
    b:close()
  end)
end)

describe("handles", function()
  it("are == when they name one engine object (issue 15, 7)", function()
    local l = mp.Lock()
    assert.is_true(mp.Value('i', 0, {lock = l}):get_lock() == l)
    assert.is_false(mp.Lock() == l)
    local q = mp.JoinableQueue()
    assert.is_true(mp.decode(mp.encode(q)) == q)
    assert.is_false(mp.JoinableQueue() == q)
    local v = mp.Value('d', 1)
    assert.is_true(mp.decode(mp.encode({v}))[1] == v)
    assert.is_false(v == l)
  end)
end)
