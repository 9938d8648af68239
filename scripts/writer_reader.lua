-- writer_reader.lua - seed 000's writer and reader sharing a Queue.
--
--   mpengine run scripts/writer_reader.lua
--
-- One process puts "A", "B", "C" with random pauses; another reads and
-- prints them. The seed's reader loops forever and is terminated; here the
-- writer closes the queue, so the reader drains it and ends by itself.
local mp = require "mpengine"

local M = {}

function M.write(q, values, max_pause)
  print(("Process to write: %d"):format(mp.getpid()))
  for _, value in ipairs(values) do
    print(("Put %s to queue..."):format(value))
    q:put(value)
    mp.sleep(math.random() * max_pause)
  end
  q:close() -- no more values: the reader's loop ends once it has them all
end

function M.read(q, out)
  print(("Process to read: %d"):format(mp.getpid()))
  for value in q:iter() do
    print(("Get %s from queue."):format(value))
    out:put(value)
  end
end

-- Runs both processes; returns what the reader got, in order.
function M.run(values, max_pause)
  local q, got = mp.Queue(), mp.SimpleQueue()
  local pw = mp.Process{target = M.write, args = {q, values or {"A", "B", "C"}, max_pause or 1.0}}
  local pr = mp.Process{target = M.read, args = {q, got}}
  pw:start()
  pr:start()
  pw:join()
  pr:join()
  got:close()
  local seen = {}
  for v in got:iter() do seen[#seen + 1] = v end
  return seen, pw.exitcode, pr.exitcode
end

function M.main()
  math.randomseed(os.time())
  M.run()
end

return M
