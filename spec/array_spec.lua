-- array_spec.lua - Array runs of elements (slice, store), the methods an
-- Array offers, that the Pool left no helpers over Arrays, and typecode 'c'.
local mp = require "mpengine"

local function methods_of(a)
  local names = {}
  for k in pairs(getmetatable(a).methods) do names[#names + 1] = k end
  table.sort(names)
  return names
end

describe("Array slice and store", function()
  it("slice(i, j) reads elements i..j of every typecode; store(list, i) writes from i", function()
    for tc in ("bBhHiIlLqQ"):gmatch(".") do
      local a = mp.Array(tc, {1, 2, 3, 4, 5})
      assert.are.same({2, 3, 4}, a:slice(2, 4))
      assert.are.same({1, 2, 3, 4, 5}, a:slice())
      assert.are.same({4, 5}, a:slice(4))
      assert.are.same({}, a:slice(3, 2))
      a:store({7, 8}, 4)
      assert.are.same({1, 2, 3, 7, 8}, a:totable())
      a:store({9})
      assert.are.same({9, 2, 3, 7, 8}, a:totable())
      assert.are.equal("integer", math.type(a:slice(1, 1)[1]))
    end
    for tc in ("fd"):gmatch(".") do
      local a = mp.Array(tc, 3)
      a:store({1.5, 2, -0.25}, 1)
      assert.are.same({1.5, 2.0, -0.25}, a:slice(1, 3))
      assert.are.equal("float", math.type(a:slice(2, 2)[1]))
    end
    local big = mp.Array('q', {math.maxinteger, math.mininteger})
    assert.are.same({math.maxinteger, math.mininteger}, big:slice(1, 2))
  end)

  it("a run outside the Array raises and touches nothing", function()
    local a = mp.Array('b', 2)
    assert.has_error(function() a:store({1, 2, 3, 4}, 1) end, "Array: elements 1..4 out of range (1..2)")
    assert.has_error(function() a:store({1}, 3) end, "Array: elements 3..3 out of range (1..2)")
    assert.has_error(function() a:store({1}, 0) end, "Array: elements 0..0 out of range (1..2)")
    assert.has_error(function() a:slice(0, 1) end, "Array: elements 0..1 out of range (1..2)")
    assert.has_error(function() a:slice(1, 3) end, "Array: elements 1..3 out of range (1..2)")
    assert.has_error(function() a:slice(3, 1) end)
    assert.has_error(function() a:slice(2, 0) end)
    assert.are.same({0, 0}, a:totable())
    -- the next allocation is healthy (a write past the end corrupted it before)
    local b = mp.Array('q', {5, 6})
    assert.are.same({5, 6}, b:totable())
  end)

  it("store checks every element first: a wrong type stores nothing, an out-of-range number is undone", function()
    local a = mp.Array('b', {1, 2, 3})
    assert.has_error(function() a:store({4, "x", 6}) end, "Array:store: number expected, got string (list[2])")
    assert.has_error(function() a:store({4, 5.5}) end, "Array:store: typecode 'b' holds integers, got 5.5 (list[2])")
    assert.are.same({1, 2, 3}, a:totable())
    assert.has_error(function() a:store({4, 5, 300}) end, "Array:store: 300 (list[3]) is out of range for typecode 'b'")
    assert.are.same({1, 2, 3}, a:totable())
  end)

  it("an Array has only its documented methods", function()
    assert.are.same({"add", "get_lock", "slice", "store", "totable"}, methods_of(mp.Array('i', 1)))
    assert.are.same({"add", "get_lock"}, methods_of(mp.Value('i', 1)))
    local a = mp.Array('b', 2)
    assert.is_nil(a._store)
    assert.is_nil(a._slice)
    assert.is_nil(a._into)
  end)

  it("the module has none of the Pool's old helpers over Arrays", function()
    for _, name in ipairs{"_pack", "_unpack", "_stamper", "_newtable", "_spin", "_in_child"} do
      assert.is_nil(mp[name], name)
    end
  end)

  it("slice and store are each one round of the lock: another process never sees half a store", function()
    local a = mp.Array('i', 64)
    local go, stop = mp.Event(), mp.Event()
    local p = mp.Process{target = function()
      local k, row = 0, {}
      go:set()
      while not stop:is_set() do
        k = k + 1
        for i = 1, 64 do row[i] = k end
        a:store(row)
      end
    end}
    p:start()
    assert.is_true(go:wait(30))
    local torn = 0
    for _ = 1, 2000 do
      local s = a:slice(1, 64)
      for i = 2, 64 do if s[i] ~= s[1] then torn = torn + 1 break end end
    end
    stop:set()
    p:join()
    assert.are.equal(0, p.exitcode)
    assert.are.equal(0, torn)
  end)
end)

describe("typecode 'c'", function()
  it("a Value and an Array of one-byte strings", function()
    local v = mp.Value('c', "x")
    assert.are.equal("x", v.value)
    assert.are.equal("c", v.typecode)
    v.value = "\0"
    assert.are.equal("\0", v.value)
    assert.are.equal("\0", mp.Value('c').value)
    local a = mp.Array('c', "hello")
    assert.are.equal(5, #a)
    assert.are.equal("e", a[2])
    a[1] = "j"
    assert.are.same({"j", "e", "l", "l", "o"}, a:totable())
    a:store({"x", "y"}, 4)
    assert.are.equal("jelxy", table.concat(a:slice(1, 5)))
    assert.are.same({"a", "b"}, mp.Array('c', {"a", "b"}):totable())
    assert.are.equal(256, #mp.Array('c', 256))
  end)

  it("a string of another length, or a number, raises", function()
    local v = mp.Value('c', "a")
    local msg = "Value: typecode 'c' holds one-byte strings, got a string of length %d"
    assert.has_error(function() v.value = "ab" end, msg:format(2))
    assert.has_error(function() v.value = "" end, msg:format(0))
    assert.has_error(function() v.value = 65 end, "Value: typecode 'c' holds one-byte strings, got number")
    assert.has_error(function() mp.Value('c', "ab") end)
    assert.has_error(function() v:add(1) end, "Value: add needs a number typecode, not 'c'")
    local a = mp.Array('c', 2)
    assert.has_error(function() a:add(1, 1) end, "Array: add needs a number typecode, not 'c'")
    assert.has_error(function() a[1] = "xy" end)
    assert.has_error(function() a:store({"x", "yz"}) end,
      "Array:store: typecode 'c' holds one-byte strings, got a string of length 2 (list[2])")
    assert.are.same({"\0", "\0"}, a:totable())
  end)

  it("travels to another process as 'c'", function()
    local a = mp.Array('c', "abc")
    local q = mp.Queue()
    local p = mp.Process{target = function() q:put({a.typecode, a[3]}) a[1] = "z" end}
    p:start()
    assert.are.same({"c", "c"}, q:get(30))
    p:join()
    assert.are.equal("z", a[1])
  end)
end)
