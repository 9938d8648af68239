-- codec_spec.lua - every value the codec carries, and the error for each
-- value it refuses, with its path.
local mp = require "mpengine"
local _ -- results we do not look at

local function rt(v) return mp.decode(mp.encode(v)) end

describe("codec", function()
  it("keeps booleans, integers and floats with their subtype", function()
    assert.is_true(rt(true))
    assert.is_false(rt(false))
    for _, i in ipairs{0, 1, -1, 127, 128, -32, -33, 255, 256, 65535, 65536, -32768, -32769,
                       1 << 31, -(1 << 31) - 1, 1 << 32, math.maxinteger, math.mininteger} do
      local r = rt(i)
      assert.are.equal(i, r)
      assert.are.equal("integer", math.type(r))
    end
    for _, f in ipairs{0.0, 1.0, -2.5, 1e300, -1e-300, math.pi, math.huge, -math.huge} do
      local r = rt(f)
      assert.are.equal(f, r)
      assert.are.equal("float", math.type(r))
    end
    local nan = rt(0 / 0)
    assert.is_true(nan ~= nan)
    assert.are.equal("-0.0", tostring(rt(-0.0)))
  end)

  it("keeps strings binary-safe at every length", function()
    local bin = {}
    for i = 0, 255 do bin[#bin + 1] = string.char(i) end
    bin = table.concat(bin)
    for _, s in ipairs{"", "a", "\0", bin, ("x"):rep(31), ("x"):rep(32), ("y"):rep(70000)} do
      assert.are.equal(s, rt(s))
    end
  end)

  it("keeps nested tables, sequences, maps and mixed keys", function()
    local t = {1, 2, 3, {a = {b = {c = "deep"}}}, [true] = "t", [2.5] = "f", x = {}}
    local r = rt(t)
    assert.are.same(t, r)
    assert.are.equal("deep", r[4].a.b.c)
    local holes = {1, nil, 3}
    assert.are.same(holes, rt(holes))
  end)

  it("keeps tables whose integer keys are out of order or mixed with others", function()
    local t = {}
    for i = 10, 1, -1 do t[i] = i * i end -- built backwards: keys in the hash part
    assert.are.same(t, rt(t))
    local holes = {}
    holes[1], holes[2], holes[4] = 1, 2, 4
    assert.are.same(holes, rt(holes))
    assert.are.same({1, 2, 3, x = 1}, rt({1, 2, 3, x = 1}))
    -- an array attempt that turns into a map keeps shared references right
    local shared = {}
    local mixed = {{shared}, {shared}, x = shared}
    local r = rt(mixed)
    assert.are.equal(r[1][1], r[2][1])
    assert.are.equal(r[1][1], r.x)
  end)

  it("keeps shared references and cycles", function()
    local shared = {"s"}
    local t = {a = shared, b = shared}
    t.self = t
    local r = rt(t)
    assert.are.equal(r.a, r.b)
    assert.are.equal(r, r.self)
    assert.are_not.equal(shared, r.a)
  end)

  it("keeps metatables", function()
    local Point = {}
    Point.__index = Point
    function Point.norm1(p) return math.abs(p.x) + math.abs(p.y) end
    local r = rt(setmetatable({x = 3, y = -4}, Point))
    assert.are.equal(7, r:norm1())
  end)

  it("carries closures with their upvalues, recursion included", function()
    local base = 10
    local function fib(n) if n < 2 then return n end return fib(n - 1) + fib(n - 2) end
    local f = rt(function(x) return fib(x) + base end)
    assert.are.equal(65, f(10))
    local counter = rt((function() local n = 0; return function() n = n + 1; return n end end)())
    assert.are.equal(1, counter())
    assert.are.equal(2, counter())
  end)

  it("keeps a variable shared by closures shared", function()
    local function counter()
      local n = 0
      return {inc = function() n = n + 1 return n end, get = function() return n end}
    end
    local c = rt(counter())
    c.inc(); c.inc()
    assert.are.equal(2, c.get())
    local other = rt(counter()) -- a separate message: its own variable
    assert.are.equal(0, other.get())
  end)

  it("keeps the upvalues of closures in a table with both a list and named fields", function()
    -- such a table is first tried as an array, then sent as a map
    local n, m = 5, {7}
    local function get() return n end
    local function both() return n, m end
    local r = rt{get, both, name = "t"}
    assert.are.equal(5, r[1]())
    local a, b = r[2]()
    assert.are.equal(5, a)
    assert.are.same({7}, b)
    local r2 = rt{{get}, get, x = 1}
    assert.are.equal(5, r2[1][1]())
    assert.are.equal(5, r2[2]())
  end)

  it("sends modules and their C functions by name", function()
    local cjson = require "cjson"
    local r = rt{string = string, fmt = string.format, out = io.stdout, json = cjson, enc = cjson.encode, mp = mp}
    assert.are.equal(string, r.string)
    assert.are.equal(string.format, r.fmt)
    assert.are.equal(io.stdout, r.out)
    assert.are.equal(cjson, r.json)
    assert.are.equal(cjson.encode, r.enc)
    assert.are.equal(mp, r.mp)
    local f = rt(function(t) return cjson.encode(t) .. string.format("%d", 5) end)
    assert.are.equal('[1]5', f{1})
  end)

  it("gives a function the receiver's globals", function()
    local env = setmetatable({}, {__index = _G})
    local f = rt(load("return type(print), _G == _ENV", "=chunk", "t", env))
    local a, b = f()
    assert.are.equal("function", a)
    assert.is_true(b)
  end)

  it("names the type and the path of a value it cannot send", function()
    local co = coroutine.create(print)
    local ok, err = pcall(mp.encode, {1, {cb = co}})
    assert.is_false(ok)
    assert.matches("cannot send value at value%[2%]%.cb: thread", err)
    local fh = io.tmpfile()
    _, err = pcall(mp.encode, {file = fh})
    assert.matches("cannot send value at value%.file: userdata %(FILE%*%)", err)
    fh:close()
    _, err = pcall(mp.encode, {["odd key"] = coroutine.wrap(print)})
    assert.matches('cannot send value at value%["odd key"%]: C closure with upvalues', err)
    _, err = pcall(mp.encode, getmetatable(io.stdout).__index.read) -- a C function of no module
    assert.matches("cannot send value at value: C function %(not a field of a loaded module%)", err)
    _, err = pcall(mp.encode, function() return co end)
    assert.matches("cannot send value at value%[upvalue co%]: thread", err)
    _, err = pcall(mp.encode, setmetatable({}, {__index = {co}}))
    assert.matches("cannot send value at value%[metatable%]%.__index%[1%]: thread", err)
  end)

  it("encodes right from the first call of a fresh process (regression)", function()
    local H = require "helpers"
    local out, rc = H.sh([[lua5.4 -e 'package.cpath = "./build/?.so;" .. package.cpath
      local mp = require "mpengine"
      local t = mp.decode(mp.encode({1, "two"}))
      io.write(t[1], t[2])']])
    assert.are.equal(0, rc)
    assert.are.equal("1two", out)
  end)

  it("seals exactly the messages that carry more than plain data", function()
    local sealed = {function() end, {string}, {string.format}, setmetatable({}, {}), mp.Lock(), {mp.Queue()}}
    for _, v in ipairs(sealed) do
      local s = mp.encode(v)
      assert.are.equal("\xd7\x08", s:sub(1, 2))
      assert.is_not_nil(mp.decode(s))
      assert.has_error(function() mp.decode(s:sub(11)) end) -- the body alone
    end
    local shared = {1}
    for _, v in ipairs{1, "s", {1, {2}}, {a = shared, b = shared}} do
      assert.are_not.equal("\xd7", mp.encode(v):sub(1, 1))
    end
  end)

  it("decodes large and nested tables exactly within its memory budget", function()
    local big, nested = {}, {}
    for i = 1, 20000 do big[i] = i end
    for i = 1, 200 do nested[i] = {i, {x = i, y = {i}}, ("s"):rep(i % 7)} end
    local m = {}
    for i = 1, 5000 do m["k" .. i] = {i} end
    assert.are.same(big, rt(big))
    assert.are.same(nested, rt(nested))
    assert.are.same(m, rt(m))
    assert.are.same({{}, {{}}, {a = {}}}, rt({{}, {{}}, {a = {}}}))
  end)

  it("raises at one level past the nesting limit, for tables and functions (issue 10, 5)", function()
    for _, n in ipairs{100, 121, 122, 300} do
      local t = {}
      local c = t
      for _ = 1, n do c[1] = {} c = c[1] end
      local f = function() return 0 end
      for _ = 1, n do local g = f f = function() return g() end end
      for _, v in ipairs{t, f, {k = t}} do
        local ok, err = pcall(mp.encode, v)
        if n == 100 then assert.is_true(ok, err) end
        if n > 120 then
          assert.is_false(ok)
          assert.matches("nested too deeply", err)
        end
      end
    end
    collectgarbage()
  end)

  it("refuses a malformed message with a clear error", function()
    for _, bad in ipairs{"", "\xc1", "\x92\x01", "\xd6\x01\0\0\0\9", "\xdb\xff\xff\xff\xff"} do
      local ok, err = pcall(mp.decode, bad)
      assert.is_false(ok)
      assert.matches("malformed message", err)
    end
  end)

  it("an object in a table that starts as a list and turns out a map travels with one reference", function()
    -- {v, [3] = v}: the list encoding meets key 3 and starts over as a map;
    -- what it listed before must not be counted twice (the Value would then
    -- outlive every handle, until the end of the run).
    local function held(shape)
      collectgarbage()
      collectgarbage()
      local used0 = mp.arena_stats()
      do
        local a, b = mp.Pipe()
        local v = mp.Value("i", 7)
        a:send(shape(v))
        local got = b:recv(10)
        assert.are.equal(7, got[1].value)
        a:close()
        b:close()
      end
      collectgarbage()
      collectgarbage()
      return (mp.arena_stats()) - used0
    end
    held(function(v) return {v, v} end) -- the arena's own first allocations
    assert.are.equal(0, held(function(v) return {v, v} end))
    assert.are.equal(0, held(function(v) return {v, [3] = v} end))
    assert.are.equal(0, held(function(v) return {v, [3] = "x"} end))
  end)
end)
