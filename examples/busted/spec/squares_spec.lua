-- The job's parts, tested one by one: main never runs.
local mp = require "mpengine"
local squares = require "squares"

describe("squares", function()
  it("squares 1..100 in two workers, in order", function()
    local sq = squares.squares(100, 2)
    assert.are.equal(100, #sq)
    for i = 1, 100 do assert.are.equal(i * i, sq[i]) end
  end)

  it("runs under Lua 5.4 with mpengine loaded", function()
    assert.are.equal("Lua 5.4", _VERSION)
    assert.is_function(mp.Pool)
  end)
end)
