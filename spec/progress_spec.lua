-- progress_spec.lua - the Pool's progress bar: on a 40-column terminal (a
-- pseudo-terminal made by `script`), in a log, and its options.
local mp = require "mpengine"
local H = require "helpers"

local FIXTURE = "spec/fixtures/progress_bar.lua"

-- The pieces a terminal shows: the output cut at every \r and \n, with the
-- clear-to-end-of-line sequence taken out.
local function pieces(out)
  local list = {}
  for piece in (out:gsub("\27%[K", "")):gmatch("[^\r\n]+") do list[#list + 1] = piece end
  return list
end

describe("progress bar on a terminal", function()
  local out
  setup(function()
    local rc
    out, rc = H.sh("script -qfc 'stty cols 40; " .. H.CLI .. " run " .. FIXTURE .. "' /dev/null")
    assert.are.equal(0, rc, out)
  end)

  it("fits a 40-column terminal: no line is longer", function()
    for _, piece in ipairs(pieces(out)) do
      assert.is_true(#piece < 40, ("a line of %d columns: %q"):format(#piece, piece))
    end
  end)

  it("draws at once, with no rate and no ETA before there is evidence", function()
    local first
    for _, piece in ipairs(pieces(out)) do
      if piece:match("^files:") then first = piece break end
    end
    assert.are.equal("files: 0/300   0% --/s ETA --:--", first)
  end)

  it("shows an ETA once results have come in for a while", function()
    assert.matches("files: %d+/300 +%d+%% ETA %d%d:%d%d", out)
  end)

  it("ends with the elapsed time, not an ETA, and the failures", function()
    local last
    for _, piece in ipairs(pieces(out)) do
      if piece:match("^files:") then last = piece end
    end
    assert.matches("^files: 300/300 elapsed %d%d:%d%d 3 failed$", last)
  end)

  it("prints from the loop body and progress_write go above the bar, on their own lines", function()
    local items = 0
    local at = out:find("item\t%d")
    while at do
      items = items + 1
      local before = out:sub(at - 3, at - 1)
      assert.is_true(before:sub(-1) == "\n" or before == "\27[K", ("glued to a frame: %q"):format(before))
      at = out:find("item\t%d", at + 1)
    end
    assert.are.equal(8, items)
    assert.matches("\nwritten\t8", out)
    assert.matches("lines: 8/8 lines", out)
  end)
end)

describe("progress bar when stderr is not a terminal", function()
  it("writes a final summary line, and nothing that redraws", function()
    local err = H.sh("(" .. H.CLI .. " run " .. FIXTURE .. " 2>&1 >/dev/null)")
    assert.matches("^files: 300/300 100%% [%d.]+/s elapsed %d%d:%d%d 3 failed\n", err)
    assert.matches("\nlines: 8/8 lines 100%% [%d.]+ lines/s elapsed %d%d:%d%d\n$", err)
    assert.not_matches("\r", err)
    assert.not_matches("%[#", err)
  end)

  it("writes a plain line every MPENGINE_PROGRESS_INTERVAL seconds", function()
    local err = H.sh("(MPENGINE_PROGRESS_INTERVAL=0.2 " .. H.CLI .. " run " .. FIXTURE .. " 2>&1 >/dev/null)")
    assert.matches("files: %d+/300 +%d+%% [%d.-]+/s ETA [%d:-]+\n.*files: 300/300 100%%", err)
  end)
end)

describe("progress option", function()
  local pool
  setup(function() pool = mp.Pool(2) end)
  teardown(function() pool:terminate() end)

  it("takes true, a label or {desc =, unit =}, and false", function()
    local err = H.sh("(" .. H.CLI .. " run spec/fixtures/progress_options.lua 2>&1 >/dev/null)")
    local lines = {}
    for line in err:gmatch("[^\n]+") do lines[#lines + 1] = line end
    assert.are.equal(3, #lines, err)
    assert.matches("^2/2 100%% [%d.]+/s elapsed %d%d:%d%d$", lines[1])
    assert.matches("^files: 2/2 100%% [%d.]+/s elapsed %d%d:%d%d$", lines[2])
    assert.matches("^lines: 2/2 l 100%% [%d.]+ l/s elapsed %d%d:%d%d$", lines[3])
  end)

  it("raises on anything else, at the caller's line", function()
    local id = function(x) return x end
    local ok, err = pcall(pool.map, pool, id, {1}, {progress = 5})
    assert.is_false(ok)
    assert.matches("Pool: progress must be true, a label or {desc =, unit =}, got number", err, 1, true)
    ok, err = pcall(function() pool:imap(id, {1}, {progress = {label = "x"}}) end)
    assert.is_false(ok)
    assert.matches("progress_spec.lua:%d+: Pool: progress table takes desc and unit, strings %(got label = string%)",
      err)
  end)

  it("mp.progress_write without a bar prints a line", function()
    local script = H.tmpname()
    local f = assert(io.open(script, "w"))
    f:write('require("mpengine").progress_write("a", 1, nil)\n')
    f:close()
    local out, rc = H.sh(H.CLI .. " run " .. script .. " 2>/dev/null")
    os.remove(script)
    assert.are.equal(0, rc)
    assert.are.equal("a\t1\tnil\n", out)
  end)
end)
