-- pool_worker.lua - the worker side of mp.Pool (pool.lua is the parent).
--
-- A worker takes batches from its own inbox: {fid, star, timed, cids,
-- counts, items}, chunks of one job with their items laid end to end, and
-- function definitions {fns} the first time an id is used. It stamps
-- (chunk, task, start time) in its slot of a shared Array, at every task
-- when tasks are timed and once per BLOCK otherwise, so the parent can say
-- which task a dead or slow worker held (or rerun a chunk to find out). Results go back
-- through the shared results queue, a reply per batch (or every 2 ms).
local mp = ...

local STAMP = 3 -- stamp fields per worker slot: chunk id, task index, start time
local BLOCK = 64 -- untimed tasks are stamped once per this many
local unpack = table.unpack

local memory_limit_of_this_worker

-- Lua calls no message handler for a memory error: say what happened here.
local function explain(err)
  if err == "not enough memory" and memory_limit_of_this_worker then
    return ("Pool: the task ran out of memory (the pool's memory_limit is %d bytes a worker)")
      :format(memory_limit_of_this_worker)
  end
  return err
end

local function describe(e)
  if type(e) == "string" then return e end
  local mt = getmetatable(e)
  if mt and mt.__tostring then return tostring(e) end
  if type(e) == "number" or type(e) == "boolean" then return tostring(e) end
  return ("(error object is a %s value)"):format(type(e))
end

-- The worker's own frames only: cut where the pool called the task.
local function frames(level)
  local tb = debug.traceback("", level + 1):gsub("^\nstack traceback:\n", "", 1)
  return (tb:gsub("\n\t[^\n]*mpengine%.pool_worker:.*$", ""))
end

-- The initializer's error: one string.
local function traceback(e)
  return describe(e) .. "\nstack traceback:\n" .. frames(2)
end

-- A task's error: {msg, tb [, value]}, value when it is not a string and
-- can travel (the parent raises it in a TaskError).
local function task_failure(e)
  local r = {msg = explain(describe(e)), tb = frames(2)}
  if type(e) ~= "string" and e ~= nil and pcall(mp.encode, e) then r.value = e end
  return r
end

-- Runs the n tasks of one chunk, items[pos+1 .. pos+n], into values[] (and
-- errors[], by position); the stamp names the chunk and the task running.
local function run_chunk(fn, star, timed, stamp, cid, items, pos, n, values, errors)
  stamp(cid, 0, timed)
  -- One protected call for the whole chunk; after an error, go on from the
  -- next task. `cur` says which task failed. The shared stamp, which the
  -- parent reads if this process dies, is written at every task when tasks
  -- are timed, else at the first task of every block of BLOCK: the parent
  -- then reruns a dead worker's chunk one task at a time, which names the
  -- task that kills its worker exactly at the cost of a stamp per BLOCK.
  local cur = 0
  local function run(from)
    for i = from, n do
      cur = i
      if timed or i % BLOCK == 1 or i == from then stamp(nil, i, timed) end
      local p = pos + i
      if star then values[p] = fn(unpack(items[p])) else values[p] = fn(items[p]) end
    end
    return n
  end
  local from = 1
  while from <= n do
    local ok, err = xpcall(run, task_failure, from)
    if ok then break end
    errors[pos + cur] = type(err) == "table" and err or explain(err) -- (no handler runs for a memory error)
    from = cur + 1
  end
  stamp(0, 0)
end

-- Sends one reply: the chunks cids[] (counts[] tasks each), their values
-- and errors by position from 1. A result that cannot travel fails its own
-- task only.
local function send_reply(results, msg)
  if pcall(results.put, results, msg) then return end
  local n = 0
  for _, c in ipairs(msg.counts) do n = n + c end
  for p = 1, n do
    local fine, why = pcall(mp.encode, msg.values[p])
    if not fine then
      msg.values[p] = nil
      msg.errors = msg.errors or {}
      msg.errors[p] = (why:gsub("at value", "at the result of task 1", 1))
    end
  end
  results:put(msg)
