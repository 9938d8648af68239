-- load.lua - long runs: memory stays flat and throughput does not decay.
--
--   mpengine run scripts/bench/load.lua [TASKS] [MESSAGES]
--
-- 1. TASKS (default 1,000,000) tasks through pool:imap_unordered over a lazy
--    generator; 2. MESSAGES (default 10,000,000) small messages through a
--    Queue from a producer process. Every tenth of the way it prints the
--    rate of that tenth and the resident memory (VmRSS) of the parent and of
--    the other processes.
local mp = require "mpengine"

local M = {}

local function rss_kb(pid)
  local f = io.open(("/proc/%d/status"):format(pid))
  if not f then return 0 end
  local kb = f:read("a"):match("VmRSS:%s*(%d+)")
  f:close()
  return tonumber(kb) or 0
end

local function report(title, rows)
  print(("\n%s"):format(title))
  print(("%8s %12s %14s %16s"):format("done", "rate /s", "parent RSS MB", "others RSS MB"))
  for _, r in ipairs(rows) do
    print(("%7d%% %12.0f %14.1f %16s"):format(r[1], r[2], r[3] / 1024, r[4]))
  end
end

function M.tasks(n)
  local pool <close> = mp.Pool(2)
  local i = 0
  local function gen()
    i = i + 1
    if i <= n then return i end
  end
  local rows, done, sum = {}, 0, 0
  local step = n // 10
  local t0 = mp.time()
  for v in pool:imap_unordered(function(x) return x + 1 end, gen, 100) do
    done = done + 1
    sum = sum + v
    if done % step == 0 then
      local now = mp.time()
      local workers = {}
      for _, w in pairs(pool.workers) do workers[#workers + 1] = ("%.1f"):format(rss_kb(w.proc.pid) / 1024) end
      rows[#rows + 1] = {done * 100 // n, step / (now - t0), rss_kb(mp.getpid()), table.concat(workers, " ")}
      t0 = now
    end
  end
  assert(sum == n * (n + 1) // 2 + n, "a task result went missing")
  report(("%d tasks through imap_unordered (chunks of 100, lazy generator)"):format(n), rows)
  return rows
end

function M.messages(n)
  local q = mp.Queue(10000)
  local producer = mp.Process{target = function() for k = 1, n do q:put(k) end end}
  producer:start()
  local rows, step, t0, sum = {}, n // 10, mp.time(), 0
  for k = 1, n do
    sum = sum + q:get()
    if k % step == 0 then
      local now = mp.time()
      rows[#rows + 1] = {k * 100 // n, step / (now - t0), rss_kb(mp.getpid()),
                         ("%.1f"):format(rss_kb(producer.pid) / 1024)}
      t0 = now
    end
  end
  producer:join()
  assert(sum == n * (n + 1) // 2, "a message went missing")
  report(("%d small messages through a Queue(10000)"):format(n), rows)
  return rows
end

function M.main(tasks, messages)
  M.tasks(tonumber(tasks) or 1000000)
  M.messages(tonumber(messages) or 10000000)
  local used = mp.arena_stats()
  print(("\nshared arena in use at the end: %.1f MB"):format(used / 1048576))
end

return M
