-- progress.lua - the Pool's progress bar, on stderr.
--
-- Built into the mpengine module (loaded by lmodule.c, handed to pool.lua).
-- A bar belongs to one job: the pool creates it (new), says how many tasks
-- there are (total, which draws the first frame at once), sets bar.done and
-- bar.failed as results arrive and calls draw, and draw(bar, true) when the
-- job ends.
--
-- * On a terminal, a frame replaces the previous one ("\r" ... clear to the
--   end of the line), at most 10 times a second, fitted to the terminal's
--   width as it is now (a frame never wraps). While a bar is on screen,
--   print and mp.progress_write write their line above it. Only one bar
--   draws at a time; a second job's bar shows only its final line.
-- * Elsewhere (a log, a pipe) a plain line every 10 s (or every
--   MPENGINE_PROGRESS_INTERVAL seconds) and a final summary.
-- * The rate is an exponential moving average over time (about the last
--   3 s), measured from the first result on, so the time to start the
--   workers does not count; there is no rate and no ETA until a second
--   of results has been seen. The final frame gives the elapsed time and
--   the average rate.
local mp = ...

local P = {}
local Bar = {}
Bar.__index = Bar

local REDRAW = 0.1      -- at most this often on a terminal, in seconds
local PLAIN_EVERY = 10  -- a plain line this often when stderr is not a terminal
                        -- (MPENGINE_PROGRESS_INTERVAL seconds, if set)
local EVIDENCE = 1      -- seconds of results before a rate and an ETA are shown
local TAU = 3           -- the rate's moving average forgets over about this many seconds
local BAR_MAX = 30      -- the bar's width at most, in cells
local BAR_MIN = 5       -- below this the bar is left out

local active            -- the bar on the terminal now, if any
local plain_print       -- print as it was before a bar replaced it

