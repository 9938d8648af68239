-- bobj.lua - the script's objects on a broker (a Redis server): Dict, Value,
-- Lock, RLock, Queue, JoinableQueue, SimpleQueue, Event, Semaphore,
-- BoundedSemaphore, with the local objects' methods and return shapes.
--
-- Keys: every object lives under its prefix "mpe:o:ID" (or "mpe:n:NAME" for
-- a named one), with a meta hash PREFIX:m saying what it is. Every key has a
-- TTL (the object's `ttl`, default 600 s): each write sets it again, and a
-- process that uses an object refreshes all its keys at most every ttl/3, so
-- keys of a run that ended (or was killed) leave the broker within ttl.
--
-- Values are the codec's bytes (B.encode: a message for any host, so a local
-- engine object in it raises), except numbers in a Dict or a Value, kept as
-- text that Redis can add to: an integer as its decimal digits (HINCRBY,
-- exact 64-bit), a float as "f" and %.17g (added in a server script).
--
-- Blocking calls wait in the broker's own blocking reads (BLPOP, BLMOVE) on
-- a wake-up list the other side pushes to, in slices of at most SLICE s, so
-- the run's SIGINT ends any wait within a slice; nothing polls in between.
-- A Lock is a lease (see README "Objects on a broker").
local mp, B = ...

local SLICE = 0.5
local DEFAULT_TTL = 600
local DEFAULT_LEASE = 10
local sfmt, mtype = string.format, math.type

local SUB = {Dict = 1, Value = 2, Lock = 3, RLock = 4, Queue = 5, JoinableQueue = 6, SimpleQueue = 7,
  Event = 8, Semaphore = 9, BoundedSemaphore = 10, Array = 11, Condition = 12, Barrier = 13}

-- ------------------------------------------------------------ the process

local my_pid, my_token
local held = {} -- prefix -> {fence, count} for the locks this process holds
local beats = {} -- prefix -> st of the JoinableQueues this process consumes from (their heartbeats)

local function pid_now()
  local p = mp.getpid()
  if p ~= my_pid then -- a fresh process (or a forked child): its own name, no locks held
    my_pid, my_token, held, beats = p, B.token(), {}, {}
  end
  return p
end

local function token()
  pid_now()
  return my_token
end

local function conn(st)
  if st.pid ~= pid_now() or not st.c then
    local c = B.lookup(st.display)
    if not c then
      error(sfmt("Broker object on %s: this process has no connection to that broker (it is not this run's "
        .. "broker; make an object there with {broker = URL} first)", st.display), 3)
    end
    st.c, st.pid = c, my_pid
  end
  return st.c
end

local function script(src) return B.script(src) end

local consumer

