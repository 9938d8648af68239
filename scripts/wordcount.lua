-- wordcount.lua - map over inputs: count the words of every file under a
-- folder in a Pool, merge the counts, write them as JSON.
--
--   mpengine run scripts/wordcount.lua [DIR] [OUTPUT.json] [WORKERS]
--
-- DIR defaults to the repository this script lives in; OUTPUT to
-- wordcount.json in the current folder. Prints the most frequent words.
local mp = require "mpengine"
local cjson = require "cjson"

local M = {}

-- Files under dir (regular files, .git and build trees left out).
function M.files(dir)
  local p = assert(io.popen(("find '%s' -type f -not -path '*/.git/*' -not -path '*/build*/*' -print0 2>/dev/null")
    :format(dir:gsub("'", "'\\''"))))
  local out = p:read("a")
  p:close()
  local list = {}
  for path in out:gmatch("([^%z]+)%z") do list[#list + 1] = path end
  table.sort(list)
  return list
end

-- Runs in a worker: the words of one file, lower-cased, with their counts.
function M.count_words(path)
  local f = io.open(path, "rb")
  if not f then error(("cannot read %s (on a worker host, the files must be at the same path)"):format(path)) end
  local text = f:read("a")
  f:close()
  local counts = {}
  for word in text:gmatch("%a[%w_']*") do
    word = word:lower()
    counts[word] = (counts[word] or 0) + 1
  end
  return counts
end

function M.merge(all)
  local total = {}
  for _, counts in ipairs(all) do
    for w, n in pairs(counts) do total[w] = (total[w] or 0) + n end
  end
  return total
end

function M.top(counts, n)
  local words = {}
  for w, c in pairs(counts) do words[#words + 1] = {w, c} end
  table.sort(words, function(a, b) return a[2] > b[2] or (a[2] == b[2] and a[1] < b[1]) end)
  return {table.unpack(words, 1, math.min(n, #words))}
end

function M.run(dir, workers, progress)
  local files = M.files(dir)
  local pool <close> = mp.Pool(workers)
  local per_file = pool:map(M.count_words, files, {progress = progress})
  return M.merge(per_file), #files
end

function M.main(dir, output, workers)
  local here = (arg and arg[0] or "scripts/wordcount.lua"):match("^(.*)/scripts/[^/]*$") or "."
  dir = dir or here
  output = output or "wordcount.json"
  local t0 = mp.time()
  local counts, nfiles = M.run(dir, tonumber(workers), true)
  local f = assert(io.open(output, "w"))
  f:write(cjson.encode(counts))
  f:close()
  local distinct, total = 0, 0
  for _, n in pairs(counts) do distinct, total = distinct + 1, total + n end
  print(("%d files, %d words (%d distinct) counted in %.2f s on %d workers; written to %s"):format(
    nfiles, total, distinct, mp.time() - t0, tonumber(workers) or mp.cpu_count(), output))
  print("most frequent:")
  for _, wc in ipairs(M.top(counts, 10)) do print(("  %-12s %d"):format(wc[1], wc[2])) end
end

return M