local function fmt_time(s)
  if s ~= s or s == math.huge or s < 0 then return "--:--" end
  s = math.floor(s + 0.5)
  if s >= 3600 then return ("%d:%02d:%02d"):format(s // 3600, s // 60 % 60, s % 60) end
  return ("%02d:%02d"):format(s // 60, s % 60)
end

local function fmt_rate(r)
  if not r then return "--" end
  if r >= 100 then return ("%.0f"):format(r) end
  if r >= 10 then return ("%.1f"):format(r) end
  return ("%.2f"):format(r)
end

local function width()
  local w = mp._term_width(2) or tonumber(os.getenv("COLUMNS") or "")
  return (w and w >= 10) and math.floor(w) or 80
end

-- The text of a frame, with what `show` keeps: show.cells (the bar's
-- width; nil for no bar), show.rate, show.pct, show.desc. final: the last
-- frame (elapsed time and average rate instead of the ETA).
local function frame(p, now, final, show)
  local unit = p.unit and (" " .. p.unit) or ""
  local elapsed = now - p.t0
  local rate = p.rate
  if final then rate = elapsed > 0 and p.done / elapsed or nil end
  local parts = {}
  if show.desc and p.desc then parts[#parts + 1] = p.desc .. ":" end
  local frac = p.total and (p.total > 0 and math.min(p.done / p.total, 1) or 1)
  if frac and show.cells then
    local fill = math.floor(frac * show.cells + 0.5)
    parts[#parts + 1] = "[" .. ("#"):rep(fill) .. ("."):rep(show.cells - fill) .. "]"
  end
  parts[#parts + 1] = p.total and ("%d/%d%s"):format(p.done, p.total, unit) or ("%d%s"):format(p.done, unit)
  if frac and show.pct then parts[#parts + 1] = ("%3d%%"):format(math.floor(frac * 100)) end
  if show.rate then parts[#parts + 1] = fmt_rate(rate) .. unit .. "/s" end
  if final or not p.total then
    parts[#parts + 1] = "elapsed " .. fmt_time(elapsed)
  else
    local eta = rate and rate > 0 and (p.total - p.done) / rate or nil
    parts[#parts + 1] = "ETA " .. (eta and fmt_time(eta) or "--:--")
  end
  if p.failed > 0 then parts[#parts + 1] = ("%d failed"):format(p.failed) end
  return table.concat(parts, " ")
end

local FULL = {rate = true, pct = true, desc = true}
-- What goes first when the line is too narrow: the bar, then the rate, the
-- percentage and the label; the count, the time and the failures stay.
local NARROWER = {{rate = true, pct = true, desc = true}, {pct = true, desc = true}, {desc = true}, {}}

-- A frame that fits in cols - 1 columns (a full line would wrap on some
-- terminals): the bar shrinks, then goes, then other parts; last, the text is cut.
local function fitted(p, now, final, cols)
  local room = cols - 1
  local text = frame(p, now, final, FULL)
  if p.total then
    local cells = math.min(BAR_MAX, room - #text - 3)
    if cells >= BAR_MIN then
      return frame(p, now, final, {cells = cells, rate = true, pct = true, desc = true})
    end
  end
  for _, show in ipairs(NARROWER) do
    text = frame(p, now, final, show)
    if #text <= room then return text end
  end
  return text:sub(1, room)
end

-- Feeds the rate's moving average with what happened since the last sample.
local function sample(p, now)
  if not p.t_first then
    if p.done > 0 then p.t_first, p.d_first, p.t_s, p.d_s = now, p.done, now, p.done end
    return
  end
  if not p.rate then
    -- the first estimate: the average since the first result, once there is enough of it
    if now - p.t_first >= EVIDENCE and p.done > p.d_first then
      p.rate = (p.done - p.d_first) / (now - p.t_first)
      p.t_s, p.d_s = now, p.done
    end
    return
  end
  local dt = now - p.t_s
  if dt <= 0 then return end
  local w = 1 - math.exp(-dt / TAU)
  p.rate = p.rate + w * ((p.done - p.d_s) / dt - p.rate)
  p.t_s, p.d_s = now, p.done
end

local function routed_print(...)
  return P.write(...)
end

-- The bar p takes the terminal: print goes above it from now on.
local function activate(p)
  active = p
  if _G.print ~= routed_print then
    plain_print = _G.print
    _G.print = routed_print
  end
end

local function deactivate(p)
  if active ~= p then return end
  active = nil
  if _G.print == routed_print then _G.print = plain_print end
end

local function draw_tty(p, now, final)
  io.stderr:write("\r", fitted(p, now, final, width()), "\27[K", final and "\n" or "")
  io.stderr:flush()
end

-- A line on stderr above the bar on screen, if any.
local function write_err(line)
  local p = active
  if p and mp.getpid() == p.pid then
    io.stderr:write("\r", line, "\27[K\n")
    draw_tty(p, mp.time(), false)
  else
    io.stderr:write(line, "\n")
    io.stderr:flush()
  end
end

-- The level, for error(), of the first caller outside mpengine's built-in
-- Lua (the user's line), seen from the function calling this one.
local function caller_level()
  local level = 3
  while true do
    local info = debug.getinfo(level, "S")
    if not info then return 1 end
    if info.what ~= "C" and not info.source:match("^=mpengine") then return level - 1 end
    level = level + 1
  end
end

-- A new bar, or nil: spec is the job's `progress` option (nil, false, true,
-- a label, or {desc =, unit =}); all is true when every pool shows one.
-- Nothing is drawn yet.
function P.new(spec, all)
  if spec == nil then spec = all end
  if not spec then return nil end
  local desc, unit
  if type(spec) == "string" then desc = spec
  elseif type(spec) == "table" then
    for k, v in pairs(spec) do
      if (k ~= "desc" and k ~= "unit") or type(v) ~= "string" then
        error(("Pool: progress table takes desc and unit, strings (got %s = %s)"):format(tostring(k), type(v)),
          caller_level())
      end
    end
    desc, unit = spec.desc, spec.unit
  elseif spec ~= true then
    error(("Pool: progress must be true, a label or {desc =, unit =}, got %s"):format(type(spec)), caller_level())
  end
  local now = mp.time()
  local every = tonumber(os.getenv("MPENGINE_PROGRESS_INTERVAL") or "") or PLAIN_EVERY
  return setmetatable({desc = desc, unit = unit, done = 0, failed = 0, t0 = now, last = -math.huge,
                       last_plain = now, every = every, tty = mp._isatty(2), pid = mp.getpid()}, Bar)
end

-- The job has n tasks (nil: not known); the first frame is drawn at once.
function P.total(p, n)
  if not p then return end
  p.total = n
  P.draw(p)
end

-- Draws p (bar.done and bar.failed as they are now); final: the job ended.
function P.draw(p, final)
  if p.ended then return end
  local now = mp.time()
  if not final and now - p.last < REDRAW then return end
  p.last = now
  sample(p, now)
  if final then p.ended = true end
  if mp.getpid() ~= p.pid then return end -- a forked child's copy
  if not p.tty then
    if final or now - p.last_plain >= p.every then
      p.last_plain = now
      io.stderr:write(frame(p, now, final, FULL), "\n")
      io.stderr:flush()
    end
    return
  end
  if not active then activate(p) end
  if active == p then
    draw_tty(p, now, final)
    if final then deactivate(p) end
  elseif final then
    write_err(fitted(p, now, true, width()))
  end
end

-- mp.progress_write(...): what print(...) writes, on stdout, written above
-- the progress bar while one is on the terminal (print does the same then).
function P.write(...)
  local n = select("#", ...)
  local t = {}
  for i = 1, n do t[i] = tostring((select(i, ...))) end
  local line = table.concat(t, "\t")
  local p = active
  if p and mp.getpid() == p.pid then
    io.stderr:write("\r\27[K")
    io.stderr:flush()
    io.stdout:write(line, "\n")
    io.stdout:flush()
    draw_tty(p, mp.time(), false)
  else
    io.stdout:write(line, "\n")
  end
end

mp.progress_write = P.write

return P
