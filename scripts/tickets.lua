-- tickets.lua - seed 004's ticket sale: a JSON file {"count": 3}, 10 buyers,
-- one Lock around read-check-write: exactly 3 succeed, the file ends at 0.
--
--   mpengine run scripts/tickets.lua [--unlocked] [DBFILE]
--
-- Without the lock (--unlocked), buyers read the same count and oversell.
--
-- Across hosts, on the run's broker: the database is an mp.Dict there, the
-- Lock a lease there; each host runs its share of the buyers, all of the sale
-- (named SALE) start together, and each host prints what it sold:
--
--   MPENGINE_BROKER=URL mpengine run scripts/tickets.lua --broker [--unlocked]
--       [--sale SALE] [--buyers N (on this host, 10)] [--of TOTAL (all hosts, = N)]
--   ... --broker --sale SALE --left      prints the tickets left
local mp = require "mpengine"
local cjson = require "cjson"

local M = {}

local function read_db(path)
  local f = assert(io.open(path))
  local db = cjson.decode(f:read("a"))
  f:close()
  return db
end

local function write_db(path, db)
  local tmp = ("%s.%d.tmp"):format(path, mp.getpid())
  local f = assert(io.open(tmp, "w"))
  f:write(cjson.encode(db))
  f:close()
  assert(os.rename(tmp, path)) -- readers never see a half-written file
end

-- Anyone may look at what is left (no lock: it is only a look).
function M.search(path, who)
  print(("%s: remaining tickets: %d"):format(who, read_db(path).count))
end

-- Buys one ticket: true if it got one.
function M.get(path, who)
  local db = read_db(path)
  mp.sleep(0.01) -- the network between reading and writing
  if db.count > 0 then
    db.count = db.count - 1
    write_db(path, db)
    print(("%s: bought a ticket"):format(who))
    return true
  end
  print(("%s: sold out"):format(who))
  return false
end

-- Runs the sale; returns how many bought and the count left in the file.
function M.sale(path, buyers, locked)
  write_db(path, {count = 3})
  local lock, sold = mp.Lock(), mp.Value('i', 0)
  local procs = {}
  for i = 1, buyers do
    procs[i] = mp.Process{name = "buyer-" .. i, target = function()
      local who = mp.current_process().name
      M.search(path, who)
      local ok
      if locked then
        local _ <close> = lock:guard()
        ok = M.get(path, who)
      else
        ok = M.get(path, who)
      end
      if ok then sold:add(1) end
    end}
  end
  for _, p in ipairs(procs) do p:start() end
  for _, p in ipairs(procs) do p:join() end
  return sold.value, read_db(path).count
end

-- The sale on the broker: buyers of every host share one Dict, one Lock,
-- and a start gate (all TOTAL buyers read at about the same moment).
function M.broker_sale(sale, buyers, total, locked)
  local function named(ctor, what, ...) return ctor(..., {broker = true, name = "tickets:" .. sale .. ":" .. what}) end
  local db, lock = named(mp.Dict, "db"), named(mp.Lock, "lock")
  local ready, go, sold = named(mp.Value, "ready", "i", 0), named(mp.Event, "go"), mp.Value("i", 0, {broker = false})
  db:update("count", function(old) return old or 3 end) -- the first host to come stocks it
  local procs = {}
  for i = 1, buyers do
    procs[i] = mp.Process{name = "buyer-" .. i, target = function()
      local who = ("%s/%s"):format(mp.getpid(), mp.current_process().name)
      if ready:add(1) == total then go:set() end
      go:wait()
      local function buy()
        local count = db.count
        mp.sleep(0.01) -- the network between reading and writing
        if count > 0 then
          db.count = count - 1
          print(("%s: bought a ticket"):format(who))
          return true
        end
        print(("%s: sold out"):format(who))
        return false
      end
      local ok
      if locked then
        local _ <close> = lock:guard()
        ok = buy()
      else
        ok = buy()
      end
      if ok then sold:add(1) end
    end}
  end
  for _, p in ipairs(procs) do p:start() end
  for _, p in ipairs(procs) do p:join() end
  return sold.value, db.count
end

function M.main(...)
  local locked, path = true, nil
  local args, i = {...}, 1
  local broker, sale, buyers, total, show_left
  while i <= #args do
    local a = args[i]
    if a == "--unlocked" then locked = false
    elseif a == "--broker" then broker = true
    elseif a == "--left" then show_left = true
    elseif a == "--sale" then sale, i = args[i + 1], i + 1
    elseif a == "--buyers" then buyers, i = tonumber(args[i + 1]), i + 1
    elseif a == "--of" then total, i = tonumber(args[i + 1]), i + 1
    else path = a end
    i = i + 1
  end
  if broker then
    assert(mp.broker(), "--broker: run with mpengine run --broker URL (or MPENGINE_BROKER=URL)")
    sale = sale or "sale"
    if show_left then
      print(mp.Dict{broker = true, name = "tickets:" .. sale .. ":db"}.count)
      return true
    end
    buyers = buyers or 10
    local sold, count = M.broker_sale(sale, buyers, total or buyers, locked)
    print(("%d tickets sold on this host, %d left on %s"):format(sold, count, mp.broker()))
    return true
  end
  path = path or os.tmpname()
  local sold, left = M.sale(path, 10, locked)
  print(("%d tickets sold, %d left in %s"):format(sold, left, path))
  return not locked or (sold == 3 and left == 0)
end

return M
