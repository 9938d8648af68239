-- pool.lua - mp.Pool: what is Lua's own in the pool.
--
-- The engine's pool runs everything else (engine/src/pool*.c, bound by
-- lpool.c as B): workers and their replacement, batches, stamps, per-task
-- timeouts, naming the task a dead worker held, the crash-loop guard,
-- maxtasksperchild, the initializer's failure, memory_limit. Here: function
-- ids (each distinct encoding stored once in the arena, where a worker
-- reads it on a miss, so a replacement started later finds it too), jobs and their
-- AsyncResults, the imaps over iterators, callbacks, the progress bar, and
-- how a task's error reads where its result is read.
--
-- The parent is single-threaded: results, callbacks (in completion order)
-- and replacements are handled whenever the script waits on the pool (get,
-- wait, map, imap, join, ...). A pool is used only from the process that
-- made it: a copy that travelled inside a task raises at once.
local mp, B, progress = ...

local WEAK_KEYS = {__mode = "k"}
local MAXFIDS = 512 -- distinct functions remembered before the registry starts over

local Pool = {}
local meta = B.meta
local priv = setmetatable({}, {__mode = "k"}) -- pool -> its state

local AsyncResult = {}
local NO_ARGS = {} -- the args of an apply given none (only ever read)
AsyncResult.__index = AsyncResult
AsyncResult.__name = "AsyncResult"

local progress_new, progress_draw, progress_total = progress.new, progress.draw, progress.total

-------------------------------------------------------------------- errors

local SOURCE = "=mpengine.pool"

-- Raises msg at the script's line that called the pool: the first Lua frame
-- outside this file (a misuse is the caller's, not the pool's). In a worker
-- whose task's frame is gone (a tail call) there is none: no position
-- rather than a wrong one.
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
-- a string (the worker died, the task timed out, an item could not be sent,
-- a result could not travel) or what the worker sent: {msg =, tb =, value =}.
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
  if e.host then where = ("%s on host %s"):format(where, e.host) end
  local text = ("%s\n%s; worker traceback:\n%s"):format(e.msg, where, e.tb or "")
  if e.value == nil then return text end
  return setmetatable({value = e.value, message = text, task = i}, TaskError)
end

