-- arena_spec.lua - the shared arena from Lua: freed memory serves any size,
-- and killed processes give back what they held.
local H = require "helpers"
local mp = require "mpengine"

local function run(size, script, ...)
  return H.sh(("MPENGINE_ARENA_SIZE=%s %s run spec/fixtures/%s %s"):format(size, H.CLI, script,
                                                                           table.concat({...}, " ")))
end

describe("arena", function()
  it("is not held by joined processes: join drops the child from the module's list", function()
    -- the objects a child's target captured live as long as its handle
    local p = mp.Process{target = function() end}
    p:start()
    assert.is_true(p:join(30))
    local weak = setmetatable({p}, {__mode = "v"})
    p = nil -- luacheck: ignore 311
    collectgarbage()
    collectgarbage()
    assert.is_nil(weak[1])
  end)

  it("serves a message larger than any it held before, once those are drained", function()
    local out, rc = run("64M", "arena_fragments.lua")
    assert.are.equal(0, rc, out)
    assert.are.equal("put 20 MiB:\ttrue\t\ngot\t20971520\narena back:\ttrue\n", out)
  end)

  it("gets back all that killed children and killed Pool workers held", function()
    -- 40 children killed holding two inherited objects, two of their own and
    -- a Queue received in a message,
    -- then 60 tasks timing out in a Pool (a worker killed and replaced each):
    -- in a 2 MiB arena, where the old leak (~128 KiB a kill) ran out at ~15.
    local out, rc = run("2M", "arena_killed.lua")
    assert.are.equal(0, rc, out)
    assert.matches("processes:\t0\t", out, 1, true)
    assert.matches("timeouts:\t60\n", out, 1, true)
    assert.matches("pool:\t0\t", out, 1, true)
  end)
end)
