-- broker_pool_spec.lua - mp.Pool on a broker: its options and errors, and a
-- map over a worker host on a Redis the spec starts (skipped without
-- redis-server). The namespaced tests (tests/broker/*_test.sh) cover hosts
-- lost, partitions and restarts.
local mp = require "mpengine"
local H = require "helpers"

describe("Pool on a broker", function()
  it("says what is wrong with its options, at the caller's line", function()
    local cases = {
      {{broker = "http://x"}, "Pool: broker URL: must start with redis:// or unix://"},
      {{broker = 5}, "Pool: broker must be a URL"},
      {{broker = "redis://127.0.0.1:1", lease = 0}, "Pool: lease must be a number of seconds > 0"},
      {{broker = "redis://127.0.0.1:1", attempts = 1.5}, "Pool: attempts must be an integer >= 1"},
      {{broker = "redis://127.0.0.1:1", broker_timeout = -1}, "Pool: broker_timeout must be a number"},
      {{brokr = "redis://127.0.0.1:1"}, "Pool: unknown option 'brokr'"},
    }
    for _, c in ipairs(cases) do
      local ok, err = pcall(mp.Pool, c[1])
      assert.is_false(ok)
      assert.truthy(err:find(c[2], 1, true), err)
    end
  end)

  it("refuses a broker off loopback without a password, and names an unreachable one", function()
    local ok, err = pcall(mp.Pool, {broker = "redis://10.255.255.1:6379"})
    assert.is_false(ok)
    assert.truthy(err:find("redis://10.255.255.1:6379: refused (a broker off loopback needs a password", 1, true), err)
    ok, err = pcall(mp.Pool, {broker = "redis://:secret@127.0.0.1:1"})
    assert.is_false(ok)
    assert.truthy(err:find("Pool: cannot open a run on the broker redis://127.0.0.1:1: ", 1, true), err)
    assert.falsy(err:find("secret", 1, true))
  end)

  it("mp.broker() is nil outside a broker run, the masked URL in one", function()
    assert.is_nil(mp.broker())
    local out = H.sh(("MPENGINE_BROKER=redis://:pw@127.0.0.1:1/2 %s run -e 'print(require(\"mpengine\").broker())'")
      :format(H.CLI))
    assert.are.equal("redis://127.0.0.1:1\n", out)
  end)
end)
