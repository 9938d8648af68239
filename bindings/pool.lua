-- pool.lua - mp.Pool: map over inputs on a set of worker processes.
--
-- Built into the mpengine module (loaded by lmodule.c) on top of the
-- engine's processes and queues. The design answers Python's known traps:
--
-- * Each worker has its own inbox queue and the parent decides which worker
--   gets which chunk, so the parent always knows who holds what. A worker
--   stamps (chunk, task, start time) in a shared Array as it goes. When a
--   worker dies (any signal, os.exit, out of memory) the parent first takes
--   every result already queued, then fails the task the stamp names with an
--   error that says how the worker died (or, in a chunk of untimed tasks,
--   reruns them one at a time to find it), sends the rest to other workers,
--   and starts a replacement. Nothing waits forever.
-- * A task that runs longer than `timeout` is killed the same way and fails
--   with a timeout error.
-- * Functions travel through the codec: closures, lambdas, upvalues. Each
--   distinct encoding is sent to a worker once and then named by an id.
-- * Errors carry the worker's message and traceback, and are raised where
--   the result is read. The pool goes on serving.
-- * A pool is used only from the process that made it: a copy of it that
--   travelled inside a task (a closure that captures the pool) raises at
--   once instead of feeding the real pool's queues.
-- * The parent is single-threaded: results, callbacks (in completion order)
--   and replacements are handled whenever the script waits on the pool (get,
--   wait, map, imap, join, ...).
local mp, worker_main, progress = ... -- worker_main: pool_worker.lua; progress: progress.lua

local QUEUED = 0.02      -- keep about this many seconds of work queued at each worker
local MAXDEPTH = 256     -- and at most this many chunks
local SLICE = 0.01       -- the parent looks at its workers at least this often
local STAMP = 3          -- stamp fields per worker slot: chunk id, task index, start time
local PACK_MIN = 4096    -- a list of numbers at least this long travels packed
local PACKED_CHUNK = 64  -- in chunks at least this big

local Pool = {}
Pool.__index = Pool
Pool.__name = "Pool"

local AsyncResult = {}
AsyncResult.__index = AsyncResult
AsyncResult.__name = "AsyncResult"

local signal_names = {[1] = "SIGHUP", [2] = "SIGINT", [3] = "SIGQUIT", [4] = "SIGILL", [6] = "SIGABRT",
                      [7] = "SIGBUS", [8] = "SIGFPE", [9] = "SIGKILL", [11] = "SIGSEGV", [13] = "SIGPIPE",
                      [14] = "SIGALRM", [15] = "SIGTERM", [10] = "SIGUSR1", [12] = "SIGUSR2"}

local function how_died(code)
  if code and code < 0 then
    local name = signal_names[-code]
    return ("was killed by signal %d%s"):format(-code, name and (" (" .. name .. ")") or "")
  end
  return ("exited with code %s"):format(tostring(code))
end

local progress_new, progress_draw, progress_total = progress.new, progress.draw, progress.total

-------------------------------------------------------------------- errors

local SOURCE = "=mpengine.pool"

-- Raises msg at the script's line that called the pool: the first Lua frame
-- outside this file (a misuse is the caller's, not the pool's). If the
-- script's frame is gone (a tail call) and the next is the module's own (the
-- worker's loop), the message goes without a position rather than a wrong one.
local function raise(msg)
  local level = 2
  while true do
    local info = debug.getinfo(level, "S")
    if not info then break end
    if info.what ~= "C" and info.source ~= SOURCE then
      if info.source:sub(1, 10) == "=mpengine." then level = 0 end
      break
    end
    level = level + 1
  end
  error(msg, level)
end

-- The public functions run protected, so that an interruption of the run
-- (SIGINT, SIGTERM), which the host raises at whatever line of this file is
-- running, reads as the documented bare message; any other error passes
-- through unchanged. Twice protected: when a wait in C raised the
-- interruption first, the host's hook, armed by the same signal, raises it
-- again at the next Lua instruction, which is the inner catcher's own.
local function rethrow(ok, ...)
  if ok then return ... end
  local err = ...
  if type(err) == "string" then err = err:match("^mpengine%.pool[%w_]*:%d+: (interrupted by [^\n]*)$") or err end
  error(err, 0)
end

local function api(f)
  local function inner(...) return rethrow(pcall(f, ...)) end
  return function(...) return rethrow(pcall(inner, ...)) end
end

-- A task's error as raised in the parent (and given to error_callback). e is
-- the pool's own reason (a string: the worker died, the task timed out, an
-- item could not be sent) or what the worker sent: {msg =, tb =, value =}.
-- A string error stays a string: its message, the task it came from, and the
-- worker's traceback, each labelled. A non-string error value (error(123),
-- error({code = 5})) comes back as a TaskError: the value itself in .value,
-- that text in .message, the task's index in .task; tostring gives the text.
local TaskError = {__name = "Pool.TaskError"}
TaskError.__index = TaskError
TaskError.__tostring = function(self)
  if self.caller then return self.message .. "\n" .. self.caller end
  return self.message
