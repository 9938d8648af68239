-- make_corpus.lua - writes the fuzzer's seed corpus: encodings of every kind
-- of value the codec carries, plain data and messages with functions,
-- modules, module fields, metatables and engine objects. A sealed message is
-- written without its seal: the fuzz target decodes every input twice, as it
-- is (untrusted) and sealed with its own run's key (fuzz_decode.c).
-- Run: build/mpengine run tests/fuzz/make_corpus.lua
local mp = require "mpengine"
local dir = (arg[0]:match("^(.*)/") or ".") .. "/corpus/"
local SEAL = 10 -- bytes of the seal: fixext8 (0xd7), type 8, the tag
local shared = {1, 2}
local cyclic = {name = "cycle"}
cyclic.self = cyclic
local up = 10
local Point = {}
Point.__index = Point
local function counter()
  local n = 0
  return {inc = function() n = n + 1 return n end, get = function() return n end}
end
local lock = mp.Lock()
local seeds = {
  int = 42, neg = -100000, big = math.maxinteger, float = 1.5, nan = 0 / 0, inf = math.huge,
  str = "hello", bin = "\0\1\2\255", long = ("x"):rep(300), bool = true,
  array = {1, 2, 3, "four", 5.5}, map = {a = 1, b = {c = {d = "deep"}}},
  sharing = {shared, shared}, cycle = cyclic,
  meta = setmetatable({x = 1}, {__index = {y = 2}}),
  meta_shared = {setmetatable({1}, Point), setmetatable({2}, Point), Point},
  meta_module = setmetatable({}, {__index = string}),
  fn = function(x) return x + up end, module = {s = string, f = string.format, out = io.stdout},
  modules = {string, table, math, mp, mp.Queue, _G},
  upjoin = counter(),
  queue = mp.Queue(), joinable = mp.JoinableQueue(), simple = mp.SimpleQueue(),
  lock = lock, rlock = mp.RLock(), value = mp.Value('i', 3), array_obj = mp.Array('d', 4),
  sem = mp.Semaphore(2), event = mp.Event(), cond = mp.Condition(lock),
  objects = {lock, lock, mp.Value('d', 1, {lock = lock}), {q = mp.Queue()}},
}
for name, v in pairs(seeds) do
  local bytes = mp.encode(v)
  if bytes:byte(1) == 0xd7 and bytes:byte(2) == 8 then bytes = bytes:sub(SEAL + 1) end
  local f = assert(io.open(dir .. name .. ".bin", "wb"))
  f:write(bytes)
  f:close()
end
print("wrote corpus to " .. dir)
