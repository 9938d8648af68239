-- queue_spec.lua - Queue, JoinableQueue and SimpleQueue across processes.
local mp = require "mpengine"
local H = require "helpers"

describe("Queue", function()
  it("puts and gets in FIFO order, with any value", function()
    local q = mp.Queue()
    local t = {x = {1, 2}}
    t.self = t
    for _, v in ipairs{1, 2.5, "three", true, t} do assert.is_true(q:put(v)) end
    assert.are.equal(5, q:qsize())
    assert.are.equal(1, q:get())
    assert.are.equal(2.5, q:get())
    assert.are.equal("three", q:get())
    assert.is_true(q:get())
    local r = q:get()
    assert.are.equal(r, r.self)
    assert.is_true(q:empty())
  end)

  it("a method of one queue class works on a handle of another, and on nothing else", function()
    local q, jq, sq = mp.Queue(), mp.JoinableQueue(), mp.SimpleQueue()
    assert.is_true(q.put(jq, "to jq"))
    assert.is_true(jq.put(sq, "to sq"))
    assert.is_true(sq.put(q, "to q"))
    assert.are.equal("to jq", q.get(jq))
    assert.are.equal("to sq", jq.get(sq))
    assert.are.equal("to q", sq.get(q))
    assert.are.equal(0, q.qsize(jq))
    local v = mp.Value('i', 0)
    assert.has_error(function() q.put(v, 1) end)
    assert.has_error(function() q.get(v) end)
    assert.has_error(function() q.get(mp.Lock()) end)
    assert.has_error(function() q.put(setmetatable({}, getmetatable(q)), 1) end)
  end)

  it("scalars between tables: every table's own shared parts and cycles", function()
    local q = mp.Queue()
    local shared = {1}
    local t = {a = shared, b = shared}
    t.self = t
    for _, v in ipairs{7, t, "s", {shared, shared}, false, t} do q:put(v) end
    assert.are.equal(7, q:get())
    local r = q:get()
    assert.are.equal(r, r.self)
    assert.are.equal(r.a, r.b)
    assert.are.equal("s", q:get())
    local pair = q:get()
    assert.are.equal(pair[1], pair[2])
    assert.are.same({1}, pair[1])
    assert.is_false(q:get())
    assert.are_not.equal(r, q:get()) -- each message decodes its own tables
  end)

  it("bounds: full, put_nowait, put with a timeout", function()
    local q = mp.Queue(2)
    assert.are.equal(2, q:maxsize())
    assert.is_false(q:full())
    q:put(1); q:put(2)
    assert.is_true(q:full())
    assert.are.same({nil, "full"}, {q:put_nowait(3)})
    local t0 = mp.time()
    assert.are.same({nil, "timeout"}, {q:put(3, 0.1)})
    assert.is_true(mp.time() - t0 >= 0.099)
    assert.are.equal(1, q:get_nowait())
    assert.is_true(q:put_nowait(3))
    assert.are.equal(2, q:get()); assert.are.equal(3, q:get())
    assert.are.same({nil, "empty"}, {q:get_nowait()})
  end)

  it("honours get timeouts: not early, not hung, and wakes on a put", function()
    local q = mp.Queue()
    local t0 = mp.time()
    assert.are.same({nil, "timeout"}, {q:get(0.1)})
    assert.is_true(mp.time() - t0 >= 0.099)
    assert.are.same({nil, "timeout"}, {q:get(0)})
    local p = mp.Process{target = function() mp.sleep(0.05) q:put("late") end}
    p:start()
    assert.are.equal("late", q:get(30))
    p:join()
  end)

  it("close: puts raise, consumers drain, then nil, closed", function()
    local q = mp.Queue()
    q:put("a"); q:put("b")
    q:close()
    assert.is_true(q:is_closed())
    assert.has_error(function() q:put("c") end, "Queue is closed")
    assert.are.equal("a", q:get())
    local got = {}
    for v in q:iter() do got[#got + 1] = v end
    assert.are.same({"b"}, got)
    assert.are.same({nil, "closed"}, {q:get()})
    assert.are.same({nil, "closed"}, {q:get_nowait()})
  end)

  it("raises on misuse", function()
    local q = mp.Queue()
    assert.has_error(function() q:put(nil) end)
    assert.has_error(function() q:get(-1) end)
    assert.has_error(function() mp.Queue(-1) end)
    assert.has_error(function() q.put({}, 1) end)
    assert.has_error(function() q:put() end, "bad argument #1 to 'put' (value expected)")
    assert.has_error(function() q:put_nowait() end, "bad argument #1 to 'put_nowait' (value expected)")
    local a = mp.Pipe()
    assert.has_error(function() q:put({conn = a}) end,
      "cannot send value at item.conn: Connection (pipe ends travel through a Pipe or to a Process, not here)")
    assert.are.equal(0, q:qsize()) -- nothing half-sent
  end)

  it("passes 8 MiB strings through a Queue(2) intact", function()
    local q = mp.Queue(2)
    local big = {}
    for i = 1, 4 do big[i] = string.rep(string.char(64 + i), 8 << 20) end
    local p = mp.Process{target = function() for i = 1, 4 do q:put(big[i]) end end}
    p:start()
    for i = 1, 4 do
      local s = q:get(30)
      assert.are.equal(8 << 20, #s)
      assert.is_true(s == big[i])
    end
    p:join()
  end)

  it("moves 30,000 items from 2 producers to 3 consumers, each exactly once", function()
    local work, done = mp.Queue(1000), mp.Queue()
    local N = 15000
    local procs = {}
    for id = 1, 2 do
      procs[#procs + 1] = mp.Process{target = function()
        for i = 1, N do work:put(id * 100000 + i) end
      end}
    end
    for _ = 1, 3 do
      procs[#procs + 1] = mp.Process{target = function()
        local sum, n, last = 0, 0, {0, 0}
        for v in work:iter() do
          local id, i = v // 100000, v % 100000
          assert(i > last[id], "FIFO per producer broken")
          last[id] = i
          sum, n = sum + v, n + 1
        end
        done:put({sum, n})
      end}
    end
    for _, p in ipairs(procs) do p:start() end
    procs[1]:join(); procs[2]:join()
    work:close()
    local sum, n = 0, 0
    for _ = 1, 3 do
      local r = done:get(60)
      sum, n = sum + r[1], n + r[2]
    end
    local want = 0
    for id = 1, 2 do for i = 1, N do want = want + id * 100000 + i end end
    assert.are.equal(2 * N, n)
    assert.are.equal(want, sum)
    for _, p in ipairs(procs) do p:join(); assert.are.equal(0, p.exitcode) end
  end)

  it("sends a Queue through a Queue: the same queue on the other side", function()
    local carrier, reply = mp.Queue(), mp.Queue()
    local p = mp.Process{target = function()
      local q = carrier:get(30)
      q:put("through the sent queue")
    end}
    p:start()
    local made_later = mp.Queue() -- made after the child started
    carrier:put(made_later)
    assert.are.equal("through the sent queue", made_later:get(30))
    p:join()
    assert.is_true(reply:empty())
  end)

  it("survives a consumer SIGKILLed mid-stream: no deadlock, nothing duplicated", function()
    local work, done = mp.Queue(50), mp.Queue()
    local N = 20000
    local function consumer(tag)
      return mp.Process{target = function()
        for v in work:iter() do done:put({tag, v}) end
      end}
    end
    local victim, survivor = consumer("victim"), consumer("survivor")
    local producer = mp.Process{target = function() for i = 1, N do work:put(i) end work:close() end}
    victim:start(); survivor:start(); producer:start()
    -- wait (by handshake) until the victim is in the middle of the stream
    local seen, count = {}, 0
    local function take(t)
      local r = done:get(t)
      if r then
        assert.is_nil(seen[r[2]], "item delivered twice: " .. r[2])
        seen[r[2]] = true
        count = count + 1
      end
      return r
    end
    local victim_took = 0
    while victim_took < 100 do
      local r = take(30)
      if r[1] == "victim" then victim_took = victim_took + 1 end
    end
    victim:kill()
    victim:join()
    assert.are.equal(-9, victim.exitcode)
    producer:join(); survivor:join()
    while take(0) do end
    assert.are.equal(0, survivor.exitcode)
    -- everything arrived, except at most the one item the victim held
    assert.is_true(count >= N - 1 and count <= N, "delivered " .. count)
  end)
end)

describe("JoinableQueue", function()
  it("join waits until every item is marked done", function()
    local q = mp.JoinableQueue()
    for i = 1, 10 do q:put(i) end
    assert.is_false(q:join(0.05))
    local p = mp.Process{target = function()
      for _ = 1, 10 do q:get() mp.sleep(0.001) q:task_done() end
    end}
    p:start()
    assert.is_true(q:join(30))
    assert.is_true(q:join(0))
    assert.is_true(q:join()) -- no timeout: waits forever, here not at all
    p:join()
    assert.has_error(function() q:task_done() end, "task_done() called more times than items were put")
  end)
end)

describe("SimpleQueue", function()
  it("puts, gets, closes, and has no extras", function()
    local q = mp.SimpleQueue()
    assert.is_true(q:empty())
    q:put({1})
    assert.are.same({1}, q:get())
    assert.is_nil(q.put_nowait)
    assert.is_nil(q.qsize)
    q:close()
    assert.are.same({nil, "closed"}, {q:get()})
  end)
end)

describe("queue demos", function()
  it("writer/reader (seed 000): the reader gets A, B, C in order", function()
    local demo = require "writer_reader"
    local got, wcode, rcode = demo.run({"A", "B", "C"}, 0.02)
    assert.are.same({"A", "B", "C"}, got)
    assert.are.equal(0, wcode); assert.are.equal(0, rcode)
  end)

  it("producer/consumer (seed 003): every item once, buffer bounded by 10", function()
    local demo = require "producer_consumer"
    local reports, highest = demo.run(5000, 3)
    local n, sum = 0, 0
    for _, r in ipairs(reports) do n, sum = n + r.count, sum + r.sum end
    assert.are.equal(5000, n)
    assert.are.equal(5000 * 5001 // 2, sum)
    assert.is_true(highest <= 10)
  end)

  it("3-stage pipeline: every line transformed and written in input order", function()
    local demo = require "pipeline"
    local input = H.tmpname()
    local f = assert(io.open(input, "w"))
    for i = 1, 2000 do f:write(("line %d of the input\n"):format(i)) end
    f:close()
    local out = {}
    local n = demo.run(input, function(s) out[#out + 1] = s end, 3)
    os.remove(input)
    assert.are.equal(2000, n)
    for i = 1, 2000 do assert.are.equal(("  5  LINE %d OF THE INPUT"):format(i), out[i]) end
    local cli, rc = H.run("scripts/pipeline.lua", "spec/fixtures/args.lua", "-", "2")
    assert.are.equal(0, rc)
    assert.matches('  3  PRINT%("ARG0=" %.%. ARG%[0%]%)', cli)
  end)
end)
