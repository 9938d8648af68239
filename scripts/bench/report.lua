-- report.lua - every benchmark, on an idle machine and with one CPU kept
-- busy, beside Python's multiprocessing and the machine's floors; writes a
-- Markdown report and an SVG chart.
--
--   mpengine run scripts/bench/report.lua [REPEAT] [OUTDIR]
--
-- REPEAT (default 2) runs of each benchmark in each mode; the report gives
-- the median of the runs' figures and their range. OUTDIR defaults to
-- build/bench: report.md, chart.svg, rows.json (every row of every run).
-- REPEAT 0 runs nothing and rebuilds the report from OUTDIR/rows.json (with
-- MPENGINE_FLOORS set, with those floors instead of the run's).
--
-- Loaded mode: before each benchmark the report starts an unrelated busy
-- program, `sh -c 'while :; do :; done'`, pinned with taskset to the last
-- CPU this process may use (unpinned if taskset is missing), and kills it
-- when the benchmark ends. The floors are measured by tests/probe on the
-- idle machine, once per run of the report.
local mp = require "mpengine"
local cjson = require "cjson"
local B = require "common"

local M = {}

local BENCHES = {"process_pipe", "queue", "sync", "dict", "pool"}

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("a")
  p:close()
  return (out:gsub("%s+$", ""))
end

local function q(s) return "'" .. s:gsub("'", "'\\''") .. "'" end

-- Starts the busy program; returns its pid.
local function start_load()
  local cpu = mp.cpu_count() - 1
  local pin = os.execute("command -v taskset >/dev/null 2>&1") and ("taskset -c " .. cpu .. " ") or ""
  local pid = sh("sh -c " .. q(pin .. "sh -c 'while :; do :; done' >/dev/null 2>&1 & echo $!"))
  return assert(tonumber(pid), "could not start the load: " .. pid)
end

local function stop_load(pid) os.execute("kill " .. pid .. " 2>/dev/null") end

local function machine()
  local cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2-"):gsub("^%s+", "")
  local os_name = sh(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\"")
  return ("%d CPUs (%s), %s, %s, Linux %s, %s"):format(mp.cpu_count(), cpu ~= "" and cpu or "?",
    sh("free -g | awk '/Mem:/{print $2 \" GiB RAM\"}'"), os_name, sh("uname -r"),
    sh("python3 --version 2>&1") ~= "" and sh("python3 --version 2>&1") or "no python3")
end

-- ns per operation of a row's figure (nil for ratios such as a speedup).
local function ns_per_op(v, unit, bytes)
  if not v or v ~= v or v <= 0 then return nil end
  if unit == "M/s" then return 1e3 / v end
  if unit == "k/s" then return 1e6 / v end
  if unit == "GB/s" then return bytes and bytes / v end
  if unit == "us" then return v * 1e3 end
  if unit == "ms" then return v * 1e6 end
  if unit == "ns" then return v end
  return nil
end

local function range(xs)
  if #xs == 0 then return nil end
  local lo, hi = math.huge, -math.huge
  for _, x in ipairs(xs) do lo, hi = math.min(lo, x), math.max(hi, x) end
  return B.median(xs), lo, hi
end

local function fmt(v)
  if not v or v ~= v then return "n/a" end
  if v >= 100 then return ("%.0f"):format(v) end
  if v >= 10 then return ("%.1f"):format(v) end
  if v >= 1 then return ("%.2f"):format(v) end
  return ("%.3f"):format(v)
end

local function fmt_range(xs)
  local med, lo, hi = range(xs)
  if not med then return "n/a" end
  if #xs == 1 or fmt(lo) == fmt(hi) then return fmt(med) end
  return ("%s (%s-%s)"):format(fmt(med), fmt(lo), fmt(hi))
end

-- The chart: grouped bars per workload, time per operation, log scale.
local function svg(workloads, title, subtitle)
  local series = {
    {"mpengine, idle", "#1f77b4", "idle", "ours"}, {"mpengine, one CPU busy", "#9ecae1", "loaded", "ours"},
    {"Python, idle", "#d62728", "idle", "python"}, {"Python, one CPU busy", "#f4a6a6", "loaded", "python"},
    {"floor (idle)", "#555555", "idle", "floor"},
  }
  local groups = {}
  local lo, hi = math.huge, 0
  for _, w in ipairs(workloads) do
    local bars, any = {}, false
    for i, s in ipairs(series) do
      local r = w[s[3]]
      local v
      if r and s[4] == "floor" then v = r.floor
      elseif r and #r[s[4]] > 0 then v = B.median(r[s[4]]) end
      local ns = r and ns_per_op(v, w.unit, w.bytes)
      bars[i] = ns
      if ns then lo, hi, any = math.min(lo, ns), math.max(hi, ns), true end
    end
    if any then groups[#groups + 1] = {name = w.name, bars = bars} end
  end
  if #groups == 0 then return nil end
  local d0, d1 = math.floor(math.log(lo, 10)), math.ceil(math.log(hi, 10))
  if d1 == d0 then d1 = d0 + 1 end
  local bw, gap, left, top, plot_h = 11, 16, 70, 70, 320
  local gw = #series * bw + gap
  local width, height = left + #groups * gw + 130, top + plot_h + 150
  local function y(ns) return top + plot_h - (math.log(ns, 10) - d0) / (d1 - d0) * plot_h end
  local function esc(s) return (s:gsub("&", "&amp;"):gsub("<", "&lt;"):gsub(">", "&gt;")) end
  local o = {}
  local function add(fmtstr, ...) o[#o + 1] = fmtstr:format(...) end
  add('<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="11">',
    width, height)
  add('<rect width="100%%" height="100%%" fill="white"/>')
  add('<text x="%d" y="18" font-size="14" font-weight="bold">%s</text>', left, esc(title))
  add('<text x="%d" y="34">%s</text>', left, esc(subtitle))
  for i, s in ipairs(series) do
    local lx = left + (i - 1) * 175
    add('<rect x="%d" y="44" width="10" height="10" fill="%s"/><text x="%d" y="53">%s</text>', lx, s[2],
      lx + 14, esc(s[1]))
  end
  local names = {[0] = "1 ns", "10 ns", "100 ns", "1 µs", "10 µs", "100 µs", "1 ms", "10 ms", "100 ms", "1 s"}
  for d = d0, d1 do
    local yy = y(10 ^ d)
    add('<line x1="%d" x2="%d" y1="%.1f" y2="%.1f" stroke="#ddd"/>', left, width - 130, yy, yy)
    add('<text x="%d" y="%.1f" text-anchor="end">%s</text>', left - 6, yy + 4, names[d] or ("1e%d ns"):format(d))
  end
  add('<text transform="translate(16,%d) rotate(-90)" text-anchor="middle">%s</text>', top + plot_h // 2,
    "time per operation (log scale, lower is better)")
  for g, grp in ipairs(groups) do
    local gx = left + (g - 1) * gw + gap // 2
    for i = 1, #series do
      local ns = grp.bars[i]
      if ns then
        local yy = y(ns)
        add('<rect x="%d" y="%.1f" width="%d" height="%.1f" fill="%s"><title>%s: %s ns</title></rect>',
          gx + (i - 1) * bw, yy, bw - 1, top + plot_h - yy, series[i][2], esc(series[i][1]), fmt(ns))
      end
    end
    local cx = gx + #series * bw / 2
    add('<text transform="translate(%.1f,%d) rotate(40)" text-anchor="start">%s</text>', cx - 10,
      top + plot_h + 14, esc(grp.name))
  end
  add('<line x1="%d" x2="%d" y1="%d" y2="%d" stroke="black"/>', left, width - 130, top + plot_h, top + plot_h)
  add("</svg>")
  return table.concat(o, "\n") .. "\n"
end

function M.main(repeat_n, outdir)
  repeat_n = tonumber(repeat_n) or 2
  outdir = outdir or "build/bench"
  os.execute("mkdir -p " .. q(outdir))
  local exe = sh("readlink /proc/$PPID/exe")
  local here = (arg and arg[0] or "scripts/bench/report.lua"):match("^(.*)/[^/]*$") or "."
  local floors, why = B.floors()
  if not floors then print("floors: " .. why) end
  local floors_json = floors and cjson.encode(floors) or "{}"
  local rows_path = outdir .. "/rows.json"
  local when, desc = os.date("!%Y-%m-%d %H:%M UTC"), machine()
  local rebuild = repeat_n == 0
  local pinned = mp.cpu_count() > 1 and os.execute("command -v taskset >/dev/null 2>&1") and true or false
  if rebuild then -- rebuild the report from the rows of an earlier run
    local meta = cjson.decode(assert(io.open(rows_path)):read("l")).meta
    when, desc, pinned, repeat_n = meta.when, meta.machine, meta.pinned, meta.repeat_n
    floors = meta.floors ~= cjson.null and meta.floors or nil
    if os.getenv("MPENGINE_FLOORS") then floors = B.floors() end -- floors measured again
  else
    local dst = assert(io.open(rows_path, "w"))
    dst:write(cjson.encode{meta = {when = when, machine = desc, repeat_n = repeat_n,
      floors = floors or cjson.null, pinned = pinned}}, "\n")
    dst:close()
  end
  for _, mode in ipairs(rebuild and {} or {"idle", "loaded"}) do
    for rep = 1, repeat_n do
      for _, b in ipairs(BENCHES) do
        io.stderr:write(("report: %s, run %d/%d, %s\n"):format(mode, rep, repeat_n, b))
        local rows_tmp = outdir .. "/rows.tmp"
        os.remove(rows_tmp)
        local pid
        if mode == "loaded" then pid = start_load() end
        local ok = os.execute(("MPENGINE_FLOORS=%s MPENGINE_BENCH_OUT=%s %s run %s >&2"):format(q(floors_json),
          q(rows_tmp), q(exe), q(here .. "/" .. b .. ".lua")))
        if pid then stop_load(pid) end
        if not ok then io.stderr:write("report: " .. b .. " failed\n") end
        local src, dst = io.open(rows_tmp), assert(io.open(rows_path, "a"))
        for line in src and src:lines() or function() end do
          local r = cjson.decode(line)
          r.mode, r.run, r.bench = mode, rep, b
          dst:write(cjson.encode(r), "\n")
        end
        if src then src:close() end
        dst:close()
        os.remove(rows_tmp)
      end
    end
  end
  -- aggregate: one workload per row name, with the figures of every run
  local workloads, by_name = {}, {}
  for line in io.lines(rows_path) do
    local r = cjson.decode(line)
    if r.meta then goto next end
    local w = by_name[r.name]
    if not w then
      w = {name = r.name, unit = r.unit, higher = r.higher, bytes = r.bytes ~= cjson.null and r.bytes or nil}
      by_name[r.name] = w
      workloads[#workloads + 1] = w
    end
    local m = w[r.mode] or {ours = {}, python = {}}
    w[r.mode] = m
    m.ours[#m.ours + 1] = r.ours
    if r.python ~= cjson.null then m.python[#m.python + 1] = r.python end
    if r.floor ~= cjson.null then m.floor = r.floor end
    if rebuild and r.floor_kind and floors then m.floor = B.floor(r.floor_kind) end
    ::next::
  end
  local md = {}
  local function add(s) md[#md + 1] = s end
  add("# mpengine benchmark report")
  add("")
  add(("%s, on %s."):format(when, desc))
  add("")
  add(("Each benchmark ran %d times idle and %d times with one CPU kept busy by an unrelated program "
    .. "(`sh -c 'while :; do :; done'`%s). Figures: median of the runs (range). Ratio: how many times "
    .. "better than Python. x floor: how many times the machine's floor (tests/probe) our cost is.")
    :format(repeat_n, repeat_n, pinned and ", pinned with taskset to the last CPU" or ""))
  add("")
  if rebuild and os.getenv("MPENGINE_FLOORS") then
    add("The floors below were measured apart from the benchmark runs (given in MPENGINE_FLOORS).")
    add("")
  end
  if floors then
    add("| floor | value |")
    add("|---|---|")
    add(("| cache-line round trip between two processes | %s ns |"):format(fmt(floors.cacheline_rt_ns)))
    add(("| futex round trip | %s µs |"):format(fmt(floors.futex_rt_ns / 1e3)))
    if floors.futex_rt_1cpu_ns then
      add(("| futex round trip, both processes on one CPU | %s µs |"):format(fmt(floors.futex_rt_1cpu_ns / 1e3)))
    end
    add(("| pipe round trip | %s µs |"):format(fmt(floors.pipe_rt_ns / 1e3)))
    add(("| fork + waitpid | %s ms |"):format(fmt(floors.fork_wait_ns / 1e6)))
    add(("| memcpy | %s GB/s |"):format(fmt(floors.memcpy_gbps)))
    add("")
  end
  add("| workload | machine | mpengine | Python | ratio | floor | x floor |")
  add("|---|---|---|---|---|---|---|")
  for _, w in ipairs(workloads) do
    for _, mode in ipairs{"idle", "loaded"} do
      local m = w[mode]
      if m then
        local ours, py = B.median(m.ours), #m.python > 0 and B.median(m.python) or nil
        local ratio = py and py > 0 and ours > 0 and ("%.1fx"):format(w.higher and ours / py or py / ours) or "-"
        local far = m.floor and ours > 0 and ("%.1fx"):format(w.higher and m.floor / ours or ours / m.floor) or "-"
        add(("| %s | %s | %s %s | %s | %s | %s | %s |"):format(w.name, mode == "idle" and "idle" or "one CPU busy",
          fmt_range(m.ours), w.unit, #m.python > 0 and fmt_range(m.python) .. " " .. w.unit or "n/a", ratio,
          m.floor and fmt(m.floor) .. " " .. w.unit or "-", far))
      end
    end
  end
  add("")
  add("Floors per workload: small messages and locked increments, one cache line moved one way per "
    .. "operation (2 / round trip); bandwidths, two copies at memcpy speed; pipe round trip, the probe's "
    .. "one-byte pipe round trip; `apply`, a futex round trip; start+join, fork+waitpid; speedup, the "
    .. "number of CPUs. A floor of small messages can be beaten by batching several per transfer.")
  local f = assert(io.open(outdir .. "/report.md", "w"))
  f:write(table.concat(md, "\n"), "\n")
  f:close()
  local chart = svg(workloads, "mpengine vs Python multiprocessing vs the machine's floor",
    ("%s; %s"):format(when, desc))
  if chart then
    f = assert(io.open(outdir .. "/chart.svg", "w"))
    f:write(chart)
    f:close()
  end
  print(table.concat(md, "\n"))
  print(("\nwrote %s/report.md and %s/chart.svg"):format(outdir, outdir))
  return true
end

return M