end

-- A batch of packed numbers: each chunk's items come from the shared Array
-- msg.pin and, when its results are numbers of the same kind with no error,
-- they go straight into msg.pout; only the others travel in the reply.
local function run_packed(fn, msg, stamp, slot, results)
  local t0 = mp.time()
  local r = {slot = slot, cids = {}, counts = {}, stored = {}, values = {}}
  local vpos = 0
  for k = 1, #msg.cids do
    local first, n = msg.firsts[k], msg.counts[k]
    local values, errors = mp._newtable(n), {}
    run_chunk(fn, false, msg.timed, stamp, msg.cids[k], msg.pin:slice(first, first + n - 1), 0, n, values, errors)
    local stored = next(errors) == nil and mp._pack(msg.pout, values, 1, n, first)
    r.cids[k], r.counts[k], r.stored[k] = msg.cids[k], n, stored
    if not stored then
      table.move(values, 1, n, vpos + 1, r.values)
      for p, e in pairs(errors) do
        r.errors = r.errors or {}
        r.errors[vpos + p] = e
      end
      vpos = vpos + n
    end
  end
  r.dt = (mp.time() - t0) / #msg.cids
  send_reply(results, r)
  return #msg.cids
end

-- The body of every worker process. A batch is {fid, star, timed, cids,
-- counts, items}: chunks of one job, their items laid end to end.
local function worker_main(slot, inbox, results, stamps, init, initargs, maxtasks, memory_limit, token)
  mp._pool_worker_of = token -- this process is a worker of that pool (pool.lua refuses to use it here)
  if memory_limit then
    memory_limit_of_this_worker = memory_limit
    local ok, why = mp._limit_memory(memory_limit)
    if not ok then
      results:put({init_error = "cannot set memory_limit: " .. tostring(why), slot = slot})
      return
    end
  end
  if init then
    local ok, err = xpcall(init, traceback, unpack(initargs or {}))
    if not ok then
      results:put({init_error = err, slot = slot})
      return
    end
  end
  local stamp = mp._stamper(stamps, (slot - 1) * STAMP)
  local fns, done = {}, 0
  for msg in inbox:iter() do
    if msg.fns then for id, fn in pairs(msg.fns) do fns[id] = fn end end
    if msg.pin then
      done = done + run_packed(fns[msg.fid], msg, stamp, slot, results)
      if maxtasks and done >= maxtasks then return end
    elseif msg.cids then
      local fn, star, timed, items = fns[msg.fid], msg.star, msg.timed, msg.items
      local values, errors = mp._newtable(#items), {}
      local pos, from, first_chunk = 0, 0, 1
      local t_reply = mp.time()
      local nchunks = #msg.cids
      for k = 1, nchunks do
        local n = msg.counts[k]
        run_chunk(fn, star, timed, stamp, msg.cids[k], items, pos, n, values, errors)
        pos = pos + n
        done = done + 1
        local now = mp.time()
        -- replies go together, unless the batch takes long
        if k == nchunks or now - t_reply > 0.002 then
          local r_errors
          for p, e in pairs(errors) do
            r_errors = r_errors or {}
            r_errors[p - from] = e
          end
          local whole = first_chunk == 1 and k == nchunks -- the usual case: no copies
          send_reply(results, {slot = slot,
                               cids = whole and msg.cids or table.move(msg.cids, first_chunk, k, 1, {}),
                               counts = whole and msg.counts or table.move(msg.counts, first_chunk, k, 1, {}),
                               values = whole and values or table.move(values, from + 1, pos, 1, {}),
                               errors = r_errors, dt = (now - t_reply) / (k - first_chunk + 1)})
          values, errors, from, first_chunk, t_reply = {}, {}, pos, k + 1, now
        end
      end
      if maxtasks and done >= maxtasks then return end
    end
    if msg.forget then fns = {} end
    if msg.quit then return end
  end
end

return worker_main
