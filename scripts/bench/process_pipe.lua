-- process_pipe.lua - process start+join latency, pipe round trip and pipe
-- bandwidth (64 KiB and 1 MiB messages), beside Python's multiprocessing.
--
--   mpengine run scripts/bench/process_pipe.lua [ROUNDS]
--
-- Targets on a 2-core machine: start+join <= 1.5x a bare fork + waitpid
-- from this same process (tests/bench_fork.so), the two alternated in
-- blocks in the same run, each charged its own copy-on-write aftermath (see
-- start_join; the probe's fork of a tiny C program is printed as the floor
-- too); 1 MiB messages through a pipe >= 1.5 GB/s.
local mp = require "mpengine"
local B = require "common"

local M = {}

-- The bare fork + waitpid of this Lua process (tests/bench_fork.c), and
-- the same with a child that calls a Lua function; or nil.
local function bare_fork()
  local path = B.test_program("bench_fork.so")
  local open = path and package.loadlib(path, "luaopen_bench_fork")
  local bf = open and open()
  if bf then return bf.fork_wait, bf.fork_call end
end

-- Start+join and a bare fork + waitpid of this same process (nil without
-- tests/bench_fork.so), alternated in blocks of BLOCK and each block timed
-- whole: the cost per round of a loop doing only that. A fork's cost runs
-- on after it returns: every page the parent writes next (the Lua stack, the
-- loop's variables) was made read-only by the fork and is copied or taken
-- back on the first write. Timed per round, with the bare fork timed inside
-- C, those writes fell outside the bare fork's time, and inside the next
-- start+join's. Returns the medians of the blocks' means, and the ratio the
-- old way (per round, bare fork timed inside C) for comparison, and the
-- median of a bare fork whose child calls an empty Lua function (the least
-- a child that runs Lua costs: liblua's code mapped in, the Lua stack).
local BLOCK = 10
local function start_join(rounds)
  local fork_wait, fork_call = bare_fork()
  local empty = function() end
  local function once()
    local p = mp.Process{target = function() end}
    p:start()
    p:join()
  end
  local sj, fw, fc = {}, {}, {}
  for b = 1, math.max(5, rounds // BLOCK) do
    local t0 = mp.time()
    for _ = 1, BLOCK do once() end
    sj[b] = (mp.time() - t0) / BLOCK
    if fork_wait then
      t0 = mp.time()
      for _ = 1, BLOCK do assert(fork_wait()) end
      fw[b] = (mp.time() - t0) / BLOCK
      t0 = mp.time()
      for _ = 1, BLOCK do assert(fork_call(empty)) end
      fc[b] = (mp.time() - t0) / BLOCK
    end
  end
  if not fork_wait then return B.median(sj) end
  local old_sj, old_fw = {}, {}
  for i = 1, math.max(20, rounds // 2) do
    local t0 = mp.time()
    once()
    old_sj[i] = mp.time() - t0
    old_fw[i] = assert(fork_wait())
  end
  return B.median(sj), B.median(fw), B.median(old_sj) / B.median(old_fw), B.median(fc)
end

local function round_trip(rounds)
  local a, b = mp.Pipe()
  local p = mp.Process{target = function(c)
    while true do
      local v = c:recv()
      if v == nil or v == false then return end
      c:send(v)
    end
  end, args = {b}}
  p:start()
  b:close()
  for _ = 1, 100 do a:send(1) a:recv() end -- warm up
  local med = B.time_median(rounds, function() a:send(1) a:recv() end)
  a:send(false)
  p:join()
  return med
end

-- GB/s moving `count` messages of `size` bytes one way, median of 5 runs.
local function bandwidth(size, count)
  local msg = ("x"):rep(size)
  local r, w = mp.Pipe(false)
  local ack_r, ack_w = mp.Pipe(false)
  local p = mp.Process{target = function(rc, ack)
    while true do
      for _ = 1, count do
        local m = rc:recv_bytes()
        if not m then return end
      end
      ack:send(true)
    end
  end, args = {r, ack_w}}
  p:start()
  r:close(); ack_w:close()
  local t = B.time_median(5, function()
    for _ = 1, count do w:send_bytes(msg) end
    ack_r:recv()
  end)
  w:close()
  p:join()
  return size * count / t / 1e9
end

local PY = [[
import json, multiprocessing as mp, statistics, sys, time
ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else %d
def noop(): pass
def echo(c):
    while True:
        v = c.recv()
        if v is False: return
        c.send(v)
def sink(r, ack, count):
    while True:
        for _ in range(count):
            m = r.recv_bytes()
            if not m: return
        ack.send(True)
def med(f, n):
    xs = []
    for _ in range(n):
        t = time.monotonic(); f(); xs.append(time.monotonic() - t)
    return statistics.median(xs)
def sj():
    p = mp.Process(target=noop); p.start(); p.join()
def bw(size, count):
    msg = b"x" * size
    r, w = mp.Pipe(False); ar, aw = mp.Pipe(False)
    p = mp.Process(target=sink, args=(r, aw, count)); p.start()
    def run():
        for _ in range(count): w.send_bytes(msg)
        ar.recv()
    t = med(run, 5)
    w.send_bytes(b""); p.join()
    return size * count / t / 1e9
if __name__ == "__main__":
    mp.set_start_method("fork")
    out = {"start_join": med(sj, max(20, ROUNDS // 10))}
    a, b = mp.Pipe()
    p = mp.Process(target=echo, args=(b,)); p.start()
    for _ in range(100): a.send(1); a.recv()
    def rt(): a.send(1); a.recv()
    out["round_trip"] = med(rt, ROUNDS)
    a.send(False); p.join()
    out["bw64k"] = bw(65536, 2000)
    out["bw1m"] = bw(1 << 20, 300)
    print(json.dumps(out))
]]

function M.main(rounds)
  rounds = tonumber(rounds) or 2000
  local sj, fw, old_ratio, fc = start_join(math.max(50, rounds // 10))
  local rt = round_trip(rounds)
  local bw64 = bandwidth(65536, 2000)
  local bw1m = bandwidth(1 << 20, 300)
  local py, why = B.python(PY:format(rounds))
  if not py then print("python: " .. why) py = {} end
  local rows = {
    {"start+join, median", sj * 1e6, py.start_join and py.start_join * 1e6, "us", false,
     fw and ("<= 1.5x fork+waitpid here: %.2fx (per round, bare fork timed in C: %.2fx)"):format(sj / fw, old_ratio)
       or "<= 1.5x fork+waitpid", "fork"},
    {"pipe round trip, median", rt * 1e6, py.round_trip and py.round_trip * 1e6, "us", false, "",
     "pipe"},
    {"pipe 64 KiB messages", bw64, py.bw64k, "GB/s", true, "", "copy2", 65536},
    {"pipe 1 MiB messages", bw1m, py.bw1m, "GB/s", true, ">= 1.5 GB/s", "copy2", 1 << 20},
  }
  if fw then -- (without tests/bench_fork.so, no row: the report's rows hold no NaN)
    table.insert(rows, 2, {"fork+waitpid of this Lua process", fw * 1e6, nil, "us", false,
      "the floor of start+join", "fork"})
    table.insert(rows, 3, {"fork+waitpid, the child runs Lua", fc * 1e6, nil, "us", false,
      ("start+join is %.2fx this"):format(sj / fc), "fork"})
  end
  B.report(("processes and pipes (%d CPUs)"):format(mp.cpu_count()), rows)
end

return M
