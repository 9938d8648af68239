-- pipeline.lua - a 3-stage pipeline to start from: read lines from a file,
-- transform them in N worker processes, write the results in input order.
--
--   mpengine run scripts/pipeline.lua [INPUT] [OUTPUT] [WORKERS]
--
-- INPUT defaults to README.md, OUTPUT to standard output ("-"), WORKERS to
-- mp.cpu_count(). Replace M.transform with your own work: it runs in the
-- workers, and whatever it returns travels back through a queue.
local mp = require "mpengine"

local M = {}

-- The work done on one line (in a worker).
function M.transform(line)
  local words = 0
  for _ in line:gmatch("%S+") do words = words + 1 end
  return ("%3d  %s"):format(words, line:upper())
end

-- Stage 1: numbered lines into the work queue, then close it.
function M.reader(path, work)
  local n = 0
  for line in io.lines(path) do
    n = n + 1
    work:put({n, line})
  end
  work:close()
end

-- Stage 2: transform until the work queue is closed and drained.
function M.worker(work, results, transform)
  for item in work:iter() do
    results:put({item[1], transform(item[2])})
  end
  results:put({false}) -- this worker is done
end

-- Stage 3 (in the caller): reorder by line number and write.
function M.writer(results, workers, write)
  local pending, nextn, done = {}, 1, 0
  while done < workers do
    local r = results:get()
    if r[1] == false then
      done = done + 1
    else
      pending[r[1]] = r[2]
      while pending[nextn] do
        write(pending[nextn])
        pending[nextn] = nil
        nextn = nextn + 1
      end
    end
  end
  return nextn - 1
end

function M.run(input, write, workers, transform)
  workers = workers or mp.cpu_count()
  local work, results = mp.Queue(256), mp.Queue(256)
  local procs = {mp.Process{target = M.reader, args = {input, work}, name = "reader"}}
  for i = 1, workers do
    procs[#procs + 1] = mp.Process{target = M.worker, args = {work, results, transform or M.transform},
                                   name = "worker-" .. i}
  end
  for _, p in ipairs(procs) do p:start() end
  local n = M.writer(results, workers, write)
  for _, p in ipairs(procs) do
    p:join()
    if p.exitcode ~= 0 then error(("%s failed with exit code %d"):format(p.name, p.exitcode)) end
  end
  return n
end

function M.main(input, output, workers)
  input = input or "README.md"
  local out = (output and output ~= "-") and assert(io.open(output, "w")) or io.stdout
  local n = M.run(input, function(s) out:write(s, "\n") end, tonumber(workers))
  if out ~= io.stdout then out:close() end
  io.stderr:write(("%d lines through %d workers\n"):format(n, tonumber(workers) or mp.cpu_count()))
end

return M
