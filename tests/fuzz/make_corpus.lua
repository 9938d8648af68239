-- make_corpus.lua - writes the fuzzer's seed corpus: encodings of every kind
-- of value the codec carries. Run: build/mpengine run tests/fuzz/make_corpus.lua
local mp = require "mpengine"
local dir = (arg[0]:match("^(.*)/") or ".") .. "/corpus/"
local shared = {1, 2}
local cyclic = {name = "cycle"}
cyclic.self = cyclic
local up = 10
local seeds = {
  int = 42, neg = -100000, big = math.maxinteger, float = 1.5, nan = 0 / 0, inf = math.huge,
  str = "hello", bin = "\0\1\2\255", long = ("x"):rep(300), bool = true,
  array = {1, 2, 3, "four", 5.5}, map = {a = 1, b = {c = {d = "deep"}}},
  sharing = {shared, shared}, cycle = cyclic,
  meta = setmetatable({x = 1}, {__index = {y = 2}}),
  fn = function(x) return x + up end, module = {s = string, f = string.format, out = io.stdout},
  queue = mp.Queue(), lock = mp.Lock(), value = mp.Value('i', 3),
}
for name, v in pairs(seeds) do
  local f = assert(io.open(dir .. name .. ".bin", "wb"))
  f:write(mp.encode(v))
  f:close()
end
print("wrote corpus to " .. dir)