end

local function task_error(job, i, e)
  local where = job.kind == "apply" and "Pool: the task of apply failed"
    or ("Pool: task %d of %s failed"):format(i, job.kind)
  if type(e) ~= "table" then return ("%s\n%s"):format(tostring(e), where) end
  local text = ("%s\n%s; worker traceback:\n%s"):format(e.msg, where, e.tb or "")
  if e.value == nil then return text end
  return setmetatable({value = e.value, message = text, task = i}, TaskError)
end

-------------------------------------------------------------------- the pool

local pool_count = 0

-- Raises unless this is the process that made the pool.
local function check_owner(self)
  if self.pid ~= mp.getpid() then
    if mp._pool_worker_of == self.token then raise("Pool: cannot be used from one of its own workers") end
    raise("Pool: can only be used from the process that made it")
  end
end

local function check_pool(self, what)
  if getmetatable(self) ~= Pool then raise(("Pool expected, got %s"):format(type(self))) end
  check_owner(self)
  if self.state ~= "run" then
    raise(("Pool: cannot %s: the pool is %s"):format(what, self.state))
  end
  if self.broken then raise(self.broken) end
end

local function start_worker(self, slot)
  local inbox = mp.Queue()
  for k = 1, STAMP do self.stamps[(slot - 1) * STAMP + k] = 0 end
  local p = mp.Process{target = worker_main, name = ("PoolWorker-%d"):format(slot), daemon = true,
                       args = {slot, inbox, self.results, self.stamps, self.initializer, self.initargs,
                               self.maxtasks, self.memory_limit, self.token}}
  p:start()
  -- outstanding: cid -> order sent (a set, so taking one back is O(1)); held: how many
  self.workers[slot] = {proc = p, inbox = inbox, outstanding = {}, held = 0, sent = 0, fids = {},
                        dispatched = 0, finished = 0}
end

local known_options = {processes = true, initializer = true, initargs = true, maxtasksperchild = true,
                       timeout = true, memory_limit = true}

function mp.Pool(opts)
  local o = {}
  if type(opts) == "table" then
    for k in pairs(opts) do
      if not known_options[k] then
        error(("Pool: unknown option '%s' (expected processes, initializer, initargs, maxtasksperchild, "
          .. "timeout, memory_limit)"):format(tostring(k)), 2)
      end
    end
    o = opts
  elseif opts ~= nil then
    o = {processes = opts}
  end
  local n = o.processes
  if n == nil then n = tonumber(os.getenv("MPENGINE_WORKERS") or "") or mp.cpu_count() end
  if math.type(n) ~= "integer" or n < 1 then error("Pool: processes must be an integer >= 1", 2) end
  if o.initializer ~= nil and type(o.initializer) ~= "function" then
    error("Pool: initializer must be a function", 2)
  end
  if o.initargs ~= nil and type(o.initargs) ~= "table" then error("Pool: initargs must be a table", 2) end
  local maxtasks = o.maxtasksperchild
  if maxtasks ~= nil and (math.type(maxtasks) ~= "integer" or maxtasks < 1) then
    error("Pool: maxtasksperchild must be an integer >= 1", 2)
  end
  if o.timeout ~= nil and (type(o.timeout) ~= "number" or o.timeout ~= o.timeout or o.timeout <= 0) then
    error("Pool: timeout must be a number of seconds > 0", 2)
  end
  if o.memory_limit ~= nil and (math.type(o.memory_limit) ~= "integer" or o.memory_limit < 1) then
    error("Pool: memory_limit must be a number of bytes > 0", 2)
  end
  pool_count = pool_count + 1
  local self = setmetatable({
    pid = mp.getpid(), token = ("%d.%d"):format(mp.getpid(), pool_count),
    n = n, initializer = o.initializer, initargs = o.initargs, maxtasks = maxtasks, timeout = o.timeout,
    memory_limit = o.memory_limit,
    results = mp.Queue(), stamps = mp.Array('d', n * STAMP, {lock = false}),
    workers = {}, chunks = {}, pending = {}, phead = 1, ptail = 0, next_cid = 0,
    fids = {}, nfids = 0, next_fid = 0, jobs = {}, crashes = 0, chunk_time = nil, njobs = 0,
    state = "run", last_check = 0,
    progress_all = os.getenv("MPENGINE_PROGRESS") == "1", cpus = mp.cpu_count(), spin = mp._spin(),
  }, Pool)
  for slot = 1, n do start_worker(self, slot) end
  return self
end

