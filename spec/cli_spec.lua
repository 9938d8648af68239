-- cli_spec.lua - `mpengine run`: exit codes, messages, the script convention,
-- and no child left behind on a signal.
local H = require "helpers"
local _ -- results we do not look at

describe("mpengine CLI", function()
  it("prints its version and help", function()
    local out, rc = H.sh(H.CLI .. " --version")
    assert.are.equal(0, rc)
    assert.matches("^mpengine %d+%.%d+%.%d+", out)
    out, rc = H.sh(H.CLI .. " --help")
    assert.are.equal(0, rc)
    assert.matches("usage: mpengine run", out)
    _, rc = H.sh(H.CLI)
    assert.are.equal(2, rc)
    out, rc = H.sh(H.CLI .. " frobnicate")
    assert.are.equal(2, rc)
    assert.matches("unknown command 'frobnicate'", out)
  end)

  it("passes arguments as arg and ...", function()
    local out, rc = H.run("spec/fixtures/args.lua", "a b", "c")
    assert.are.equal(0, rc)
    assert.matches("arg0=spec/fixtures/args.lua", out)
    assert.matches("n=2 1=a b 2=c", out)
    assert.matches("dots=a b,c", out)
  end)

  it("fails clearly on a missing file", function()
    local out, rc = H.run("spec/fixtures/no_such_file.lua")
    assert.are.equal(1, rc)
    assert.matches("mpengine: cannot open spec/fixtures/no_such_file.lua", out)
  end)

  it("fails with file:line on a syntax error", function()
    local out, rc = H.run("spec/fixtures/syntax_error.lua")
    assert.are.equal(1, rc)
    assert.matches("mpengine: spec/fixtures/syntax_error.lua:3:", out)
  end)

  it("fails with file:line and a traceback on a runtime error", function()
    local out, rc = H.run("spec/fixtures/runtime_error.lua")
    assert.are.equal(1, rc)
    assert.matches("mpengine: spec/fixtures/runtime_error.lua:2: attempt to", out)
    assert.matches("stack traceback:", out)
    assert.matches("runtime_error.lua:5: in", out)
  end)

  it("calls main(...) of a script that returns a module, and uses its result", function()
    local out, rc = H.run("spec/fixtures/convention.lua", "ok")
    assert.are.equal(0, rc)
    assert.matches("main got ok", out)
    _, rc = H.run("spec/fixtures/convention.lua", "fail")
    assert.are.equal(1, rc)
    _, rc = H.run("spec/fixtures/convention.lua", "3")
    assert.are.equal(3, rc)
    -- required as a module, main does not run
    local m = dofile("spec/fixtures/convention.lua")
    assert.are.equal(42, m.answer())
  end)

  it("leaves no child behind when interrupted by SIGINT or SIGTERM", function()
    for _, sig in ipairs{"INT", "TERM"} do
      local pidfile = H.tmpname()
      local f = assert(io.popen(H.CLI .. " run spec/fixtures/sleepers.lua " .. pidfile ..
                                " >/dev/null 2>&1 & echo $!; wait $!; echo rc=$?"))
      local cli = tonumber(f:read("l"))
      H.wait_until(function() return H.read(pidfile) and H.read(pidfile):match("done") end)
      local pids = {}
      for pid in H.read(pidfile):gmatch("(%d+)") do pids[#pids + 1] = pid end
      assert.are.equal(3, #pids)
      for _, pid in ipairs(pids) do assert.is_true(H.alive(pid)) end
      os.execute("kill -" .. sig .. " " .. cli)
      local rc = tonumber(f:read("a"):match("rc=(%d+)"))
      f:close()
      assert.are.equal(sig == "INT" and 130 or 143, rc)
      for _, pid in ipairs(pids) do
        H.wait_until(function() return not H.alive(pid) end, 2)
      end
      os.remove(pidfile)
    end
  end)

  it("SIGINT while the run waits for a child at its end: the child is killed, exit 130", function()
    local pidfile = H.tmpname()
    local cli, run = H.spawn_cli("spec/fixtures/end_wait.lua " .. pidfile)
    local pids = H.pids_from(pidfile)
    os.execute("kill -INT " .. cli)
    local _, rc = run.finish()
    assert.are.equal(130, rc)
    H.wait_until(function() return not H.alive(pids[1]) end, 1)
    os.remove(pidfile)
  end)

  it("os.exit(n) in the main script ends the run the normal way, with code n", function()
    local out, rc = H.run("spec/fixtures/exit_code.lua")
    assert.are.equal(3, rc)
    assert.matches("closed", out)
    assert.matches("child finished", out) -- joined, not killed
  end)

  it("joins non-daemon children at the end and stops daemon ones", function()
    local out, rc = H.run("spec/fixtures/ending.lua")
    assert.are.equal(0, rc)
    assert.matches("worker finished", out)
    assert.not_matches("daemon finished", out)
  end)
end)