-- Renews this process's heartbeats as a consumer that are a third through
-- (its Locks' leases are renewed by a thread: B.lease_hold).
local function renew_due()
  for _, st in pairs(beats) do consumer(st) end
end

-- Keeps every key of st alive for its ttl, at most every ttl/3 per process.
local function touch(st)
  renew_due()
  local now = mp.time()
  if now - (st.touched or 0) < st.ttl / 3 then return end
  st.touched = now
  local cmds = {}
  for _, key in pairs(st.k) do cmds[#cmds + 1] = {"EXPIRE", key, st.ttl} end
  conn(st):pipe(table.unpack(cmds))
end

local function c_of(st)
  touch(st)
  return conn(st)
end

local function ttl_ms(st) return math.floor(st.ttl * 1000) end

local function slice_of(deadline, cap)
  local s = SLICE
  if cap and cap < s then s = cap end
  if deadline then
    local left = deadline - mp.time()
    if left < s then s = left end
  end
  if s < 0.01 then s = 0.01 end
  return s
end

local function deadline_of(timeout, what)
  if timeout == nil then return nil end
  if type(timeout) ~= "number" or timeout ~= timeout or timeout < 0 then
    error(sfmt("%s: timeout must be a number of seconds >= 0 (nil waits forever)", what), 3)
  end
  return mp.time() + timeout
end

local function expired(deadline) return deadline and mp.time() >= deadline end

-- Waits up to one slice for an element of list key (the wake-up lists).
local function wake_wait(st, key, deadline, cap)
  local s = slice_of(deadline, cap)
  conn(st):bcall(s, "BLPOP", key, sfmt("%.3f", s))
  B.check_signal()
end

-- ------------------------------------------------------- numbers as text

local function num_text(v)
  if mtype(v) == "integer" then return sfmt("%d", v) end
  if v ~= v then return "fnan" end
  if v == math.huge then return "finf" end
  if v == -math.huge then return "f-inf" end
  return "f" .. sfmt("%.17g", v)
end

local function val_text(v)
  if type(v) == "number" then return num_text(v) end
  return "e" .. B.encode(v)
end

local function text_val(s)
  if not s then return nil end
  local c = s:byte(1)
  if c == 101 then return B.decode(s:sub(2)) end -- "e"
  if c == 102 then -- "f"
    local t = s:sub(2)
    if t == "nan" or t == "-nan" then return 0 / 0 end
    if t == "inf" then return math.huge end
    if t == "-inf" then return -math.huge end
    return tonumber(t) + 0.0
  end
  return math.tointeger(tonumber(s))
end

-- ------------------------------------------------------------ the objects

local metas = {} -- sub -> metatable

local function keys_of(prefix, names)
  local k = {m = prefix .. ":m"}
  for name, suffix in pairs(names) do k[name] = prefix .. ":" .. suffix end
  return k
end

local KEYS = {
  [1] = {h = "h"}, [2] = {v = "v"}, [3] = {l = "l", f = "f", w = "w"}, [4] = {l = "l", f = "f", w = "w"},
  [5] = {q = "q", c = "c", nf = "nf"}, [6] = {q = "q", c = "c", nf = "nf", u = "u", j = "j", cs = "cs"},
  [7] = {q = "q", c = "c", nf = "nf"}, [8] = {e = "e", g = "g", n = "n", w = "w"},
  [9] = {s = "s", w = "w"}, [10] = {s = "s", w = "w"}, [11] = {a = "a"}, [12] = {q = "q"}, [13] = {s = "s"},
}

local function wrap(st)
  st.k = keys_of(st.prefix, KEYS[st.sub])
  return B.wrap(st, metas[st.sub])
end

local CREATE = script [[
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
  if KEYS[2] then redis.call('SET', KEYS[2], ARGV[1]) end
end
redis.call('EXPIRE', KEYS[1], redis.call('HGET', KEYS[1], 'ttl'))
if KEYS[2] then redis.call('EXPIRE', KEYS[2], redis.call('HGET', KEYS[1], 'ttl')) end
return redis.call('HGETALL', KEYS[1])]]

-- st from a meta hash's HGETALL reply.
local function from_meta(st, r)
  for i = 1, #r, 2 do
    local v = r[i + 1]
    st[r[i]] = tonumber(v) or v
  end
  return st
end

-- Makes the object at prefix on c, or finds it there (a named one, a
-- Value's lock); meta: its settings; init: the first value of its key
-- init_key (a Value's, a Semaphore's), or nil.
local function make_at(c, sub, prefix, ttl, meta, init_key, init)
  local args = {"kind", sub, "ttl", ttl}
  for k, v in pairs(meta) do args[#args + 1] = k; args[#args + 1] = v end
  local st = {sub = sub, display = c:display(), prefix = prefix, c = c, pid = pid_now()}
  local k = keys_of(prefix, KEYS[sub])
  local r = init_key and c:eval(CREATE, 2, k.m, k[init_key], init, table.unpack(args))
    or c:eval(CREATE, 1, k.m, "", table.unpack(args))
  from_meta(st, r)
  if st.kind ~= sub then error(sfmt("Broker: %s on %s is another kind of object", prefix, st.display), 4) end
  st.touched = mp.time()
  return wrap(st)
end

local made = 0

local function create(sub, opts, meta, init_key, init)
  local url = opts.broker
  if url == true then url = nil end
  local c = B.connect(url)
  local prefix
  if opts.name ~= nil then
    if type(opts.name) ~= "string" or opts.name == "" then error("Broker: name must be a non-empty string", 3) end
    prefix = "mpe:n:" .. opts.name
  else
    made = made + 1 -- this process's name and a count: unique on every broker
    prefix = "mpe:o:" .. token():gsub(":", ".") .. "." .. made
  end
  local ttl = opts.ttl or DEFAULT_TTL
  if type(ttl) ~= "number" or ttl < 1 then error("Broker: ttl must be a number of seconds >= 1", 3) end
  return make_at(c, sub, prefix, ttl, meta, init_key, init)
end

-- The RLock of a Dict or a Value (made on first use).
local function own_lock(st)
  return make_at(conn(st), 4, st.prefix .. ":lock", st.ttl, {lease = DEFAULT_LEASE})
end

-- A reference from a message: this process's handle of the same object.
local function attach(sub, display, prefix)
  local st = {sub = sub, display = display, prefix = prefix}
  if not metas[sub] then error("Broker: an object of unknown kind " .. sub) end
  local r = conn(st):call("HGETALL", prefix .. ":m")
  if #r == 0 then error(sfmt("Broker object %s on %s is gone (its run ended, or it expired)", prefix, display)) end
  from_meta(st, r)
  st.touched = mp.time()
  return wrap(st)
end

local function S(self) return B.state(self) end

local function common(name, sub, m, index_extra)
  local mt = {__name = name}
  mt.__index = function(self, key)
    local f = m[key]
    if f ~= nil then return f end
    if index_extra then return index_extra(self, key) end
    return nil
  end
  mt.__tostring = function(self)
    local st = S(self)
    return sfmt("%s on %s (%s)", name, st.display, st.prefix)
  end
  mt.__eq = function(a, b)
    local x, y = S(a), S(b)
    return x and y and x.prefix == y.prefix and x.display == y.display
  end
  metas[sub] = mt
  B.register(mt)
  return mt
end

-- ------------------------------------------------------------------ Lock

local ACQUIRE = script [[
local o = redis.call('HGET', KEYS[1], 'o')
if not o then
  local f = redis.call('INCR', KEYS[2])
  redis.call('HSET', KEYS[1], 'o', ARGV[1], 'n', 1, 'f', f)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  redis.call('PEXPIRE', KEYS[2], ARGV[4])
  return {1, f}
end
if o == ARGV[1] then
  if ARGV[3] == '1' then
    redis.call('HINCRBY', KEYS[1], 'n', 1)
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    return {2, tonumber(redis.call('HGET', KEYS[1], 'f'))}
  end
  return {-1, redis.call('PTTL', KEYS[1])}
end
return {0, redis.call('PTTL', KEYS[1])}]]

local RELEASE = script [[
if redis.call('HGET', KEYS[1], 'o') ~= ARGV[1] then return -1 end
if redis.call('HINCRBY', KEYS[1], 'n', -1) > 0 then return 1 end
redis.call('DEL', KEYS[1])
redis.call('LPUSH', KEYS[2], 1)
redis.call('LTRIM', KEYS[2], 0, 0)
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 0]]

local function lock_name(st) return st.sub == SUB.RLock and "RLock" or "Lock" end

local function l_acquire(self, timeout)
  local st = S(self)
  local name = lock_name(st)
  local deadline = deadline_of(timeout, name)
  local lease = st.lease
  while true do
    local c = c_of(st)
    local r = c:eval(ACQUIRE, 2, st.k.l, st.k.f, token(), math.floor(lease * 1000),
      st.sub == SUB.RLock and "1" or "0", ttl_ms(st))
    if r[1] == 1 then
      held[st.prefix] = {fence = r[2], count = 1}
      B.lease_hold(c, st.k.l, my_token, lease)
      return true
    elseif r[1] == 2 then
      local h = held[st.prefix]
      if h then h.count = h.count + 1 end
      return true
    elseif r[1] == -1 and timeout == nil then
      error(name .. ": already held by this process; waiting for it would never end (use an RLock)", 2)
    end
    if expired(deadline) then return false, "timeout" end
    local pttl = r[2]
    wake_wait(st, st.k.w, deadline, pttl and pttl > 0 and pttl / 1000 + 0.005 or nil)
  end
end

local function l_release(self)
  local st = S(self)
  pid_now()
  local h = held[st.prefix]
  if not h then error(lock_name(st) .. ": cannot release a lock this process does not hold", 2) end
  local r = c_of(st):eval(RELEASE, 2, st.k.l, st.k.w, my_token, ttl_ms(st))
  if r == -1 then
    held[st.prefix] = nil
    B.lease_drop(st.k.l)
    error(lock_name(st) .. ": lease lost", 2)
  end
  if r == 1 then
    h.count = h.count - 1
  else
    held[st.prefix] = nil
    B.lease_drop(st.k.l)
  end
end

local function guard_of(self, acquire, release)
  acquire(self)
  return setmetatable({}, {__close = function() release(self) end})
end

local lock_m = {
  acquire = l_acquire,
  release = l_release,
  locked = function(self)
    local st = S(self)
    return c_of(st):call("EXISTS", st.k.l) == 1
  end,
  guard = function(self) return guard_of(self, l_acquire, l_release) end,
}
local function lock_index(self, key)
  if key == "fence" then
    local st = S(self)
    pid_now()
    local h = held[st.prefix]
    return h and h.fence or nil
  elseif key == "lease" then
    return S(self).lease
  end
end
common("Lock", SUB.Lock, lock_m, lock_index)
common("RLock", SUB.RLock, lock_m, lock_index)

local function new_lock(sub, opts)
  local lease = opts.lease or DEFAULT_LEASE
  if type(lease) ~= "number" or lease <= 0 then error("Lock: lease must be a number of seconds > 0", 3) end
  return create(sub, opts, {lease = lease})
end

-- ------------------------------------------------------------------ Dict

local function field(k)
  local t = type(k)
  if t == "string" then return "s" .. k end
  if t == "number" then
    if k ~= k then error("Dict key is NaN", 3) end
    local i = math.tointeger(k)
    if i then return sfmt("i%d", i) end
    return "f" .. sfmt("%a", k)
  end
  if t == "boolean" then return k and "b1" or "b0" end
  error("Dict key must be a string, a number or a boolean, got " .. t, 3)
end

local function unfield(f)
  local c, rest = f:sub(1, 1), f:sub(2)
  if c == "s" then return rest end
  if c == "i" then return math.tointeger(tonumber(rest)) end
  if c == "f" then
    if rest == "inf" then return math.huge elseif rest == "-inf" then return -math.huge end
    return tonumber(rest) + 0.0
  end
  return rest == "1"
end

local INCR = script [[
local v = redis.call('HGET', KEYS[1], ARGV[1])
local n = ARGV[2]
if v and string.sub(v, 1, 1) == 'e' then return {0} end
local r
if (not v or string.sub(v, 1, 1) ~= 'f') and string.sub(n, 1, 1) ~= 'f' then
  redis.call('HINCRBY', KEYS[1], ARGV[1], n)
  r = redis.call('HGET', KEYS[1], ARGV[1])
else
  local a = v and tonumber((string.gsub(v, '^f', ''))) or 0
  r = 'f' .. string.format('%.17g', a + tonumber((string.gsub(n, '^f', ''))))
  redis.call('HSET', KEYS[1], ARGV[1], r)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, r}]]

local dict_m = {}

function dict_m.get(self, k, default)
  local st = S(self)
  local v = text_val(c_of(st):call("HGET", st.k.h, field(k)))
  if v == nil then return default end
  return v
end

local function d_set(self, k, v)
  local st = S(self)
  local f = field(k)
  if v == nil then
    c_of(st):call("HDEL", st.k.h, f)
  else
    local t = val_text(v)
    c_of(st):pipe({"MULTI"}, {"HSET", st.k.h, f, t}, {"PEXPIRE", st.k.h, ttl_ms(st)}, {"EXEC"})
  end
end
dict_m.set = d_set

function dict_m.delete(self, k)
  local st = S(self)
  local r = c_of(st):pipe({"MULTI"}, {"HGET", st.k.h, field(k)}, {"HDEL", st.k.h, field(k)}, {"EXEC"})
  local v = r[4][1]
  return text_val(v or nil)
end

local function d_len(self)
  local st = S(self)
  return c_of(st):call("HLEN", st.k.h)
end
dict_m.len = d_len

function dict_m.keys(self)
  local st = S(self)
  local r = c_of(st):call("HKEYS", st.k.h)
  local out = {}
  for i = 1, #r do out[i] = unfield(r[i]) end
  return out
end

local function d_items(self)
  local st = S(self)
  local r = c_of(st):call("HGETALL", st.k.h)
  local out = {}
  for i = 1, #r, 2 do out[unfield(r[i])] = text_val(r[i + 1]) end
  return out
end
dict_m.items = d_items

function dict_m.clear(self)
  local st = S(self)
  c_of(st):call("DEL", st.k.h)
end

-- update: optimistic, WATCH on the hash: fn runs again if another process
-- changed the Dict between the read and the write.
function dict_m.update(self, k, fn)
  local st = S(self)
  local f = field(k)
  if type(fn) ~= "function" and not (getmetatable(fn) or {}).__call then
    error("Dict: update needs a function", 2)
  end
  while true do
    local c = c_of(st)
    c:call("WATCH", st.k.h)
    local ok, new = pcall(function() return fn(text_val(c:call("HGET", st.k.h, f))) end)
    if not ok then
      c:call("UNWATCH")
      error(new, 0)
    end
    local op = new == nil and {"HDEL", st.k.h, f} or {"HSET", st.k.h, f, val_text(new)}
    local r = c:pipe({"MULTI"}, op, {"PEXPIRE", st.k.h, ttl_ms(st)}, {"EXEC"})
    if r[4] then return new end
    B.check_signal()
  end
end

function dict_m.incr(self, k, n)
  local st = S(self)
  if n == nil then n = 1 end
  if type(n) ~= "number" then error("Dict: incr: n must be a number", 2) end
  local r = c_of(st):eval(INCR, 1, st.k.h, field(k), num_text(n), ttl_ms(st))
  if r[1] == 0 then error(sfmt("Dict: incr: the value at key %s is not a number", tostring(k)), 2) end
  return text_val(r[2])
end

function dict_m.get_lock(self)
  local st = S(self)
  if not st.lock then st.lock = own_lock(st) end
  return st.lock
end

local dict_mt = common("Dict", SUB.Dict, dict_m, function(self, key) return dict_m.get(self, key) end)
dict_mt.__newindex = d_set
dict_mt.__len = d_len
dict_mt.__pairs = function(self) return next, d_items(self), nil end

-- ----------------------------------------------------------------- Value

local RANGES = {
  b = {-128, 127}, B = {0, 255}, h = {-32768, 32767}, H = {0, 65535},
  i = {-2147483648, 2147483647}, I = {0, 4294967295}, l = {math.mininteger, math.maxinteger},
  L = {0, math.maxinteger}, q = {math.mininteger, math.maxinteger}, Q = {0, math.maxinteger},
}

local function v_check(tc, x)
  if tc == "f" or tc == "d" then
    if type(x) ~= "number" then error(sfmt("Value: typecode '%s' holds numbers, got %s", tc, type(x)), 3) end
    return x + 0.0
  end
  if tc == "c" then
    if type(x) ~= "string" or #x ~= 1 then
      error(sfmt("Value: typecode 'c' holds one-byte strings, got %s", type(x) == "string"
        and ("a string of length " .. #x) or type(x)), 3)
    end
    return x
  end
  local r = RANGES[tc]
  if mtype(x) ~= "integer" then
    local i = type(x) == "number" and math.tointeger(x)
    if not i then error(sfmt("Value: typecode '%s' holds integers, got %s", tc, tostring(x)), 3) end
    x = i
  end
  if x < r[1] or x > r[2] then error(sfmt("Value: %d is out of range for typecode '%s'", x, tc), 3) end
  return x
end

local ADD = script [[
local v = redis.call('GET', KEYS[1]) or '0'
local n = ARGV[1]
local r
if string.sub(v, 1, 1) ~= 'f' and string.sub(n, 1, 1) ~= 'f' then
  local x = redis.call('INCRBY', KEYS[1], n)
  if ARGV[3] ~= '' and (x < tonumber(ARGV[3]) or x > tonumber(ARGV[4])) then
    redis.call('DECRBY', KEYS[1], n); return {0}
  end
  r = redis.call('GET', KEYS[1])
else
  local a = tonumber((string.gsub(v, '^f', '')))
  r = 'f' .. string.format('%.17g', a + tonumber((string.gsub(n, '^f', ''))))
  redis.call('SET', KEYS[1], r)
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, r}]]

local value_m = {}

function value_m.add(self, n)
  local st = S(self)
  local tc = st.typecode
  if tc == "c" then error("Value: add needs a number typecode", 2) end
  if type(n) ~= "number" then error("Value: add: n must be a number", 2) end
  if tc ~= "f" and tc ~= "d" then n = v_check(tc == "Q" and "q" or tc == "L" and "l" or "q", n) end
  local r = RANGES[tc]
  local narrow = r and r[2] < math.maxinteger
  local out = c_of(st):eval(ADD, 1, st.k.v, num_text((tc == "f" or tc == "d") and n + 0.0 or n), ttl_ms(st),
    narrow and sfmt("%d", r[1]) or "", narrow and sfmt("%d", r[2]) or "")
  if out[1] == 0 then error(sfmt("Value: adding %s goes out of range for typecode '%s'", tostring(n), tc), 2) end
  return text_val(out[2])
end

function value_m.get_lock(self)
  local st = S(self)
  if st.nolock == 1 then error("Value: made with {lock = false}: it has no lock", 2) end
  if not st.lock then
    if st.lockref and st.lockref ~= "" then
      local sub, prefix = st.lockref:match("^(%d+):(.*)$")
      st.lock = attach(tonumber(sub), st.display, prefix)
    else
      st.lock = own_lock(st)
    end
  end
  return st.lock
end

local value_mt = common("Value", SUB.Value, value_m, function(self, key)
  local st = S(self)
  if key == "value" then
    local s = c_of(st):call("GET", st.k.v)
    if st.typecode == "c" then return s and B.decode(s:sub(2)) or "\0" end
    return text_val(s) or (st.typecode:match("[fd]") and 0.0 or 0)
  elseif key == "typecode" then
    return st.typecode
  end
end)
value_mt.__newindex = function(self, key, x)
  local st = S(self)
  if key ~= "value" then error("Value: only .value can be set", 2) end
  x = v_check(st.typecode, x)
  c_of(st):call("SET", st.k.v, val_text(x), "PX", ttl_ms(st))
end

-- ------------------------------------------------------------------ Array

-- A hash of elements by index ("1".."n"), so an add is HINCRBY (exact 64-bit).
local ACREATE = script [[
if redis.call('EXISTS', KEYS[1]) == 0 then
  local n = tonumber(ARGV[1])
  redis.call('HSET', KEYS[1], unpack(ARGV, n * 2 + 2))
  for i = 1, n do redis.call('HSET', KEYS[2], ARGV[2 * i], ARGV[2 * i + 1]) end
end
local ttl = redis.call('HGET', KEYS[1], 'ttl')
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return redis.call('HGETALL', KEYS[1])]]

local AADD = script [[
local v = redis.call('HGET', KEYS[1], ARGV[1]) or '0'
local n = ARGV[2]
local r
if string.sub(v, 1, 1) ~= 'f' and string.sub(n, 1, 1) ~= 'f' then
  redis.call('HINCRBY', KEYS[1], ARGV[1], n)
  r = redis.call('HGET', KEYS[1], ARGV[1])
  if ARGV[4] ~= '' and (tonumber(r) < tonumber(ARGV[4]) or tonumber(r) > tonumber(ARGV[5])) then
    redis.call('HINCRBY', KEYS[1], ARGV[1], -tonumber(n)); return {0}
  end
else
  r = 'f' .. string.format('%.17g', tonumber((string.gsub(v, '^f', ''))) + tonumber((string.gsub(n, '^f', ''))))
  redis.call('HSET', KEYS[1], ARGV[1], r)
end
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return {1, r}]]

local function a_index(st, i)
  if mtype(i) ~= "integer" then i = type(i) == "number" and math.tointeger(i) or nil end
  if not i or i < 1 or i > st.n then
    error(sfmt("Array index %s out of range (1..%d)", tostring(i), st.n), 3)
  end
  return i
end

local function a_val(st, s)
  if s == nil or s == false then return st.typecode == "c" and "\0" or st.typecode:match("^[fd]$") and 0.0 or 0 end
  return text_val(s)
end

local function a_range(st, i, j, what)
  if i < 1 or j > st.n or j < i - 1 then
    error(sfmt("Array: elements %d..%d out of range (1..%d)", i, j, st.n), 3)
  end
  return what
end

local array_m = {}

function array_m.totable(self)
  local st = S(self)
  local fields = {}
  for i = 1, st.n do fields[i] = i end
  if st.n == 0 then return {} end
  local r = c_of(st):call("HMGET", st.k.a, table.unpack(fields))
  local out = {}
  for i = 1, st.n do out[i] = a_val(st, r[i]) end
  return out
end

function array_m.slice(self, i, j)
  local st = S(self)
  i, j = i or 1, j or st.n
  a_range(st, i, j)
  if j < i then return {} end
  local fields = {}
  for x = i, j do fields[#fields + 1] = x end
  local r = c_of(st):call("HMGET", st.k.a, table.unpack(fields))
  local out = {}
  for x = 1, #fields do out[x] = a_val(st, r[x]) end
  return out
end

function array_m.store(self, list, i)
  local st = S(self)
  i = i or 1
  a_range(st, i, i + #list - 1)
  if #list == 0 then return end
  local args = {"HSET", st.k.a}
  for x = 1, #list do
    args[#args + 1] = i + x - 1
    args[#args + 1] = val_text(v_check(st.typecode, list[x]))
  end
  c_of(st):pipe({"MULTI"}, args, {"PEXPIRE", st.k.a, ttl_ms(st)}, {"EXEC"})
end

function array_m.add(self, i, n)
  local st = S(self)
  i = a_index(st, i)
  local tc = st.typecode
  if tc == "c" then error("Array: add needs a number typecode", 2) end
  if type(n) ~= "number" then error("Array: add: n must be a number", 2) end
  local float = tc == "f" or tc == "d"
  if not float then n = v_check("q", n) end
  local r = RANGES[tc]
  local narrow = r and r[2] < math.maxinteger
  local out = c_of(st):eval(AADD, 1, st.k.a, i, num_text(float and n + 0.0 or n), ttl_ms(st),
    narrow and sfmt("%d", r[1]) or "", narrow and sfmt("%d", r[2]) or "")
  if out[1] == 0 then error(sfmt("Array: adding %s goes out of range for typecode '%s'", tostring(n), tc), 2) end
  return text_val(out[2])
end

array_m.get_lock = function(self)
  local st = S(self)
  if st.nolock == 1 then error("Array: made with {lock = false}: it has no lock", 2) end
  if not st.lock then st.lock = own_lock(st) end
  return st.lock
end

local array_mt = common("Array", SUB.Array, array_m, function(self, key)
  local st = S(self)
  if key == "typecode" then return st.typecode end
  if type(key) == "number" then
    local i = a_index(st, key)
    return a_val(st, c_of(st):call("HGET", st.k.a, i))
  end
end)
array_mt.__newindex = function(self, key, x)
  local st = S(self)
  local i = a_index(st, key)
  x = v_check(st.typecode, x)
  c_of(st):pipe({"HSET", st.k.a, i, val_text(x)}, {"PEXPIRE", st.k.a, ttl_ms(st)})
end
array_mt.__len = function(self) return S(self).n end

-- ------------------------------------------------------------------ Queue

local CLOSED = "\255closed"

local PUT = script [[
if redis.call('EXISTS', KEYS[2]) == 1 then return -1 end
local max = tonumber(ARGV[2])
if max > 0 and redis.call('LLEN', KEYS[1]) >= max then return 0 end
redis.call('RPUSH', KEYS[1], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
if KEYS[3] then redis.call('INCR', KEYS[3]); redis.call('PEXPIRE', KEYS[3], ARGV[3]) end
return 1]]

local CLOSE = script [[
if redis.call('SET', KEYS[2], 1, 'NX', 'PX', ARGV[1]) then
  redis.call('RPUSH', KEYS[1], ARGV[2]); redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return 1]]

-- A consumer's taken-but-unacknowledged items go back to the head of the
-- queue once its heartbeat key lapsed (its process or host is gone).
local RECLAIM = script [[
local moved = 0
for _, t in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. ':hb:' .. t) == 0 then
    local p = ARGV[1] .. ':p:' .. t
    while redis.call('RPOPLPUSH', p, KEYS[2]) do moved = moved + 1 end
    redis.call('SREM', KEYS[1], t)
  end
end
if moved > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return moved]]

local TASK_DONE = script [[
if tonumber(redis.call('GET', KEYS[1]) or '0') <= 0 then return -1 end
redis.call('LPOP', KEYS[3])
local u = redis.call('DECR', KEYS[1])
if u <= 0 then
  redis.call('LPUSH', KEYS[2], 1); redis.call('LTRIM', KEYS[2], 0, 0); redis.call('PEXPIRE', KEYS[2], ARGV[1])
end
return u]]

local UNCLOSE = script [[
redis.call('LREM', KEYS[1], 1, ARGV[1])
redis.call('RPUSH', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1]]

local QNAMES = {[5] = "Queue", [6] = "JoinableQueue", [7] = "SimpleQueue"}

local function q_put(self, v, timeout, nowait)
  local st = S(self)
  if v == nil then error(QNAMES[st.sub] .. ": put(nil): nil cannot be put", 2) end
  local data = B.encode(v)
  local deadline = deadline_of(timeout, QNAMES[st.sub])
  while true do
    local c = c_of(st)
    local r
    if st.sub == SUB.JoinableQueue then
      r = c:eval(PUT, 3, st.k.q, st.k.c, st.k.u, data, st.maxsize, ttl_ms(st))
    else
      r = c:eval(PUT, 2, st.k.q, st.k.c, data, st.maxsize, ttl_ms(st))
    end
    if r == 1 then return true end
    if r == -1 then error(QNAMES[st.sub] .. " is closed", 2) end
    if nowait then return nil, "full" end
    if expired(deadline) then return nil, "timeout" end
    wake_wait(st, st.k.nf, deadline)
  end
end

-- A JoinableQueue's consumer: its heartbeat (lease) and its list of taken items.
function consumer(st)
  local t = token()
  if st.ctoken ~= t or mp.time() - st.beat >= st.lease / 3 then
    st.ctoken, st.beat = t, mp.time()
    beats[st.prefix] = st
    st.pend = st.prefix .. ":p:" .. t
    conn(st):pipe({"SET", st.prefix .. ":hb:" .. t, 1, "PX", math.floor(st.lease * 1000)},
      {"SADD", st.k.cs, t}, {"PEXPIRE", st.k.cs, ttl_ms(st)}, {"PEXPIRE", st.pend, ttl_ms(st)})
  end
  return st.pend
end

local function q_took(st, data)
  if st.maxsize > 0 then
    conn(st):pipe({"LPUSH", st.k.nf, 1}, {"LTRIM", st.k.nf, 0, 0}, {"PEXPIRE", st.k.nf, ttl_ms(st)})
  end
  return B.decode(data)
end

local function q_get(self, timeout, nowait)
  local st = S(self)
  local deadline = deadline_of(timeout, QNAMES[st.sub])
  local joinable = st.sub == SUB.JoinableQueue
  while true do
    local c = c_of(st)
    local data
    if joinable then
      local pend = consumer(st)
      if nowait then
        data = c:pipe({"LMOVE", st.k.q, pend, "LEFT", "RIGHT"}, {"PEXPIRE", pend, ttl_ms(st)})[1]
      else
        local s = slice_of(deadline) -- (a slice is shorter than the read timeout)
        data = c:pipe({"BLMOVE", st.k.q, pend, "LEFT", "RIGHT", sfmt("%.3f", s)}, {"PEXPIRE", pend, ttl_ms(st)})[1]
      end
      if data == CLOSED then
        c:eval(UNCLOSE, 2, pend, st.k.q, CLOSED, ttl_ms(st))
        return nil, "closed"
      end
    else
      if nowait then
        data = c:call("LPOP", st.k.q)
      else
        local s = slice_of(deadline)
        local r = c:bcall(s, "BLPOP", st.k.q, sfmt("%.3f", s))
        data = r and r[2]
      end
      if data == CLOSED then
        c:pipe({"RPUSH", st.k.q, CLOSED}, {"PEXPIRE", st.k.q, ttl_ms(st)})
        return nil, "closed"
      end
    end
    if data then return q_took(st, data) end
    if joinable then c:eval(RECLAIM, 2, st.k.cs, st.k.q, st.prefix, ttl_ms(st)) end
    B.check_signal()
    if nowait then return nil, "empty" end
    if expired(deadline) then return nil, "timeout" end
  end
end

local function q_qsize(self)
  local st = S(self)
  local r = c_of(st):pipe({"LLEN", st.k.q}, {"EXISTS", st.k.c})
  local n = r[1]
  if r[2] == 1 and n > 0 then n = n - 1 end
  return n
end

local queue_m = {
  put = function(self, v, timeout) return q_put(self, v, timeout) end,
  put_nowait = function(self, v) return q_put(self, v, nil, true) end,
  get = function(self, timeout) return q_get(self, timeout) end,
  get_nowait = function(self) return q_get(self, nil, true) end,
  qsize = q_qsize,
  empty = function(self) return q_qsize(self) == 0 end,
  full = function(self)
    local st = S(self)
    return st.maxsize > 0 and q_qsize(self) >= st.maxsize
  end,
  maxsize = function(self) return S(self).maxsize end,
  is_closed = function(self)
    local st = S(self)
    return c_of(st):call("EXISTS", st.k.c) == 1
  end,
  close = function(self)
    local st = S(self)
    c_of(st):eval(CLOSE, 2, st.k.q, st.k.c, ttl_ms(st), CLOSED)
  end,
  iter = function(self)
    return function()
      local v, why = q_get(self)
      if v == nil and why == "closed" then return nil end
      return v
    end
  end,
}

local jq_m = setmetatable({
  task_done = function(self)
    local st = S(self)
    local pend = consumer(st)
    local r = c_of(st):eval(TASK_DONE, 3, st.k.u, st.k.j, pend, ttl_ms(st))
    if r == -1 then error("task_done() called more times than items were put", 2) end
  end,
  join = function(self, timeout)
    local st = S(self)
    local deadline = deadline_of(timeout, "JoinableQueue")
    while true do
      local c = c_of(st)
      c:eval(RECLAIM, 2, st.k.cs, st.k.q, st.prefix, ttl_ms(st))
      if tonumber(c:call("GET", st.k.u) or "0") <= 0 then
        -- the next joiner goes on too
        c:pipe({"LPUSH", st.k.j, 1}, {"LTRIM", st.k.j, 0, 0}, {"PEXPIRE", st.k.j, ttl_ms(st)})
        return true
      end
      if expired(deadline) then return false, "timeout" end
      wake_wait(st, st.k.j, deadline)
    end
  end,
}, {__index = queue_m})

local sq_m = {}
for _, name in ipairs {"put", "get", "empty", "close", "iter", "is_closed"} do sq_m[name] = queue_m[name] end

common("Queue", SUB.Queue, queue_m)
common("JoinableQueue", SUB.JoinableQueue, jq_m)
common("SimpleQueue", SUB.SimpleQueue, sq_m)

-- ------------------------------------------------------------------ Event

local SET = script [[
redis.call('SET', KEYS[1], 1, 'PX', ARGV[1])
redis.call('INCR', KEYS[2]); redis.call('PEXPIRE', KEYS[2], ARGV[1])
local n = tonumber(redis.call('GET', KEYS[3]) or '0')
if n > 1000 then n = 1000 end
for _ = 1, n do redis.call('LPUSH', KEYS[4], 1) end
if n > 0 then redis.call('PEXPIRE', KEYS[4], ARGV[1]) end
return 1]]

local event_m = {
  set = function(self)
    local st = S(self)
    c_of(st):eval(SET, 4, st.k.e, st.k.g, st.k.n, st.k.w, ttl_ms(st))
  end,
  clear = function(self)
    local st = S(self)
    c_of(st):call("DEL", st.k.e)
  end,
  is_set = function(self)
    local st = S(self)
    return c_of(st):call("EXISTS", st.k.e) == 1
  end,
  _waiting = function(self)
    local st = S(self)
    return tonumber(c_of(st):call("GET", st.k.n) or "0")
  end,
  wait = function(self, timeout)
    local st = S(self)
    local deadline = deadline_of(timeout, "Event")
    local c = c_of(st)
    local r = c:pipe({"INCR", st.k.n}, {"PEXPIRE", st.k.n, ttl_ms(st)}, {"GET", st.k.e}, {"GET", st.k.g})
    local g0 = r[4]
    local ok, res = pcall(function()
      if r[3] then return true end
      while true do
        if expired(deadline) then return false end
        wake_wait(st, st.k.w, deadline)
        local now = c_of(st):pipe({"GET", st.k.e}, {"GET", st.k.g})
        if now[1] or now[2] ~= g0 then return true end
      end
    end)
    conn(st):call("DECR", st.k.n)
    if not ok then error(res, 0) end
    if res then return true end
    return false, "timeout"
  end,
}
common("Event", SUB.Event, event_m)

-- -------------------------------------------------------------- Semaphore

local SEM_ACQ = script [[
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if v > 0 then redis.call('DECR', KEYS[1]); redis.call('PEXPIRE', KEYS[1], ARGV[1]); return 1 end
return 0]]

local SEM_REL = script [[
local v = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[2] ~= '' and v >= tonumber(ARGV[2]) then return -1 end
redis.call('INCR', KEYS[1]); redis.call('PEXPIRE', KEYS[1], ARGV[1])
redis.call('LPUSH', KEYS[2], 1); redis.call('LTRIM', KEYS[2], 0, 63); redis.call('PEXPIRE', KEYS[2], ARGV[1])
return 1]]

local function s_acquire(self, timeout)
  local st = S(self)
  local deadline = deadline_of(timeout, "Semaphore")
  while true do
    if c_of(st):eval(SEM_ACQ, 1, st.k.s, ttl_ms(st)) == 1 then return true end
    if expired(deadline) then return false, "timeout" end
    wake_wait(st, st.k.w, deadline)
  end
end

local function s_release(self)
  local st = S(self)
  local r = c_of(st):eval(SEM_REL, 2, st.k.s, st.k.w, ttl_ms(st), st.sub == SUB.BoundedSemaphore and st.n or "")
  if r == -1 then error("BoundedSemaphore: released too many times", 2) end
end

local sem_m = {
  acquire = s_acquire,
  release = s_release,
  get_value = function(self)
    local st = S(self)
    return tonumber(c_of(st):call("GET", st.k.s) or "0")
  end,
  guard = function(self) return guard_of(self, s_acquire, s_release) end,
}
common("Semaphore", SUB.Semaphore, sem_m)
common("BoundedSemaphore", SUB.BoundedSemaphore, sem_m)

-- -------------------------------------------------------------- Condition

-- Each waiter parks a wake-up list of its own in the condition's waiters
-- list; notify(n) moves n of them (oldest first) to "notified".
local NOTIFY = script [[
local n = 0
while n < tonumber(ARGV[1]) do
  local k = redis.call('LPOP', KEYS[1])
  if not k then break end
  redis.call('RPUSH', k, 1); redis.call('PEXPIRE', k, ARGV[2])
  n = n + 1
end
return n]]

local function cond_lock(st)
  if not st.lock then
    if st.lockref == "" then
      st.lock = own_lock(st) -- its own RLock
    else
      local sub, prefix = st.lockref:match("^(%d+):(.*)$")
      st.lock = attach(tonumber(sub), st.display, prefix)
    end
  end
  return st.lock
end

local function cond_held(st, what)
  local lk = cond_lock(st)
  pid_now()
  local h = held[S(lk).prefix]
  if not h then error("Condition: cannot " .. what .. " without holding its lock", 3) end
  return lk, h
end

local waits = 0

local function cond_wait_once(self, deadline)
  local st = S(self)
  local lk, h = cond_held(st, "wait")
  waits = waits + 1
  local wk = sfmt("%s:w:%s.%d", st.prefix, token(), waits)
  c_of(st):pipe({"RPUSH", st.k.q, wk}, {"PEXPIRE", st.k.q, ttl_ms(st)})
  local count = h.count
  for _ = 1, count do l_release(lk) end
  local ok, notified = pcall(function()
    while true do
      local s = slice_of(deadline)
      if conn(st):bcall(s, "BLPOP", wk, sfmt("%.3f", s)) then return true end
      B.check_signal()
      if expired(deadline) then return false end
    end
  end)
  if not (ok and notified) then
    -- gone from the waiters list: a notify took it meanwhile, and its wake-up is there
    if conn(st):call("LREM", st.k.q, 1, wk) == 0 and ok then
      notified = conn(st):bcall(1, "BLPOP", wk, "1") and true or false
    end
  end
  for _ = 1, count do l_acquire(lk) end
  if not ok then error(notified, 0) end
  return notified
end

local cond_m = {
  acquire = function(self, timeout) return l_acquire(cond_lock(S(self)), timeout) end,
  release = function(self) return l_release(cond_lock(S(self))) end,
  get_lock = function(self) return cond_lock(S(self)) end,
  guard = function(self) return cond_lock(S(self)):guard() end,
  wait = function(self, timeout)
    local deadline = deadline_of(timeout, "Condition")
    if cond_wait_once(self, deadline) then return true end
    return false, "timeout"
  end,
  wait_for = function(self, pred, timeout)
    local deadline = deadline_of(timeout, "Condition")
    cond_held(S(self), "wait")
    while true do
      local v = pred()
      if v or expired(deadline) then return v end
      cond_wait_once(self, deadline)
    end
  end,
  notify = function(self, n)
    local st = S(self)
    n = n or 1
    if mtype(n) ~= "integer" or n < 1 then error("Condition: n must be >= 1", 2) end
    cond_held(st, "notify")
    c_of(st):eval(NOTIFY, 1, st.k.q, n, ttl_ms(st))
  end,
  notify_all = function(self)
    local st = S(self)
    cond_held(st, "notify")
    c_of(st):eval(NOTIFY, 1, st.k.q, 1000000, ttl_ms(st))
  end,
  _waiting = function(self)
    local st = S(self)
    return c_of(st):call("LLEN", st.k.q)
  end,
}
common("Condition", SUB.Condition, cond_m)

-- ---------------------------------------------------------------- Barrier

-- s: {gen, count, broken}; the waiters of round gen wait on PREFIX:w:gen.
local ARRIVE = script [[
if redis.call('HGET', KEYS[1], 'broken') == '1' then return {-1} end
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local count = redis.call('HINCRBY', KEYS[1], 'count', 1)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
if count >= tonumber(ARGV[1]) then return {1, gen, count - 1} end
return {0, gen, count - 1}]]

-- The round ends: passed (ARGV[3] ok) or broken; every waiter of it wakes.
local PASS = script [[
local gen = redis.call('HGET', KEYS[1], 'gen') or '0'
if gen ~= ARGV[4] then return 0 end
local w = ARGV[1] .. ':w:' .. gen
if ARGV[3] == 'ok' then
  redis.call('HSET', KEYS[1], 'count', 0, 'gen', tonumber(gen) + 1)
else
  redis.call('HSET', KEYS[1], 'broken', 1)
end
for _ = 1, tonumber(ARGV[5]) do redis.call('RPUSH', w, ARGV[3]) end
redis.call('PEXPIRE', w, ARGV[2]); redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1]]

local RESET = script [[
local gen = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
local w = ARGV[1] .. ':w:' .. gen
for _ = 1, tonumber(ARGV[3]) do redis.call('RPUSH', w, 'broken') end
redis.call('PEXPIRE', w, ARGV[2])
redis.call('HSET', KEYS[1], 'count', 0, 'gen', gen + 1, 'broken', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1]]

local function b_end(st, gen, how)
  c_of(st):eval(PASS, 1, st.k.s, st.prefix, ttl_ms(st), how, gen, st.parties)
end

local function b_action(st)
  if st.action_fn == nil then
    st.action_fn = st.action ~= "" and text_val(st.action) or false
  end
  return st.action_fn
end

local barrier_m = {
  wait = function(self, timeout)
    local st = S(self)
    if timeout == nil and st.timeout >= 0 then timeout = st.timeout end
    local deadline = deadline_of(timeout, "Barrier")
    local r = c_of(st):eval(ARRIVE, 1, st.k.s, st.parties, ttl_ms(st))
    if r[1] == -1 then return nil, "closed", "broken" end
    local gen, index = r[2], r[3]
    if r[1] == 1 then
      local action = b_action(st)
      local ok, err = true, nil
      if action then ok, err = pcall(action) end
      b_end(st, gen, ok and "ok" or "broken")
      if not ok then error(err, 0) end
      return index
    end
    local wk = sfmt("%s:w:%d", st.prefix, gen)
    local ok, res = pcall(function()
      while true do
        local s = slice_of(deadline)
        local got = conn(st):bcall(s, "BLPOP", wk, sfmt("%.3f", s))
        if got then return got[2] end
        B.check_signal()
        if expired(deadline) then return "timeout" end
      end
    end)
    if not ok or res == "timeout" then -- leaving breaks the round, as in Python
      b_end(st, gen, "broken")
      if not ok then error(res, 0) end
      return nil, "timeout"
    end
    if res == "ok" then return index end
    return nil, "closed", "broken"
  end,
  abort = function(self)
    local st = S(self)
    local gen = c_of(st):call("HGET", st.k.s, "gen") or "0"
    b_end(st, gen, "broken")
  end,
  reset = function(self)
    local st = S(self)
    c_of(st):eval(RESET, 1, st.k.s, st.prefix, ttl_ms(st), st.parties)
  end,
}
common("Barrier", SUB.Barrier, barrier_m, function(self, key)
  local st = S(self)
  if key == "parties" then return st.parties end
  if key == "broken" then return c_of(st):call("HGET", st.k.s, "broken") == "1" end
  if key == "n_waiting" then
    local r = c_of(st):call("HMGET", st.k.s, "count", "broken")
    if r[2] == "1" then return 0 end
    return tonumber(r[1] or "0")
  end
end)

-- ------------------------------------------------------ the constructors

-- The options of a constructor call: its last argument when that is a plain
-- table with a `broker` or `name` field. Returns the options (or nil) and
-- the other arguments.
local function split(...)
  local n = select("#", ...)
  local args = table.pack(...)
  local last = args[n]
  if n > 0 and type(last) == "table" and getmetatable(last) == nil and (last.broker ~= nil or last.name ~= nil) then
    args[n], args.n = nil, n - 1
    return last, args
  end
  return nil, args
end

-- The options without the broker's own, for the local constructor.
local function local_opts(opts, args)
  local rest, any = {}, false
  for k, v in pairs(opts) do
    if k ~= "broker" and k ~= "name" and k ~= "ttl" and k ~= "lease" then rest[k], any = v, true end
  end
  if any then
    args.n = args.n + 1
    args[args.n] = rest
  end
  return table.unpack(args, 1, args.n)
end

local function wants_broker(opts)
  if opts then
    if opts.broker == false then return false end
    if opts.broker ~= nil and opts.broker ~= true and type(opts.broker) ~= "string" then
      error("broker must be a URL, true (the run's broker) or false (a local object)", 3)
    end
    if opts.broker ~= nil then return true end
    if opts.name ~= nil and B.display() == nil then error("name: only for an object on a broker", 3) end
  end
  return B.display() ~= nil
end

local function wrap_ctor(name, make)
  local local_ctor = mp[name]
  mp[name] = function(...)
    local opts, args = split(...)
    if not wants_broker(opts) then
      if opts then return local_ctor(local_opts(opts, args)) end
      return local_ctor(...)
    end
    return make(opts or {broker = true}, args)
  end
end

wrap_ctor("Dict", function(opts) return create(SUB.Dict, opts, {}) end)
wrap_ctor("Lock", function(opts) return new_lock(SUB.Lock, opts) end)
wrap_ctor("RLock", function(opts) return new_lock(SUB.RLock, opts) end)
wrap_ctor("Event", function(opts) return create(SUB.Event, opts, {}) end)

local function queue_ctor(sub)
  return function(opts, args)
    local maxsize = args[1] or opts.maxsize or 0
    if mtype(maxsize) ~= "integer" or maxsize < 0 then error(QNAMES[sub] .. ": maxsize must be an integer >= 0", 3) end
    local lease = opts.lease or DEFAULT_LEASE
    return create(sub, opts, {maxsize = maxsize, lease = lease})
  end
end
wrap_ctor("Queue", queue_ctor(SUB.Queue))
wrap_ctor("JoinableQueue", queue_ctor(SUB.JoinableQueue))
wrap_ctor("SimpleQueue", queue_ctor(SUB.SimpleQueue))

local function sem_ctor(sub)
  return function(opts, args)
    local n = args[1] or opts.value or 1
    if mtype(n) ~= "integer" or n < 0 then error("Semaphore: value must be an integer >= 0", 3) end
    return create(sub, opts, {n = n}, "s", n)
  end
end
wrap_ctor("Semaphore", sem_ctor(SUB.Semaphore))
wrap_ctor("BoundedSemaphore", sem_ctor(SUB.BoundedSemaphore))

wrap_ctor("Value", function(opts, args)
  local tc, init = args[1], args[2]
  if type(tc) ~= "string" or not (RANGES[tc] or tc == "f" or tc == "d" or tc == "c") then
    error("Value: bad typecode " .. tostring(tc), 3)
  end
  if init == nil then init = tc == "c" and "\0" or (tc == "f" or tc == "d") and 0.0 or 0 end
  init = v_check(tc, init)
  local meta = {typecode = tc, nolock = opts.lock == false and 1 or 0, lockref = ""}
  if opts.lock ~= nil and opts.lock ~= true and opts.lock ~= false then
    local ls = B.state(opts.lock)
    if not ls or (ls.sub ~= SUB.Lock and ls.sub ~= SUB.RLock) then
      error("Value: lock must be true, false, or a Lock or RLock on the same broker", 3)
    end
    meta.lockref = ls.sub .. ":" .. ls.prefix
  end
  return create(SUB.Value, opts, meta, "v", tc == "c" and ("e" .. B.encode(init)) or val_text(init))
end)

wrap_ctor("Array", function(opts, args)
  local tc, init = args[1], args[2]
  if type(tc) ~= "string" or not (RANGES[tc] or tc == "f" or tc == "d" or tc == "c") then
    error("Array: bad typecode " .. tostring(tc), 3)
  end
  local values = {}
  if type(init) == "string" and tc == "c" then
    for i = 1, #init do values[i] = init:sub(i, i) end
  elseif type(init) == "table" then
    for i = 1, #init do values[i] = v_check(tc, init[i]) end
  elseif mtype(init) == "integer" and init >= 0 then
    values = nil
  else
    error("Array: size_or_table must be an integer >= 0 or a list", 3)
  end
  local n = values and #values or init
  local c = B.connect(opts.broker ~= true and opts.broker or nil)
  local prefix
  if opts.name ~= nil then
    prefix = "mpe:n:" .. opts.name
  else
    made = made + 1
    prefix = "mpe:o:" .. token():gsub(":", ".") .. "." .. made
  end
  local ttl = opts.ttl or DEFAULT_TTL
  local argv = {values and #values or 0}
  for i = 1, values and #values or 0 do
    argv[#argv + 1] = i
    argv[#argv + 1] = val_text(values[i])
  end
  for _, kv in ipairs {{"kind", SUB.Array}, {"ttl", ttl}, {"typecode", tc}, {"n", n},
    {"nolock", opts.lock == false and 1 or 0}} do
    argv[#argv + 1] = kv[1]
    argv[#argv + 1] = kv[2]
  end
  local st = {sub = SUB.Array, display = c:display(), prefix = prefix, c = c, pid = pid_now()}
  local k = keys_of(prefix, KEYS[SUB.Array])
  from_meta(st, c:eval(ACREATE, 2, k.m, k.a, table.unpack(argv)))
  if st.kind ~= SUB.Array then error(sfmt("Broker: %s on %s is another kind of object", prefix, st.display), 3) end
  st.touched = mp.time()
  return wrap(st)
end)

wrap_ctor("Condition", function(opts, args)
  local lk = args[1]
  local lockref
  if lk == nil then
    lockref = "" -- its own RLock
  else
    local ls = B.state(lk)
    if not ls or (ls.sub ~= SUB.Lock and ls.sub ~= SUB.RLock) then
      error("Condition: lock must be a Lock or RLock on the same broker", 3)
    end
    lockref = ls.sub .. ":" .. ls.prefix
  end
  return create(SUB.Condition, opts, {lockref = lockref})
end)

wrap_ctor("Barrier", function(opts, args)
  local parties, action, timeout = args[1], args[2], args[3]
  if mtype(parties) ~= "integer" or parties < 1 then error("Barrier: parties must be >= 1", 3) end
  if action ~= nil and type(action) ~= "function" then error("Barrier: action must be a function", 3) end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error("Barrier: timeout must be a number of seconds >= 0", 3)
  end
  return create(SUB.Barrier, opts, {parties = parties, action = action and val_text(action) or "",
    timeout = timeout or -1})
end)

return attach
