-- squares.lua - a job script in the convention `mpengine run` follows:
-- it returns its parts, and main runs only under `mpengine run squares.lua N`.
local mp = require "mpengine"

local M = {}

-- The squares of 1..n, computed in a Pool of workers.
function M.squares(n, workers)
  local xs = {}
  for i = 1, n do xs[i] = i end
  local pool <close> = mp.Pool(workers)
  return pool:map(function(x) return x * x end, xs)
end

function M.main(n)
  local sq = M.squares(tonumber(n) or 10)
  print(table.concat(sq, " "))
  return true
end

return M
