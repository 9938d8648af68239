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
    -- the order test looks for busted in, as the README gives it
    assert.matches("$MPENGINE_BUSTED, else busted on PATH,", out, 1, true)
    _, rc = H.sh(H.CLI)
    assert.are.equal(2, rc)
    out, rc = H.sh(H.CLI .. " frobnicate")
    assert.are.equal(2, rc)
    assert.matches("unknown command 'frobnicate'", out)
  end)

  it("run --help prints run's usage; run -e CODE and run - (standard input) run a script", function()
    local out, rc = H.sh(H.CLI .. " run --help")
    assert.are.equal(0, rc)
    assert.matches("usage: mpengine run %[%-%-progress%] %[%-%-broker URL%] SCRIPT", out)
    assert.matches("run %[%-%-progress%] %-e CODE", out)
    out, rc = H.sh(H.CLI .. [[ run -e 'print(arg[0], ...) return {main = function(a) return #a end}' abc d]])
    assert.are.equal(3, rc)
    assert.are.equal("-e\tabc\td\n", out)
    out, rc = H.sh("printf 'print(arg[0], ...)\\nreturn 4' | " .. H.CLI .. " run - x")
    assert.are.equal(4, rc)
    assert.are.equal("-\tx\n", out)
    out, rc = H.sh("printf 'local x = nil + 1' | " .. H.CLI .. " run -")
    assert.are.equal(1, rc)
    assert.matches("^mpengine: stdin:1: attempt to perform arithmetic on a nil value", out)
    out, rc = H.sh(H.CLI .. " run -e")
    assert.are.equal(2, rc)
    assert.matches("%-e needs CODE", out)
  end)

  it("a result that is no exit status is reported (exit 2), not taken for success", function()
    local cases = {
      {"return {main = function() return 1.5 end}",
       "main returned 1.5: expected nothing, true/false or an integer 0%-255"},
      {"return {main = function() return 300 end}", "main returned 300: expected"},
      {"return {main = function() return -1 end}", "main returned %-1: expected"},
      {"return {main = function() return \"oops\" end}", "main returned \"oops\": expected"},
      {"return \"oops\"",
       "the %-e code returned \"oops\": expected nothing, a table with main, true/false or an integer 0%-255"},
      {"return {}", "the %-e code returned a table without a main function: nothing to run"},
    }
    for _, c in ipairs(cases) do
      local out, rc = H.sh(H.CLI .. " run -e '" .. c[1] .. "'")
      assert.are.equal(2, rc, c[1])
      assert.matches("^mpengine: " .. c[2], out)
    end
    local _, rc = H.sh(H.CLI .. " run -e 'return {main = function() return 3.0 end}'")
    assert.are.equal(3, rc) -- a float with an integer value is that integer
    _, rc = H.sh(H.CLI .. " run -e 'return {main = function() return 255 end}'")
    assert.are.equal(255, rc)
    -- the run still ends normally: a child that is not a daemon is joined
    local out
    out, rc = H.sh(H.CLI .. [[ run -e 'local mp = require "mpengine"
      mp.Process{target = function() mp.sleep(0.05) print("joined") end}:start()
      return "done"']])
    assert.are.equal(2, rc)
    assert.matches("joined", out)
  end)

  it("warns when a script defines main but forgets to return its table", function()
    local out, rc = H.run("spec/fixtures/no_return.lua")
    assert.are.equal(0, rc)
    assert.are.equal("mpengine: warning: spec/fixtures/no_return.lua defines a main function but returns "
      .. "nothing, so main was not called (end the script with `return M`)\n", out)
    -- a plain script (no table, no main) runs from top to bottom without a word
    out, rc = H.sh(H.CLI .. [[ run -e 'local function main() print("plain") end main()']])
    assert.are.equal(0, rc)
    assert.are.equal("plain\n", out)
  end)

  it("mpengine test runs busted with the module loaded, from a folder outside the repository", function()
    local cli = H.CLI:sub(1, 1) == "/" and H.CLI or H.sh("pwd"):match("^(.-)%s*$") .. "/" .. H.CLI
    local dir = H.tmpname()
    assert(os.execute("mkdir -p " .. dir .. "/spec"))
    local function write(name, text)
      local f = assert(io.open(dir .. "/" .. name, "w"))
      f:write(text)
      f:close()
    end
    write("job.lua", [[
local mp = require "mpengine"
local M = {}
function M.squares(xs)
  local pool <close> = mp.Pool(2)
  return pool:map(function(x) return x * x end, xs)
end
function M.main() print(table.concat(M.squares({1, 2, 3}), " ")) end
return M
]])
    write("spec/job_spec.lua", [[
describe("job", function()
  it("squares in a pool", function()
    assert.are.same({1, 4, 9}, require("job").squares({1, 2, 3}))
  end)
end)
]])
    local out, rc = H.sh("cd " .. dir .. " && " .. cli .. " test")
    assert.are.equal(0, rc, out)
    assert.matches("1 success / 0 failures / 0 errors", out)
    out, rc = H.sh("cd " .. dir .. " && " .. cli .. " test -o TAP spec/job_spec.lua")
    assert.are.equal(0, rc, out)
    assert.matches("ok 1 %- job squares in a pool", out)
    write("spec/job_spec.lua", [[
describe("job", function()
  it("fails", function() assert.are.same({1}, require("job").squares({2})) end)
end)
]])
    out, rc = H.sh("cd " .. dir .. " && " .. cli .. " test")
    assert.are.equal(1, rc, out)
    assert.matches("0 successes / 1 failure", out)
    out, rc = H.sh("cd " .. dir .. " && MPENGINE_BUSTED=/nonexistent " .. cli .. " test")
    assert.are.equal(2, rc)
    assert.matches("cannot open busted at /nonexistent", out)
    os.execute("rm -rf " .. dir)
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
      local f = assert(io.popen("exec 2>/dev/null; " .. H.CLI .. " run spec/fixtures/sleepers.lua " .. pidfile ..
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
