-- producer_consumer.lua - seed 003's producer and consumer around a bounded
-- buffer of 10, with the queue's own blocking instead of two semaphores.
--
--   mpengine run scripts/producer_consumer.lua [ITEMS] [CONSUMERS]
--
-- The producer blocks while the buffer holds 10 items; consumers block while
-- it is empty. Closing the queue tells every consumer there is no more.
local mp = require "mpengine"

local M = {}

function M.producer(buffer, items)
  for i = 1, items do
    buffer:put(i) -- waits while 10 items are waiting
  end
  buffer:close()
end

function M.consumer(buffer, report)
  local n, sum = 0, 0
  for item in buffer:iter() do -- waits while empty; ends once closed and drained
    n, sum = n + 1, sum + item
  end
  report:put({name = mp.current_process().name, count = n, sum = sum})
end

-- Returns the per-consumer reports and the highest fill level seen.
function M.run(items, consumers)
  local buffer, report = mp.Queue(10), mp.Queue()
  local procs = {mp.Process{target = M.producer, args = {buffer, items}, name = "producer"}}
  for i = 1, consumers do
    procs[#procs + 1] = mp.Process{target = M.consumer, args = {buffer, report}, name = "consumer-" .. i}
  end
  local highest = 0
  for _, p in ipairs(procs) do p:start() end
  while procs[1]:is_alive() do
    highest = math.max(highest, buffer:qsize())
    mp.sleep(0.0005)
  end
  local reports = {}
  for _ = 1, consumers do reports[#reports + 1] = report:get() end
  for _, p in ipairs(procs) do p:join() end
  table.sort(reports, function(a, b) return a.name < b.name end)
  return reports, highest
end

function M.main(items, consumers)
  items, consumers = tonumber(items) or 1000, tonumber(consumers) or 2
  local reports, highest = M.run(items, consumers)
  local total, sum = 0, 0
  for _, r in ipairs(reports) do
    print(("%s consumed %d items"):format(r.name, r.count))
    total, sum = total + r.count, sum + r.sum
  end
  print(("%d items consumed once each (sum %d, expected %d); the buffer never held more than %d"):format(
    total, sum, items * (items + 1) // 2, highest))
  return total == items and sum == items * (items + 1) // 2
end

return M
