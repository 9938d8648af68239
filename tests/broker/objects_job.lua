-- objects_job.lua - what each "host" of objects_hosts_test.sh runs, with the
-- broker in MPENGINE_BROKER; objects are found by name on the broker.
--   counter ID N K         N processes x K increments: under the Lock, and v:add(1)
--   counts ID              prints "locked L added A"
--   hold ID LEASE          takes the Lock, prints "held FENCE", sleeps (its lease renewed)
--   take ID TIMEOUT        tries the Lock: "took FENCE" or "refused"
--   queue ID P C N OUT     P producers x N items, C consumers writing what they get
--                          to OUT.<pid>; the host whose producers end last closes the queue
--   jput ID LEASE N        puts 1..N in a JoinableQueue
--   jtake ID LEASE         takes one item, prints "took ITEM", never acknowledges it,
--                          and keeps using the broker (its heartbeat goes on)
--   jdrain ID LEASE N      takes N items (acknowledging each), then joins: "got A B ... joined"
local mp = require "mpengine"

local M = {}

local function named(ctor, id, what, ...) return ctor(..., {broker = true, name = id .. ":" .. what}) end

local function run_all(n, target)
  local ps = {}
  for i = 1, n do
    ps[i] = mp.Process{target = target, args = {i}}
    ps[i]:start()
  end
  for i = 1, n do
    ps[i]:join()
    assert(ps[i].exitcode == 0, "a process failed")
  end
end

function M.counter(id, n, k)
  local lock = named(mp.Lock, id, "lock")
  local locked, added = named(mp.Value, id, "locked", "i", 0), named(mp.Value, id, "added", "i", 0)
  run_all(tonumber(n), function()
    for _ = 1, tonumber(k) do
      lock:acquire()
      locked.value = locked.value + 1
      lock:release()
      added:add(1)
    end
  end)
end

function M.counts(id)
  local locked, added = named(mp.Value, id, "locked", "i", 0), named(mp.Value, id, "added", "i", 0)
  print(("locked %d added %d"):format(locked.value, added.value))
end

function M.hold(id, lease)
  local lock = mp.Lock{broker = true, name = id .. ":lease", lease = tonumber(lease)}
  assert(lock:acquire())
  print("held " .. lock.fence)
  io.stdout:flush()
  mp.sleep(600) -- no broker call: the process's renewing thread keeps the lease
end

function M.take(id, timeout)
  local lock = mp.Lock{broker = true, name = id .. ":lease", lease = 1}
  if lock:acquire(tonumber(timeout)) then
    print("took " .. lock.fence)
    lock:release()
  else
    print("refused")
  end
end

function M.queue(id, p, c, n, out)
  local q = named(mp.Queue, id, "q")
  local ended = named(mp.Value, id, "producers", "i", 0)
  local consumers = {}
  for i = 1, tonumber(c) do
    consumers[i] = mp.Process{target = function()
      local f = assert(io.open(out .. "." .. mp.getpid(), "w"))
      for v in q:iter() do f:write(v, "\n") end
      f:close()
    end}
    consumers[i]:start()
  end
  run_all(tonumber(p), function()
    local tag = mp.getpid() * 1000000
    for j = 1, tonumber(n) do q:put(tag + j) end
  end)
  if ended:add(tonumber(p)) == 4 then q:close() end
  for i = 1, #consumers do
    consumers[i]:join()
    assert(consumers[i].exitcode == 0, "a consumer failed")
  end
end

local function jq(id, lease) return mp.JoinableQueue{broker = true, name = id .. ":jq", lease = tonumber(lease)} end

function M.jput(id, lease, n)
  local q = jq(id, lease)
  for i = 1, tonumber(n) do q:put(i) end
end

function M.jtake(id, lease)
  local q = jq(id, lease)
  print("took " .. q:get())
  io.stdout:flush()
  while true do
    q:qsize()
    mp.sleep(0.05) -- pacing, not synchronisation
  end
end

function M.jdrain(id, lease, n)
  local q = jq(id, lease)
  local got = {}
  for i = 1, tonumber(n) do
    got[i] = assert(q:get(30))
    q:task_done()
  end
  table.sort(got)
  print("got " .. table.concat(got, " ") .. (q:join(30) and " joined" or " not joined"))
end

function M.main(what, ...)
  assert(mp.broker(), "run with MPENGINE_BROKER=URL")
  M[what](...)
end

return M
