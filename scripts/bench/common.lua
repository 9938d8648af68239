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

-- A program built with the tests (tests/NAME beside the running mpengine
-- command, or build/tests/NAME), or nil.
function B.test_program(name)
  local p = io.popen("readlink /proc/$PPID/exe 2>/dev/null")
  local exe = p:read("l") or ""
  p:close()
  for _, cand in ipairs{(exe:match("^(.*)/[^/]*$") or ".") .. "/tests/" .. name, "build/tests/" .. name} do
    local f = io.open(cand)
    if f then f:close() return cand end
  end
  return nil
end

-- The machine's floors (tests/probe.c): cache-line, futex and pipe round
-- trips in ns, fork+waitpid in ns, memcpy in GB/s. Read from
-- MPENGINE_FLOORS (a JSON object, as the report passes it), else measured
-- by running the probe: MPENGINE_PROBE, or tests/probe beside the running
-- mpengine command, or build/tests/probe. Nil and why when there is none.
local floors, floors_why
function B.floors()
  if floors or floors_why then return floors, floors_why end
  local json = os.getenv("MPENGINE_FLOORS")
  if not json then
    local probe = os.getenv("MPENGINE_PROBE")
    probe = probe or B.test_program("probe")
    if probe then
      local p = io.popen(probe .. " 2>/dev/null")
      json = p:read("a")
      p:close()
    end
  end
  local ok, t = pcall(cjson.decode, json and json:match("%b{}") or "")
  if ok and type(t) == "table" then floors = t else floors_why = "no probe (build the tests)" end
  return floors, floors_why
end

-- The floor of a workload, in the unit its row uses, from the floors f.
-- kind: "handoff" (one cache line one way per operation: M/s), "futex",
-- "pipe", "fork" (round trips: us), "copy2" (two copies of the bytes: GB/s).
function B.floor(kind)
  local f = B.floors()
  if not f then return nil end
  if kind == "handoff" then return 2e3 / f.cacheline_rt_ns end
  if kind == "futex" then return f.futex_rt_ns / 1e3 end
  if kind == "pipe" then return f.pipe_rt_ns / 1e3 end
  if kind == "fork" then return f.fork_wait_ns / 1e3 end
  if kind == "copy2" then return f.memcpy_gbps / 2 end
  return nil
end

-- Prints rows {name, ours, python, unit, higher_is_better, target, floor,
-- bytes_per_op}: each figure beside Python's and beside the machine's floor
-- ("x floor": how many times the floor's cost ours is). floor is a number,
-- or a kind for B.floor (the report can then recompute it). With
-- MPENGINE_BENCH_OUT set, also appends each row as a JSON line to that file
-- (the report reads them).
function B.report(title, rows)
  print(("\n%s"):format(title))
  print(("%-34s %14s %14s %9s %14s %8s  %s"):format("measure", "mpengine", "python", "ratio",
    "floor", "x floor", "target"))
  local out = os.getenv("MPENGINE_BENCH_OUT")
  local f = out and assert(io.open(out, "a"))
  for _, r in ipairs(rows) do
    local name, ours, py, unit, higher, target, floor, bytes = table.unpack(r, 1, 8)
    local kind
    if type(floor) == "string" then kind, floor = floor, B.floor(floor) end
    local ratio, far = "-", "-"
    if py and py == py and py > 0 and ours > 0 then
      ratio = ("%.1fx"):format(higher and ours / py or py / ours)
    end
    if floor and floor > 0 and ours > 0 then
      far = ("%.1fx"):format(higher and floor / ours or ours / floor)
    end
    local function fmt(v)
      if not v or v ~= v then return "n/a" end
      return ("%.3f %s"):format(v, unit)
    end
    print(("%-34s %14s %14s %9s %14s %8s  %s"):format(name, fmt(ours), fmt(py), ratio, fmt(floor),
      far, target or ""))
    if f then
      f:write(cjson.encode{title = title, name = name, ours = ours, python = py or cjson.null,
        unit = unit, higher = higher and true or false, floor = floor or cjson.null, floor_kind = kind,
        bytes = bytes or cjson.null}, "\n")
    end
  end
  if f then f:close() end
end

return B
