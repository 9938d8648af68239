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

-- A worker host of the spec's own (`mpengine worker`, the broker in its
-- environment from a file) against a Redis the spec starts.
describe("Pool on a broker, with a worker host", function()
  local R = require "redis_helper"
  local srv, why = R.start()
  local host_pid, log

  setup(function()
    if not srv then return end
    log = H.tmpname()
    local envfile = H.tmpname()
    local f = assert(io.open(envfile, "w"))
    f:write(srv.url)
    f:close()
    local cmd = "export MPENGINE_BROKER=$(cat %s); %s worker --procs 2 --name spechost >%s 2>&1 & echo $!"
    local p = assert(io.popen(cmd
      :format(envfile, H.CLI, log)))
    host_pid = tonumber(p:read("l"))
    p:close()
    os.remove(envfile)
    H.wait_until(function() return (H.read(log) or ""):find("serving") ~= nil end, 20)
  end)

  teardown(function()
    if host_pid then
      os.execute("kill -TERM " .. host_pid)
      H.wait_until(function() return not H.alive(host_pid) end, 20)
    end
    if srv then srv:stop() end
  end)

  it("keeps the Pool's API and return shapes; errors name the host", function()
    if not srv then pending(why) return end
    local pool <close> = mp.Pool{broker = srv.url}
    local k = 7
    assert.are.same({8, 9, 10}, pool:map(function(x) return x + k end, {1, 2, 3}))
    assert.are.equal(5, pool:apply(function(a, b) return a + b end, {2, 3}))
    assert.are.same({6, 20}, pool:starmap(function(a, b) return a * b end, {{2, 3}, {4, 5}}))
    local seen = {}
    for i, v in pool:imap(function(x) return x * 2 end, {1, 2, 3}) do seen[i] = v end
    assert.are.same({2, 4, 6}, seen)
    local r = pool:apply_async(function() return "async" end)
    assert.are.equal("async", r:get(30))
    assert.is_true(r:successful())
    local ok, err = pcall(pool.apply, pool, function() error("boom") end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("boom", 1, true))
    assert.truthy(tostring(err):find("on host spechost", 1, true), tostring(err))
    pool:close()
    pool:join()
  end)

  it("a joined pool's run leaves no key; a worker host stopped by SIGTERM says so", function()
    if not srv then pending(why) return end
    local pool = mp.Pool{broker = srv.url}
    assert.are.same({1}, pool:map(function(x) return x end, {1}))
    assert.truthy(srv:cli("--scan", "--pattern", "mpe:run:*"):find("mpe:run"))
    pool:close()
    pool:join()
    assert.falsy(srv:cli("--scan", "--pattern", "mpe:run:*"):find("mpe:run"))
    os.execute("kill -TERM " .. host_pid)
    H.wait_until(function() return not H.alive(host_pid) end, 20)
    assert.truthy((H.read(log) or ""):find("stopped serving", 1, true))
    host_pid = nil
  end)
end)
