-- tickets.lua - seed 004's ticket sale: a JSON file {"count": 3}, 10 buyers,
-- one Lock around read-check-write: exactly 3 succeed, the file ends at 0.
--
--   mpengine run scripts/tickets.lua [--unlocked] [DBFILE]
--
-- Without the lock (--unlocked), buyers read the same count and oversell.
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

function M.main(...)
  local locked, path = true, nil
  for _, a in ipairs{...} do
    if a == "--unlocked" then locked = false else path = a end
  end
  path = path or os.tmpname()
  local sold, left = M.sale(path, 10, locked)
  print(("%d tickets sold, %d left in %s"):format(sold, left, path))
  return not locked or (sold == 3 and left == 0)
end

return M