-- Registers fn's encoding: an id every worker learns once.
local function fid_of(self, fn)
  if type(fn) ~= "function" then raise(("Pool: function expected, got %s"):format(type(fn))) end
  local ok, bytes = pcall(mp.encode, fn)
  if not ok then error(bytes, 0) end -- the codec names the caller's line and the path
  local entry = self.fids[bytes]
  if not entry and self.nfids >= 512 then
    -- many distinct closures: start the registry over, in the workers too
    self.fids, self.nfids = {}, 0
    for slot = 1, self.n do
      local w = self.workers[slot]
      if w then
        w.inbox:put({forget = true})
        w.fids = {}
      end
    end
  end
  if not entry then
    self.nfids = self.nfids + 1
    self.next_fid = self.next_fid + 1
    entry = {id = self.next_fid, fn = fn}
    self.fids[bytes] = entry
  end
  return entry
end

local function push_pending(self, cid)
  self.ptail = self.ptail + 1
  self.pending[self.ptail] = cid
end

local function push_front(self, cid)
  self.phead = self.phead - 1
  self.pending[self.phead] = cid
end

-- A new job: kind "apply" | "map" | "imap" | "imap_unordered".
local function new_job(self, kind, fentry, star, opts)
  local job = {kind = kind, fentry = fentry, star = star, n = 0, done = 0, values = {}, errors = {},
               callback = opts and opts.callback, error_callback = opts and opts.error_callback,
               chunks_open = 0, ready = false}
  job.progress = progress_new(opts and opts.progress, self.progress_all)
  self.njobs = self.njobs + 1
  self.jobs[job] = true
  return job
end

-- Adds one chunk: tasks first .. first + n - 1 of the job (their items are
-- job.items[first ..]).
local function add_chunk(self, job, first, n)
  self.next_cid = self.next_cid + 1
  local cid = self.next_cid
  self.chunks[cid] = {job = job, first = first, n = n}
  job.chunks_open = job.chunks_open + 1
  push_pending(self, cid)
  return cid
end

local function finish_job(self, job)
  if job.ready then return end
  job.ready = true
  self.jobs[job] = nil
  self.njobs = self.njobs - 1
  if job.progress then progress_draw(job.progress, true) end
  local first_error = job.first_error
  if first_error then
    if job.error_callback then job.error_callback(first_error) end
  elseif job.callback then
    if job.kind == "apply" then job.callback(job.values[1]) else job.callback(job.values) end
  end
end

-- Records the outcome of task i of a job.
local function task_done(job, i, ok, v)
  if job.cancelled then return end
  if ok then job.values[i] = v
  else
    v = task_error(job, i, v)
    job.errors[i] = v
    if job.progress then job.progress.failed = job.progress.failed + 1 end
    if not job.first_error or i < job.first_index then job.first_error, job.first_index = v, i end
  end
  job.done = job.done + 1
  if job.stream then
    job.stream_n = job.stream_n + 1
    job.stream[job.stream_n] = i
  end
  if job.progress then
    job.progress.done = job.done
    progress_draw(job.progress)
  end
end

local function check_job_complete(self, job)
  if job.chunks_open == 0 and job.exhausted then finish_job(self, job) end
end

local function chunk_finished(self, cid)
  local c = self.chunks[cid]
  self.chunks[cid] = nil
  c.job.chunks_open = c.job.chunks_open - 1
  check_job_complete(self, c.job)
end

local function remove_outstanding(w, cid)
  if w.outstanding[cid] then
    w.outstanding[cid] = nil
    w.held = w.held - 1
  end
end

