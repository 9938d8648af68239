-- common.lua - what the benchmarks share: medians, running Python's
-- multiprocessing on the same machine in the same run, printing a table.
local mp = require "mpengine"
local cjson = require "cjson"

local B = {}

function B.median(xs)
  local t = {}
  for i, x in ipairs(xs) do t[i] = x end
  table.sort(t)
  local n = #t
  if n == 0 then return 0 / 0 end
  if n % 2 == 1 then return t[(n + 1) // 2] end
  return (t[n // 2] + t[n // 2 + 1]) / 2
end

-- Times f() `rounds` times; returns the median seconds.
function B.time_median(rounds, f)
  local xs = {}
  for i = 1, rounds do
    local t0 = mp.time()
    f()
    xs[i] = mp.time() - t0
  end
  return B.median(xs)
end

-- Runs a Python program that prints one JSON object; returns it, or nil
-- and why when python3 is missing or fails.
function B.python(code)
  if os.getenv("MPENGINE_BENCH_NO_PYTHON") then return nil, "skipped" end
  local ok = os.execute("command -v python3 >/dev/null 2>&1")
  if not ok then return nil, "python3 not found" end
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  local p = io.popen("python3 " .. path .. " 2>&1")
  local out = p:read("a")
  p:close()
  os.remove(path)
  local json = out:match("(%b{})%s*$")
  if not json then return nil, "python failed: " .. out end
  return cjson.decode(json)
end

-- Prints rows {name, ours, python, unit, higher_is_better, target}.
function B.report(title, rows)
  print(("\n%s"):format(title))
  print(("%-34s %14s %14s %9s  %s"):format("measure", "mpengine", "python", "ratio", "target"))
  for _, r in ipairs(rows) do
    local name, ours, py, unit, higher, target = table.unpack(r)
    local ratio = "-"
    if py and py == py and py > 0 and ours > 0 then
      ratio = ("%.1fx"):format(higher and ours / py or py / ours)
    end
    local function fmt(v)
      if not v or v ~= v then return "n/a" end
      return ("%.3f %s"):format(v, unit)
    end
    print(("%-34s %14s %14s %9s  %s"):format(name, fmt(ours), fmt(py), ratio, target or ""))
  end
end

return B
