-- processes_demo_spec.lua - the first process demo (scripts/processes.lua).
local H = require "helpers"

describe("scripts/processes.lua", function()
  local demo = require "processes"

  it("runs workers side by side and hears EOF when they are done", function()
    local quiet = function() end
    local elapsed, lines, listed, procs = demo.workers(0.1, quiet)
    assert.are.same({"worker_1", "worker_2", "worker_3"}, listed)
    assert.are.equal(6, #lines)
    for _, p in ipairs(procs) do assert.are.equal(0, p.exitcode) end
    -- side by side: all three had started before the first one ended
    for i = 1, 3 do assert.matches("starts", lines[i]) end
    assert.is_number(elapsed)
  end)

  it("stops the daemon child when the main part ends", function()
    local out, rc = H.run("scripts/processes.lua", "0.05")
    assert.are.equal(0, rc)
    assert.matches("end worker_3", out)
    assert.matches("Main process ended!", out)
    assert.not_matches("daemon still running\t100", out)
  end)
end)