-- The chunks a worker holds, in the order they were sent.
local function held_in_order(w)
  local list = {}
  for cid, order in pairs(w.outstanding) do list[#list + 1] = {cid, order} end
  table.sort(list, function(a, b) return a[2] < b[2] end)
  for k, e in ipairs(list) do list[k] = e[1] end
  return list
end

local function handle_result(self, m)
  if m.init_error then
    self.broken = ("Pool: the initializer failed in a worker:\n%s"):format(m.init_error)
    return
  end
  local w = self.workers[m.slot]
  if w then w.finished = w.finished + #m.cids end
  self.crashes = 0
  self.chunk_time = 0.8 * (self.chunk_time or m.dt) + 0.2 * m.dt
  local values, errors, pos = m.values, m.errors, 0
  for k, cid in ipairs(m.cids) do
    local n = m.counts[k]
    local stored = m.stored and m.stored[k]
    if w then remove_outstanding(w, cid) end
    local c = self.chunks[cid]
    if c and not c.job.cancelled and stored then
      -- the values are in the job's shared Array: straight into place
      local job = c.job
      mp._unpack(job.pout, job.values, c.first, n)
      job.done = job.done + n
      if job.progress then
        job.progress.done = job.done
        progress_draw(job.progress)
      end
    elseif c and not c.job.cancelled then
      local job = c.job
      local clean = not job.stream
      if errors and clean then
        for p = pos + 1, pos + n do if errors[p] then clean = false break end end
      end
      if clean then
        -- the common case: move the values into place in one go
        table.move(values, pos + 1, pos + n, c.first, job.values)
        job.done = job.done + n
        if job.progress then
          job.progress.done = job.done
          progress_draw(job.progress)
        end
      else
        for i = 1, n do
          local err = errors and errors[pos + i]
          if err then task_done(job, c.first + i - 1, false, err)
          else task_done(job, c.first + i - 1, true, values[pos + i]) end
        end
      end
    end
    if c then chunk_finished(self, cid) end
    if not stored then pos = pos + n end
  end
end

-- A batch a worker's inbox refused (nothing of it was sent). The worker
-- forgets it; an item that cannot travel fails its own task, with the path
-- of what cannot travel, and the others of the batch go back in line.
-- Returns false if no item was to blame (the caller raises the error: an
-- interruption, a full arena), with every chunk back in line.
local function refused(self, w, b, job)
  for _, cid in ipairs(b.cids) do
    remove_outstanding(w, cid)
    w.dispatched = w.dispatched - 1
  end
  w.retiring = self.maxtasks and w.dispatched >= self.maxtasks or nil
  if b.fns then for id in pairs(b.fns) do w.fids[id] = nil end end
  local blamed = false
  for k = #b.cids, 1, -1 do -- to the front of the line, in order
    local cid = b.cids[k]
    local c = self.chunks[cid]
    local bad = {}
    for i = c.first, c.first + c.n - 1 do
      local fine, why = pcall(mp.encode, job.items[i])
      if not fine then
        local path = job.kind == "apply" and "args" or ("list[%d]"):format(i)
        bad[i] = tostring(why):gsub("at value", "at " .. path, 1)
      end
    end
    if next(bad) then
      blamed = true
      self.chunks[cid] = nil
      job.chunks_open = job.chunks_open - 1
      for i = c.first + c.n - 1, c.first, -1 do
        if bad[i] then task_done(job, i, false, bad[i])
        else
          self.next_cid = self.next_cid + 1
          self.chunks[self.next_cid] = {job = job, first = i, n = 1}
          job.chunks_open = job.chunks_open + 1
          push_front(self, self.next_cid)
        end
      end
    else
      push_front(self, cid)
    end
  end
  check_job_complete(self, job)
  return blamed
end

-- Sends chunks to workers with room in their inbox: always to the one with
-- the fewest in flight, and more than one each only while chunks are short
-- (a long task must not hold others back while another worker is idle).
local function dispatch(self)
  if self.phead > self.ptail then return end
  -- How many chunks a worker may hold: enough to stay busy through a round
  -- trip when chunks are short, one when they are long (a long task must
  -- not hold others back while another worker is idle).
  local depth = 1 -- nothing measured yet: no chunk waits behind one of unknown length
  if self.chunk_time then
    depth = math.max(1, math.min(MAXDEPTH, math.floor(QUEUED / math.max(self.chunk_time, 1e-7))))
  end
  local per_batch = math.max(1, depth // 2) -- two batches in flight: no idle gap
  local open = {} -- slot -> the batch being filled
  local timed = self.timeout ~= nil
  local stop_err -- a send failed and no item was to blame: raised once all is consistent
  local function send(slot)
    local b = open[slot]
    if b then
      open[slot] = nil
      local job = b.job
      b.job = nil -- not for the wire
      local inbox = self.workers[slot].inbox
      local ok, err = pcall(inbox.put, inbox, b)
      if not ok and not refused(self, self.workers[slot], b, job) then stop_err = stop_err or err end
    end
  end
  while self.phead <= self.ptail and not stop_err do
    local w, best, slot = nil, depth, nil
    for s = 1, self.n do
      local x = self.workers[s]
      if x and not x.retiring and x.held < best then w, best, slot = x, x.held, s end
    end
    if not w then break end
    local cid = self.pending[self.phead]
    self.pending[self.phead] = nil
    self.phead = self.phead + 1
    local c = self.chunks[cid]
    if c and not c.job.cancelled then
      local job, fe = c.job, c.job.fentry
      -- packed: the chunk's numbers go into the shared Array now (a list
      -- that turns out mixed goes the ordinary way from here on)
      local packed = job.pin and not job.unpacked and mp._pack(job.pin, job.items, c.first, c.n, c.first)
      if job.pin and not packed then job.unpacked = true end -- the Arrays stay: chunks sent still answer there
      local b = open[slot]
      if b and (b.job ~= job or (b.pin ~= nil) ~= (packed and true or false) or #b.cids >= per_batch) then
        send(slot)
        b = nil
      end
      if not b then
        b = {fid = fe.id, star = job.star, timed = timed, cids = {}, counts = {}, job = job}
        if packed then b.pin, b.pout, b.firsts = job.pin, job.pout, {} else b.items = {} end
        open[slot] = b
      end
      if not w.fids[fe.id] then
        b.fns = b.fns or {}
        b.fns[fe.id] = fe.fn
        w.fids[fe.id] = true
      end
      local k = #b.cids + 1
      b.cids[k], b.counts[k] = cid, c.n
      if packed then b.firsts[k] = c.first
      else table.move(job.items, c.first, c.first + c.n - 1, #b.items + 1, b.items) end
      w.sent = w.sent + 1
      w.outstanding[cid] = w.sent
      w.held = w.held + 1
      w.dispatched = w.dispatched + 1
      if self.maxtasks and w.dispatched >= self.maxtasks then w.retiring = true end
      if #b.cids >= per_batch then send(slot) end -- full: the worker can start
    elseif c then
      chunk_finished(self, cid)
    end
  end
  for slot in pairs(open) do send(slot) end
  if stop_err then error(stop_err, 0) end
end

-- A worker has gone (died, retired, or was killed for a timeout).
local function worker_gone(self, slot, reason)
  local w = self.workers[slot]
  local was_running = self.stamps[(slot - 1) * STAMP + 1] ~= 0
  -- Everything it finished is already in the results queue: take it first.
  while true do
    local r = self.results:get_nowait()
    if r == nil then break end
    handle_result(self, r)
  end
  local base = (slot - 1) * STAMP
  local running_cid, running_i = self.stamps[base + 1], math.tointeger(self.stamps[base + 2]) or 0
  -- Its chunks, newest first, go back to the front of the line; the task it
  -- was running fails (unless it retired normally with nothing running).
  local held = held_in_order(w)
  for k = #held, 1, -1 do
    local cid = held[k]
    local c = self.chunks[cid]
    if c then
      if cid == running_cid and reason then
        -- Untimed tasks are stamped once per block (pool_worker.lua), so in
        -- a chunk of several the task that killed the worker is not known:
        -- rerun them all one at a time, and one that kills its worker again
        -- is then named exactly. A single or timed task is known: it fails.
        local known = c.n == 1 or self.timeout
        if known then task_done(c.job, c.first + running_i - 1, false, reason) end
        self.chunks[cid] = nil
        c.job.chunks_open = c.job.chunks_open - 1
        for i = c.n, 1, -1 do -- to the front of the line, in order
          if not (known and i == running_i) then
            self.next_cid = self.next_cid + 1
            self.chunks[self.next_cid] = {job = c.job, first = c.first + i - 1, n = 1}
            c.job.chunks_open = c.job.chunks_open + 1
            push_front(self, self.next_cid)
          end
        end
        check_job_complete(self, c.job)
      else
        push_front(self, cid)
      end
    end
  end
  w.outstanding, w.held = {}, 0
  w.proc:join(1)
  self.workers[slot] = nil
  -- Workers that die before finishing anything, over and over, would be
  -- replaced forever: after a few in a row, the pool gives up and says why.
  if w.finished == 0 and not was_running and not w.retiring and not w.timed_out then
    self.crashes = self.crashes + 1
    if self.crashes >= 3 * self.n + 3 then
      self.broken = ("Pool: %d workers in a row died before finishing a task; the last %s"):format(
        self.crashes, how_died(w.proc.exitcode))
    end
  end
  if self.state == "run" or self.phead <= self.ptail or self.njobs > 0 then
    if not self.broken then start_worker(self, slot) end
  end
end

-- Looks for dead workers and tasks over their time.
local function check_workers(self)
  local now = mp.time()
  self.last_check = now
  for slot = 1, self.n do
    local w = self.workers[slot]
    if w then
      local code = w.proc.exitcode
      if code ~= nil then
        local reason
        local base = (slot - 1) * STAMP
        if self.stamps[base + 1] ~= 0 or (code ~= 0 and w.held > 0) then
          reason = ("Pool: the worker running this task (pid %d) %s"):format(w.proc.pid, how_died(code))
          if w.timed_out then
            reason = ("Pool: task timed out after %g s; its worker (pid %d) was killed and replaced")
              :format(self.timeout, w.proc.pid)
          end
        end
        worker_gone(self, slot, reason)
      elseif self.timeout and not w.timed_out then
        local base = (slot - 1) * STAMP
        local cid, started = self.stamps[base + 1], self.stamps[base + 3]
        if cid ~= 0 and now - started > self.timeout and self.stamps[base + 1] == cid then
          w.timed_out = true
          w.proc:kill()
        end
      end
    end
  end
end

-- Runs the pool until done() is true or the deadline passes. Returns done().
local function pump(self, done, deadline)
  while true do
    if done() then return true end
    if self.broken then error(self.broken, 0) end
    dispatch(self)
    local now = mp.time()
    if deadline and now >= deadline then return done() end
    if now - self.last_check >= SLICE then check_workers(self) end
    local wait = SLICE
    if deadline then wait = math.min(wait, math.max(0, deadline - now)) end
    -- Spin only while a CPU is free: with a busy worker on every CPU, a
    -- spinning parent would take a worker's CPU.
    local busy = 0
    for slot = 1, self.n do
      local w = self.workers[slot]
      if w and w.held > 0 then busy = busy + 1 end
    end
    local old_spin = mp._spin(busy < self.cpus and self.spin or 0)
    local r = self.results:get(wait)
    mp._spin(old_spin)
    if r ~= nil then
      handle_result(self, r)
      -- take what else is ready without waiting
      for _ = 1, 64 do
        r = self.results:get_nowait()
        if r == nil then break end
        handle_result(self, r)
      end
    else
      check_workers(self)
    end
  end
end

-------------------------------------------------------------------- results

local function new_async(self, job)
  return setmetatable({pool = self, job = job}, AsyncResult)
end

-- A TaskError also carries where the parent read it (an uncaught error
-- object is printed by its tostring alone).
local function raise_task_error(err)
  if getmetatable(err) == TaskError then
    err.caller = debug.traceback("", 3):gsub("^\nstack traceback:\n", "caller traceback:\n", 1)
  end
  error(err, 0)
end

local function check_timeout(timeout, what)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout ~= timeout or timeout < 0) then
    raise(("%s: timeout must be a number of seconds >= 0"):format(what))
  end
end

function AsyncResult:ready()
  check_owner(self.pool)
  if not self.job.ready then pump(self.pool, function() return self.job.ready end, mp.time()) end
  return self.job.ready
end

function AsyncResult:wait(timeout)
  check_owner(self.pool)
  check_timeout(timeout, "AsyncResult:wait")
  if pump(self.pool, function() return self.job.ready end, timeout and mp.time() + timeout) then return true end
  return false, "timeout"
end

function AsyncResult:successful()
  if not self.job.ready then raise("AsyncResult: not ready yet") end
  return self.job.first_error == nil
end

-- get, once the caller is known to be the pool's process.
local function result_get(self, timeout)
  check_timeout(timeout, "AsyncResult:get")
  if not pump(self.pool, function() return self.job.ready end, timeout and mp.time() + timeout) then
    raise(("AsyncResult: timeout after %g s waiting for the result"):format(timeout))
  end
  local job = self.job
  if job.first_error then raise_task_error(job.first_error) end
  if job.kind == "apply" then return job.values[1] end
  return job.values
end

function AsyncResult:get(timeout)
  check_owner(self.pool)
  return result_get(self, timeout)
end

-------------------------------------------------------------------- submitting

-- The options each call takes, and what each must be.
local OPTIONS = {
  apply_async = {callback = "function", error_callback = "function"},
  map = {callback = "function", error_callback = "function", progress = "any"},
  imap = {progress = "any", timeout = "seconds"},
}
OPTIONS.map_async, OPTIONS.starmap, OPTIONS.starmap_async = OPTIONS.map, OPTIONS.map, OPTIONS.map
OPTIONS.imap_unordered = OPTIONS.imap

-- opts of call `what`: nil, or a table of known options (else raises).
local function check_opts(opts, what)
  if opts == nil then return nil end
  if type(opts) ~= "table" then raise(("Pool:%s: options must be a table, got %s"):format(what, type(opts))) end
  local allowed = OPTIONS[what]
  for k, v in pairs(opts) do
    local want = allowed[k]
    if not want then
      local names = {}
      for name in pairs(allowed) do names[#names + 1] = name end
      table.sort(names)
      raise(("Pool:%s: unknown option '%s' (expected %s)"):format(what, tostring(k), table.concat(names, ", ")))
    elseif want == "function" and type(v) ~= "function" then
      raise(("Pool:%s: option %s must be a function, got %s"):format(what, k, type(v)))
    elseif want == "seconds" and (type(v) ~= "number" or v ~= v or v <= 0) then
      raise(("Pool:%s: option %s must be a number of seconds > 0"):format(what, k))
    end
  end
  return opts
end

-- [chunksize] [, opts]: a nil chunksize is the default, and a table in its
-- place is the options.
local function parse_rest(a, b, what)
  local chunksize, opts = a, b
  if type(a) == "table" then
    if b ~= nil then raise(("Pool:%s: chunksize must be an integer >= 1, got a table"):format(what)) end
    chunksize, opts = nil, a
  end
  if chunksize ~= nil and (math.type(chunksize) ~= "integer" or chunksize < 1) then
    raise(("Pool:%s: chunksize must be an integer >= 1"):format(what))
  end
  return chunksize, check_opts(opts, what)
end

local function auto_chunksize(self, n)
  if self.timeout then return 1 end
  local c = math.ceil(n / (self.n * 4))
  return c < 1 and 1 or c
end

local function apply_async(self, fn, args, opts, what)
  check_pool(self, what)
  if args ~= nil and type(args) ~= "table" then raise(("Pool:%s: args must be a table"):format(what)) end
  local o = check_opts(opts, "apply_async")
  local job = new_job(self, "apply", fid_of(self, fn), true, o)
  job.progress = nil
  job.n = 1
  job.items = {args or {}}
  add_chunk(self, job, 1, 1)
  job.exhausted = true
  dispatch(self)
  return new_async(self, job)
end

function Pool:apply_async(fn, args, opts)
  return apply_async(self, fn, args, opts, "apply_async")
end

function Pool:apply(fn, args, extra)
  if extra ~= nil then raise("Pool:apply: takes no options (apply_async takes callbacks)") end
  return result_get(apply_async(self, fn, args, nil, "apply"))
end

-- A list, or an iterator function read to its end now (as Python's map
-- consumes any iterable at once).
local function as_list(kind, src)
  if type(src) == "table" then return src, false end
  if type(src) ~= "function" then
    raise(("Pool:%s: a list or an iterator function expected, got %s"):format(kind, type(src)))
  end
  local list, n = {}, 0
  while true do
    local v = src()
    if v == nil then return list, true end
    n = n + 1
    list[n] = v
  end
end

-- A map-like job over a list or an iterator (star: items are argument
-- lists). An async job copies a list it was given (the caller may change it
-- before the work is sent); a blocking one reads it in place.
local function map_job(self, kind, fn, src, star, chunksize, opts, blocking)
  local fentry = fid_of(self, fn)
  local list, owned = as_list(kind, src)
  local job = new_job(self, kind, fentry, star, opts)
  local n = #list
  job.n = n
  job.values = mp._newtable(n)
  progress_total(job.progress, n)
  local cs = chunksize or progress.chunksize(job.progress, auto_chunksize(self, n), n)
  job.items = (blocking or owned) and list or table.move(list, 1, n, 1, {})
  -- A long list of numbers in big chunks travels packed in shared memory,
  -- written chunk by chunk as it is sent (dispatch), read and answered by the
  -- workers in place; anything else goes through the codec.
  local first_type = math.type(list[1])
  if not star and n >= PACK_MIN and cs >= PACKED_CHUNK and first_type then
    local tc = first_type == "integer" and 'q' or 'd'
    job.pin, job.pout = mp.Array(tc, n, {lock = false}), mp.Array(tc, n, {lock = false})
  end
  for first = 1, n, cs do add_chunk(self, job, first, math.min(cs, n - first + 1)) end
  job.exhausted = true
  if n == 0 then finish_job(self, job) end
  dispatch(self)
  return job
end

-- map, map_async, starmap, starmap_async: the blocking one reads the list
-- in place and waits; the async one copies it and returns an AsyncResult.
for _, kind in ipairs{"map", "starmap"} do
  local star = kind == "starmap"
  Pool[kind .. "_async"] = function(self, fn, list, chunksize, opts)
    check_pool(self, kind .. "_async")
    local cs, o = parse_rest(chunksize, opts, kind .. "_async")
    return new_async(self, map_job(self, kind, fn, list, star, cs, o))
  end
  Pool[kind] = function(self, fn, list, chunksize, opts)
    check_pool(self, kind)
    local cs, o = parse_rest(chunksize, opts, kind)
    return result_get(new_async(self, map_job(self, kind, fn, list, star, cs, o, true)))
  end
end

-- imap and imap_unordered: streaming over a list or an iterator function,
-- reading it lazily with at most a bounded number of chunks in flight.
-- An error of the iterator ends the reading: the results of the items read
-- before it are still given, and the step that reaches it raises it.
local function stream(self, kind, fn, src, chunksize, opts, ordered)
  check_pool(self, kind)
  local cs, o = parse_rest(chunksize, opts, kind)
  local job = new_job(self, kind, fid_of(self, fn), false, o)
  local step_timeout = o and o.timeout
  job.stream, job.stream_n = {}, 0
  local next_item
  if type(src) == "table" then
    local i, n = 0, #src
    progress_total(job.progress, n)
    cs = cs or progress.chunksize(job.progress, math.min(auto_chunksize(self, n), 256), n)
    next_item = function()
      i = i + 1
      if i <= n then return true, src[i] end
      return false
    end
  elseif type(src) == "function" then
    progress_total(job.progress, nil)
    cs = cs or 1
    next_item = function()
      local v = src()
      if v == nil then return false end
      return true, v
    end
  else
    raise(("Pool:%s: a list or an iterator function expected, got %s"):format(kind, type(src)))
  end
  local limit = self.n * 8 -- chunks read ahead of the consumer
  local read = 0
  local src_failed, src_error = false, nil -- the iterator raised: src_error, after the items read
  job.items = {} -- what was read and is not yet answered (bounded)
  local function refill()
    while not job.exhausted and job.chunks_open < limit do
      local got = 0
      for _ = 1, cs do
        local fine, more, v = pcall(next_item)
        if not fine then
          if type(more) == "string" and more:find("interrupted by [%w ]+$") then error(more, 0) end -- the run ends now
          src_failed, src_error = true, more
          job.exhausted = true
          break
        end
        if not more then
          job.exhausted = true
          break
        end
        got = got + 1
        job.items[read + got] = v
      end
      if got > 0 then
        add_chunk(self, job, read + 1, got)
        read = read + got
        job.n = read
      end
    end
    if job.exhausted then check_job_complete(self, job) end
  end
  local emitted, spos = 0, 1
  local function has_output()
    if ordered then return job.values[emitted + 1] ~= nil or job.errors[emitted + 1] ~= nil
    else return spos <= job.stream_n end
  end
  local function finished()
    return job.exhausted and job.chunks_open == 0 and emitted >= read
  end
  local closed = false
  local function iterate()
    check_owner(self)
    if closed then return nil end
    local deadline = step_timeout and mp.time() + step_timeout
    while true do
      refill()
      if has_output() then break end
      if finished() then
        closed = true
        finish_job(self, job)
        if src_failed then error(src_error, 0) end
        return nil
      end
      if not pump(self, function() return has_output() or (job.exhausted and job.chunks_open == 0) end, deadline)
      then
        raise("Pool: timeout")
      end
    end
    local i
    if ordered then i = emitted + 1
    else
      i = job.stream[spos]
      job.stream[spos] = nil
      spos = spos + 1
    end
    emitted = emitted + 1
    local v, err = job.values[i], job.errors[i]
    job.values[i], job.errors[i], job.items[i] = nil, nil, nil -- bounded memory
    if err then raise_task_error(err) end
    if ordered then return i, v end
    return v
  end
  -- Leaving the loop early (break, error) must not leave the job behind.
  local closer = setmetatable({}, {__close = function()
    if not finished() then job.cancelled = true finish_job(self, job) end
  end})
  return api(iterate), nil, nil, closer
end

function Pool:imap(fn, src, chunksize, opts)
  return stream(self, "imap", fn, src, chunksize, opts, true)
end

function Pool:imap_unordered(fn, src, chunksize, opts)
  return stream(self, "imap_unordered", fn, src, chunksize, opts, false)
end

-------------------------------------------------------------------- ending

function Pool:close()
  check_owner(self)
  if self.state == "run" then self.state = "closed" end
end

-- Tells every worker to stop (how), then waits for each and forgets it.
local function stop_workers(self, how)
  for slot = 1, self.n do
    if self.workers[slot] then how(self.workers[slot]) end
  end
  for slot = 1, self.n do
    local w = self.workers[slot]
    if w then
      w.proc:join()
      self.workers[slot] = nil
    end
  end
end

-- Kills the workers at once; unfinished jobs fail.
function Pool:terminate()
  check_owner(self)
  if self.state == "terminated" then return end
  self.state = "terminated"
  stop_workers(self, function(w) w.proc:kill() end)
  for job in pairs(self.jobs) do
    if not job.first_error then job.first_error = "Pool: terminated before the task finished" end
    job.callback, job.error_callback = nil, nil
    finish_job(self, job)
  end
end

function Pool:join()
  check_owner(self)
  if self.state == "run" then raise("Pool: call close() or terminate() before join()") end
  if self.state == "closed" then
    pump(self, function() return self.njobs == 0 end)
    stop_workers(self, function(w) w.inbox:put({quit = true}) end)
    self.state = "joined"
  end
end

-- `local pool <close> = mp.Pool(4)`: on a normal exit, the work submitted
-- is finished (close + join); on an error, the workers are killed.
Pool.__close = function(self, err)
  if err ~= nil then self:terminate()
  else
    self:close()
    self:join()
  end
end

Pool.__gc = function(self)
  if self.state ~= "joined" and self.state ~= "terminated" and not mp._in_child() then
    pcall(Pool.terminate, self)
  end
end

-- Every method runs protected (see rethrow()).
for _, class in ipairs{Pool, AsyncResult} do
  local names = {}
  for name, f in pairs(class) do
    if type(f) == "function" and not name:match("^__") then names[#names + 1] = name end
  end
  for _, name in ipairs(names) do class[name] = api(class[name]) end
end

function Pool:__tostring()
  return ("Pool (%d workers, %s)"):format(self.n, self.state)
end

return Pool