-- Task i of job failed with e (counted: no engine task carried it, so the
-- job's count is taken here; else lpool.c counts it).
local function on_error(job, i, e, counted)
  local v = task_error(job, i, e)
  job.errors[i] = v
  if job.progress then job.progress.failed = job.progress.failed + 1 end
  if not job.first_error or i < job.first_index then job.first_error, job.first_index = v, i end
  if counted then
    job.done = job.done + 1
    if job.stream then
      job.stream_n = job.stream_n + 1
      job.stream[job.stream_n] = i
    end
  end
end

-------------------------------------------------------------------- the pool

local pool_count = 0

-- Raises unless this is the process that made the pool.
local function check_owner(self)
  local owner, token = B.owner(self)
  if owner ~= mp.getpid() then
    if B.worker_of() == token then raise("Pool: cannot be used from one of its own workers") end
    raise("Pool: can only be used from the process that made it")
  end
  return priv[self]
end

local function check_pool(self, what)
  if getmetatable(self) ~= meta then raise(("Pool expected, got %s"):format(type(self))) end
  local st = check_owner(self)
  if st.state ~= "run" then
    raise(("Pool: cannot %s: the pool is %s"):format(what, st.state))
  end
  local broken = B.error(self)
  if broken then raise(broken) end
  return st
end

local known_options = {processes = true, initializer = true, initargs = true, maxtasksperchild = true,
                       timeout = true, memory_limit = true, broker = true, lease = true, attempts = true,
                       broker_timeout = true}

-------------------------------------------------------------------- a broker's run

-- What a broker's hosts need to run this pool's tasks as this process
-- would: the job script (when it follows the convention: loaded, main not
-- called), its arguments, the modules it loaded from its own folder (by
-- name), and the initializer. B.new stored the run's key and Lua build.
-- The modules loaded from the script's folder not shipped yet (at the
-- pool's start and before each job: a module required later goes too).
local function ship_modules(self, st)
  local dir = st.script_dir
  if not dir then return end
  for name in pairs(package.loaded) do
    if type(name) == "string" and not st.shipped[name] then
      st.shipped[name] = true
      local file = package.searchpath(name, package.path)
      if file and (file:sub(1, #dir + 1) == dir .. "/" or (dir == "." and not file:find("^/"))) then
        local m = io.open(file, "rb")
        if m then
          B.put(self, "m:" .. name, m:read("a"))
          B.put(self, "mp:" .. name, file)
          m:close()
        end
      end
    end
  end
end

local function ship(self, st, o)
  local path, is_job = B.script()
  B.put(self, "script_path", path or "(code)")
  if path and is_job then -- (a pool made before main runs: the script is not loaded there)
    local f = io.open(path, "rb")
    if f then
      B.put(self, "script", f:read("a"))
      f:close()
      local args = {}
      for i = 1, #(arg or {}) do args[i] = arg[i] end
      B.put(self, "args", mp.encode(args))
    end
  end
  if path then
    st.script_dir, st.shipped = path:match("^(.*)/[^/]*$") or ".", {}
    ship_modules(self, st)
  end
  if o.initializer then
    local initargs = o.initargs or {}
    B.put(self, "init", B.encode_remote({o.initializer, table.move(initargs, 1, #initargs, 1, {})}))
  end
end

-- In a worker of a broker's host, when it starts serving a run.
function B.run_start()
  local build = B.context("build")
  if build ~= B.build() then
    error(("the run's code comes from %s; host %s runs %s and cannot load it")
      :format(tostring(build), tostring(B.host()), B.build()), 0)
  end
  table.insert(package.searchers, 2, function(name)
    local src = B.context("m:" .. name)
    if not src then return ("\n\tno module '%s' in the run's files"):format(name) end
    local file = B.context("mp:" .. name) or name
    local chunk, err = load(src, "@" .. file, "t")
    if not chunk then error(err, 0) end
    return chunk, file
  end)
  local src = B.context("script")
  if src then
    local path = B.context("script_path")
    local chunk = assert(load(src, "@" .. path, "t"))
    local args = mp.decode(B.context("args"))
    _G.arg = {[0] = path, table.unpack(args)}
    chunk(table.unpack(args))
  end
  local init = B.context("init")
  if init then
    local t = mp.decode(init)
    t[1](table.unpack(t[2]))
  end
end

function mp.Pool(opts)
  local o = {}
  if type(opts) == "table" then
    for k in pairs(opts) do
      if not known_options[k] then
        error(("Pool: unknown option '%s' (expected processes, initializer, initargs, maxtasksperchild, "
          .. "timeout, memory_limit, broker, lease, attempts, broker_timeout)"):format(tostring(k)), 2)
      end
    end
    o = opts
  elseif opts ~= nil then
    o = {processes = opts}
  end
  local broker = o.broker
  if broker == nil and mp.broker() then broker = true end -- a broker run: every pool on it
  if broker == false then broker = nil end
  if broker ~= nil and broker ~= true and type(broker) ~= "string" then
    error("Pool: broker must be a URL (redis://... or unix://...)", 2)
  end
  if o.lease ~= nil and (type(o.lease) ~= "number" or o.lease ~= o.lease or o.lease <= 0) then
    error("Pool: lease must be a number of seconds > 0", 2)
  end
  if o.attempts ~= nil and (math.type(o.attempts) ~= "integer" or o.attempts < 1) then
    error("Pool: attempts must be an integer >= 1", 2)
  end
  local bt = o.broker_timeout
  if bt ~= nil and (type(bt) ~= "number" or bt ~= bt or bt <= 0) then
    error("Pool: broker_timeout must be a number of seconds > 0", 2)
  end
  local n = o.processes
  if n == nil and broker then n = 0 -- no cap beyond the hosts' workers
  elseif n == nil then n = tonumber(os.getenv("MPENGINE_WORKERS") or "") or mp.cpu_count() end
  if math.type(n) ~= "integer" or (n < 1 and not (broker and n == 0)) then
    error("Pool: processes must be an integer >= 1", 2)
  end
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
  local initargs = o.initargs and table.move(o.initargs, 1, #o.initargs, 1, {})
  local made, self = pcall(B.new, n, o.timeout, maxtasks, o.memory_limit, o.initializer, initargs, on_error,
                           ("%d.%d"):format(mp.getpid(), pool_count), broker, o.lease, o.attempts, bt)
  if not made then error((tostring(self):gsub("^mpengine%.pool:%d+: ", "")), 2) end
  if broker then n = B.size(self) end -- its lanes: how many batches may be out at once
  local st = {n = n, broker = broker ~= nil, state = "run", fids = {}, nfids = 0, next_fid = 0, jobs = {}, njobs = 0,
                by_fn = setmetatable({}, WEAK_KEYS),
                progress_all = os.getenv("MPENGINE_PROGRESS") == "1"}
  priv[self] = st
  if broker then ship(self, st, o) end
  return self
end

-- 1 if fn's encoding depends on fn alone: its only upvalue, if any, is
-- _ENV (which travels as "the receiver's globals", whatever its value).
local function self_contained(fn)
  for i = 1, math.huge do
    local name = debug.getupvalue(fn, i)
    if name == nil then return true end
    if name ~= "_ENV" then return false end
  end
end

-- The id of fn's encoding: stored once (B.fn), where every worker finds it.
-- A function without upvalues of its own is remembered by identity too, so
-- a loop of apply(fn) encodes fn once (a closure is encoded every call: its
-- upvalues may have changed).
local function fid_of(self, st, fn)
  if type(fn) ~= "function" then raise(("Pool: function expected, got %s"):format(type(fn))) end
  if st.shipped then ship_modules(self, st) end
  local known = st.by_fn[fn]
  if known then return known.id end
  local ok, bytes = pcall(st.broker and B.encode_remote or mp.encode, fn)
  if not ok then error(bytes, 0) end -- the codec names the caller's line and the path
  local entry = st.fids[bytes]
  if not entry then
    if st.nfids >= MAXFIDS then -- many distinct closures: start over (ids are never reused),
      local live = {}              -- keeping those of jobs still running (an imap sends more)
      for job in pairs(st.jobs) do live[job.fid] = true end
      local keep, nkeep = {}, 0
      for b, e in pairs(st.fids) do
        if live[e.id] then keep[b], nkeep = e, nkeep + 1 else B.forget(self, e.id) end
      end
      st.fids, st.nfids = keep, nkeep
      st.by_fn = setmetatable({}, WEAK_KEYS)
    end
    st.nfids, st.next_fid = st.nfids + 1, st.next_fid + 1
    entry = {id = st.next_fid, fn = fn} -- fn kept: the objects it names stay alive
    B.fn(self, entry.id, bytes)
    st.fids[bytes] = entry
  end
  if self_contained(fn) then st.by_fn[fn] = entry end
  return entry.id
end

-- A new job: kind "apply" | "map" | "starmap" | "imap" | "imap_unordered".
local function new_job(st, kind, fid, star, opts)
  local job = {kind = kind, fid = fid, star = star, n = 0, done = 0, values = {}, errors = {},
               callback = opts and opts.callback, error_callback = opts and opts.error_callback,
               ready = false}
  job.progress = progress_new(opts and opts.progress, st.progress_all)
  st.njobs = st.njobs + 1
  st.jobs[job] = true
  return job
end

local function finish_job(st, job)
  if job.ready then return end
  job.ready = true
  st.jobs[job] = nil
  st.njobs = st.njobs - 1
  if job.progress then progress_draw(job.progress, true) end
  local first_error = job.first_error
  if first_error then
    if job.error_callback then job.error_callback(first_error) end
  elseif job.callback then
    if job.kind == "apply" then job.callback(job.values[1]) else job.callback(job.values) end
  end
end

local function check_complete(st, job)
  if job.exhausted and job.done >= job.n then finish_job(st, job) end
end

-- What the jobs that got results owe: progress, and their end (callbacks,
-- in the order the jobs got their results).
local function settle(st, touched)
  for _, job in ipairs(touched) do
    if job.progress then
      job.progress.done = job.done
      progress_draw(job.progress)
    end
    check_complete(st, job)
  end
end

-- Runs the pool until done(arg) is true or the deadline passes. Returns
-- done(arg). (A function and its argument, not a closure: an apply makes
-- no garbage it need not.)
local function pump(self, st, done, arg, deadline)
  while true do
    if done(arg) then return true end
    local broken = B.error(self)
    if broken then error(broken, 0) end
    local wait
    if deadline then
      wait = deadline - mp.time()
      if wait <= 0 then
        local touched = B.collect(self, 0) -- what is ready counts still
        if touched then settle(st, touched) end
        return done(arg)
      end
    end
    local touched, why = B.collect(self, wait)
    if touched then settle(st, touched)
    elseif why == "empty" then return done(arg) end
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

local function job_ready(job) return job.ready end

function AsyncResult:ready()
  local st = check_owner(self.pool)
  if not self.job.ready then pump(self.pool, st, job_ready, self.job, mp.time()) end
  return self.job.ready
end

function AsyncResult:wait(timeout)
  local st = check_owner(self.pool)
  check_timeout(timeout, "AsyncResult:wait")
  if pump(self.pool, st, job_ready, self.job, timeout and mp.time() + timeout) then
    return true
  end
  return false, "timeout"
end

function AsyncResult:successful()
  if not self.job.ready then raise("AsyncResult: not ready yet") end
  return self.job.first_error == nil
end

-- The result of job of pool, once the caller is known to be the pool's process.
local function job_get(pool, st, job, timeout)
  check_timeout(timeout, "AsyncResult:get")
  if not pump(pool, st, job_ready, job, timeout and mp.time() + timeout) then
    raise(("AsyncResult: timeout after %g s waiting for the result"):format(timeout))
  end
  if job.first_error then raise_task_error(job.first_error) end
  if job.kind == "apply" then return job.values[1] end
  return job.values
end

function AsyncResult:get(timeout)
  return job_get(self.pool, check_owner(self.pool), self.job, timeout)
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

local function apply_async(self, fn, args, opts, what)
  local st = check_pool(self, what)
  if args ~= nil and type(args) ~= "table" then raise(("Pool:%s: args must be a table"):format(what)) end
  local o = check_opts(opts, "apply_async")
  local job = new_job(st, "apply", fid_of(self, st, fn), true, o)
  job.progress = nil
  job.n = 1
  job.items = {args or NO_ARGS} -- kept until done: the objects it names stay alive
  B.submit(self, job, job.fid, true, job.items, 1, 1, 1, "args")
  job.exhausted = true
  check_complete(st, job)
  return job, st
end

function Pool:apply_async(fn, args, opts)
  return new_async(self, (apply_async(self, fn, args, opts, "apply_async")))
end

function Pool:apply(fn, args, extra)
  if extra ~= nil then raise("Pool:apply: takes no options (apply_async takes callbacks)") end
  local job, st = apply_async(self, fn, args, nil, "apply")
  return job_get(self, st, job)
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
-- lists). Every item is encoded at the call; an async job keeps a copy of
-- a list it was given until it ends (the objects it names stay alive
-- whatever the caller does with the list).
local function map_job(self, st, kind, fn, src, star, opts, blocking)
  local fid = fid_of(self, st, fn)
  local list, owned = as_list(kind, src)
  local job = new_job(st, kind, fid, star, opts)
  local n = #list
  job.n = n
  job.values = B.table(n)
  progress_total(job.progress, n)
  -- (a list with a metatable is read through it, as map_async and imap do)
  job.items = ((blocking and not getmetatable(list)) or owned) and list or table.move(list, 1, n, 1, {})
  if n > 0 then B.submit(self, job, fid, star, job.items, 1, n, 1) end
  job.exhausted = true
  check_complete(st, job)
  return job
end

-- map, map_async, starmap, starmap_async: the blocking one waits; the async
-- one returns an AsyncResult.
for _, kind in ipairs{"map", "starmap"} do
  local star = kind == "starmap"
  Pool[kind .. "_async"] = function(self, fn, list, chunksize, opts)
    local st = check_pool(self, kind .. "_async")
    local _, o = parse_rest(chunksize, opts, kind .. "_async")
    return new_async(self, map_job(self, st, kind, fn, list, star, o))
  end
  Pool[kind] = function(self, fn, list, chunksize, opts)
    local st = check_pool(self, kind)
    local _, o = parse_rest(chunksize, opts, kind)
    return job_get(self, st, map_job(self, st, kind, fn, list, star, o, true))
  end
end

-- imap and imap_unordered: streaming over a list or an iterator function,
-- reading it lazily with at most 8 chunks per worker in flight.
-- An error of the iterator ends the reading: the results of the items read
-- before it are still given, and the step that reaches it raises it.
local function stream(self, kind, fn, src, chunksize, opts, ordered)
  local st = check_pool(self, kind)
  local cs, o = parse_rest(chunksize, opts, kind)
  local job = new_job(st, kind, fid_of(self, st, fn), false, o)
  local step_timeout = o and o.timeout
  job.stream, job.stream_n = {}, 0
  local next_item
  if type(src) == "table" then
    local i, n = 0, #src
    progress_total(job.progress, n)
    cs = cs or math.max(1, math.min(256, math.ceil(n / (st.n * 4))))
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
  local limit = st.n * 8 * cs -- items read ahead of the consumer
  local src_failed, src_error = false, nil -- the iterator raised: src_error, after the items read
  job.items = {} -- what was read and is not yet consumed (bounded)
  local function refill()
    while not job.exhausted and job.n - job.done < limit do
      local got, base = 0, job.n + 1
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
        job.items[base + got - 1] = v
      end
      if got > 0 then
        job.n = job.n + got
        B.submit(self, job, job.fid, false, job.items, base, base + got - 1, base, nil, true)
      end
    end
    if job.exhausted then check_complete(st, job) end
  end
  local emitted, spos = 0, 1
  local function has_output()
    if ordered then return job.values[emitted + 1] ~= nil or job.errors[emitted + 1] ~= nil
    else return spos <= job.stream_n end
  end
  local function finished()
    return job.exhausted and job.done >= job.n and emitted >= job.n
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
        finish_job(st, job)
        if src_failed then error(src_error, 0) end
        return nil
      end
      if not pump(self, st, function() return has_output() or (job.exhausted and job.done >= job.n) end, nil, deadline)
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
    if not finished() then job.cancelled = true finish_job(st, job) end
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
  local st = check_owner(self)
  if st.state == "run" then
    st.state = "closed"
    B.close(self)
  end
end

-- Kills the workers at once; unfinished jobs fail.
function Pool:terminate()
  local st = check_owner(self)
  if st.state == "terminated" then return end
  st.state = "terminated"
  for job in pairs(st.jobs) do job.callback, job.error_callback = nil, nil end
  B.terminate(self)
  while true do -- every task without a result now has one saying so
    local touched = B.collect(self, 0)
    if not touched then break end
    settle(st, touched)
  end
  for job in pairs(st.jobs) do
    if not job.first_error then job.first_error = "Pool: terminated before the task finished" end
    finish_job(st, job)
  end
end

function Pool:join()
  local st = check_owner(self)
  if st.state == "run" then raise("Pool: call close() or terminate() before join()") end
  if st.state == "closed" then
    while true do
      local touched, why = B.collect(self)
      if touched then settle(st, touched) elseif why == "empty" then break end
    end
    B.join(self)
    st.state = "joined"
  end
end

-- `local pool <close> = mp.Pool(4)`: on a normal exit, the work submitted
-- is finished (close + join); on an error, the workers are killed.
meta.__close = function(self, err)
  if err ~= nil then self:terminate()
  else
    self:close()
    self:join()
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

-- pool.workers: the live workers, as {proc = {pid =, kill = }} (tests kill them).
local function workers(self)
  local list = {}
  local st = priv[self]
  if st and B.owner(self) == mp.getpid() and st.state ~= "joined" and st.state ~= "terminated" then
    for i, pid in ipairs(B.pids(self)) do
      list[i] = {proc = {pid = pid, kill = function() B.kill(self, pid) end}}
    end
  end
  return list
end

-- pool.n: its number of workers.
meta.__index = function(self, k)
  if k == "workers" then return workers(self) end
  if k == "n" then return priv[self] and priv[self].n end
  return Pool[k]
end

meta.__tostring = function(self)
  local st = priv[self]
  if not st then return "Pool (a copy from another process)" end
  return ("Pool (%d workers, %s)"):format(st.n, st.state)
end
