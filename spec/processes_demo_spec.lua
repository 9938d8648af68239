-- processes_demo_spec.lua - the first process demo (scripts/processes.lua).
local H = require "helpers"

describe("scripts/processes.lua", function()
  local demo = require "processes"

  it("runs workers side by side and hears EOF when they are done", function()
    local quiet = function() end
    local _, lines, listed, procs = demo.workers(0.1, quiet)
    -- side by side: all three were alive at once, listed by active_children()
    assert.are.same({"worker_1", "worker_2", "worker_3"}, listed)
    for _, p in ipairs(procs) do assert.are.equal(0, p.exitcode) end
    -- every worker started (and said so) before any of them ended; the pipe
    -- gave EOF after the last "end", as the loop over recv ended
    assert.are.equal(6, #lines)
    local starts, ends = {}, {}
    for i = 1, 3 do starts[#starts + 1] = assert(lines[i]:match("^(worker_%d) starts, sleeps"), lines[i]) end
    for i = 4, 6 do ends[#ends + 1] = assert(lines[i]:match("^end (worker_%d)$"), lines[i]) end
    table.sort(starts); table.sort(ends)
    assert.are.same({"worker_1", "worker_2", "worker_3"}, starts)
    assert.are.same({"worker_1", "worker_2", "worker_3"}, ends)
  end)

  it("stops the daemon child when the main part ends", function()
    local out, rc = H.run("scripts/processes.lua", "0.05")
    assert.are.equal(0, rc)
    assert.matches("end worker_3", out)
    assert.matches("Main process ended!", out)
    assert.not_matches("daemon still running\t100", out)
  end)
end)
