-- zcsend.loop(): coroutines on zcsend's own libev loop.
local H = require "helper"
local zcsend = require "zcsend"

local SIZE = 1024 * 1024
local DATA = H.bytes(SIZE, 11)
local PATH = H.file("loop.bin", DATA)

teardown(H.cleanup)

describe("zcsend.loop", function()
  it("runs 200 concurrent transfers, every byte checked", function()
    local N = 200
    local srv, port = H.listen(N)
    local out = H.path("many")
    local rd = H.reader(port, out, N)
    local socks = {}
    for i = 1, N do
      socks[i] = assert(srv:accept())
    end
    srv:close()
    local f = assert(io.open(PATH, "rb"))
    local loop = zcsend.loop()
    local results, want = {}, {}
    math.randomseed(42)
    local before = zcsend.stats()
    for i = 1, N do
      local count = math.random(1, SIZE)
      local offset = math.random(0, SIZE - count)
      want[i] = DATA:sub(offset + 1, offset + count)
      loop:sendfile(socks[i], f, offset, count, function(sent, msg)
        assert(sent, msg)
        results[i] = sent
        socks[i]:close()
      end)
    end
    assert.is_true(loop:run())
    assert.are.equal("done", H.reader_wait(rd))
    -- the reader names its files by connection order, the server by accept
    -- order: they agree, since each side took them one by one in order
    for i = 1, N do
      assert.are.equal(#want[i], results[i])
      assert.is_true(H.read_file(out .. "." .. i) == want[i], "connection " .. i)
    end
    local after = zcsend.stats()
    assert.are.equal(N, after.completed - before.completed)
    f:close()
  end)

  it("lets a wrapped coroutine send several files in turn while others run", function()
    local srv, port = H.listen()
    local out = H.path("seq")
    local rd = H.reader(port, out, 2)
    local a, b = assert(srv:accept()), assert(srv:accept())
    srv:close()
    local loop = zcsend.loop()
    local order = {}
    local f = assert(io.open(PATH, "rb"))
    loop:wrap(function()
      for k = 1, 3 do
        assert(zcsend.sendfile(a, f, (k - 1) * 1000, 1000))
        order[#order + 1] = "a" .. k
      end
      a:close()
    end)
    loop:wrap(function()
      assert.are.equal(SIZE, zcsend.sendfile(b, f))
      order[#order + 1] = "b"
      b:close()
    end)
    assert.is_true(loop:run())
    H.reader_wait(rd)
    assert.is_true(H.read_file(out .. ".1") == DATA:sub(1, 3000))
    assert.is_true(H.read_file(out .. ".2") == DATA)
    assert.are.equal(4, #order)
    f:close()
  end)

  it("raises a callback's error from run(), with its traceback", function()
    local srv, port = H.listen()
    local rd = H.reader(port, H.path("err"), 1)
    local s = assert(srv:accept())
    srv:close()
    local f = assert(io.open(PATH, "rb"))
    local loop = zcsend.loop()
    loop:sendfile(s, f, 0, 100, function() error("boom in callback") end)
    local ok, err = pcall(loop.run, loop)
    assert.is_false(ok)
    assert.is_truthy(err:find("boom in callback", 1, true))
    assert.is_truthy(err:find("stack traceback", 1, true))
    s:close()
    H.reader_wait(rd)
    f:close()
  end)

  it("raises a wrapped function's error from wrap(), with its traceback", function()
    local loop = zcsend.loop()
    local ok, err = pcall(loop.wrap, loop, function() error("boom in coroutine") end)
    assert.is_false(ok)
    assert.is_truthy(err:find("boom in coroutine", 1, true))
    assert.is_truthy(err:find("stack traceback", 1, true))
  end)

  it("cancels a driven transfer: its callback runs once with ECANCELED, from run()", function()
    local srv, port = H.listen()
    local rd = H.reader(port, H.path("cancel"), 1, { delay = 0.01 })
    local s = assert(srv:accept())
    srv:close()
    local big = H.file("big.bin", string.rep(DATA, 32))
    local f = assert(io.open(big, "rb"))
    local loop = zcsend.loop()
    local t = assert(zcsend.transfer(s, f))
    local calls = 0
    loop:drive(t, function(tr)
      calls = calls + 1
      assert.are.equal(t, tr)
    end)
    assert.is_false(t:done())
    assert.are.equal(0, t:sent()) -- its first step comes from run(), not from drive()
    t:cancel()
    assert.are.equal(0, calls) -- nor its callback from cancel()
    assert.is_true(loop:run())
    assert.are.equal(1, calls)
    assert.are.same({ nil, "ECANCELED: Operation canceled", "ECANCELED", 0 }, { t:result() })
    assert.are.equal(0, t:sent())
    t:close()
    s:close()
    H.reader_wait(rd)
    f:close()
  end)

  it("closes a driven transfer: the loop lets go of it and of its callback (and what that holds)", function()
    local srv, port = H.listen()
    local c = assert(require("socket").connect("127.0.0.1", port)) -- never reads: the transfer waits
    local s = assert(srv:accept())
    srv:close()
    local f = assert(io.open(H.file("big.bin", string.rep(DATA, 32)), "rb"))
    local loop = zcsend.loop()
    local held = setmetatable({}, { __mode = "k" })
    local called = false
    do
      local captured = {} -- stands for a connection object the callback holds
      held[captured] = true
      local t = assert(zcsend.transfer(s, f))
      loop:drive(t, function() called = true; return captured end)
      loop:wait(H.int(c:getfd()), "w", function() t:close() end) -- another callback closes it
      assert.is_true(loop:run())
      assert.are.equal(0, loop:active()) -- nothing left to run
    end
    collectgarbage()
    collectgarbage()
    assert.is_nil(next(held)) -- collected though the loop lives on
    assert.is_false(called)
    s:close()
    c:close()
    f:close()
  end)

  it("t:close() from a finalizer run as the loop that drives it is collected: no crash", function()
    local srv, port = H.listen()
    local c = assert(require("socket").connect("127.0.0.1", port))
    local s = assert(srv:accept())
    srv:close()
    local f = assert(io.open(PATH, "rb"))
    local closed = false
    do
      local loop = zcsend.loop()
      local t = assert(zcsend.transfer(s, f))
      loop:drive(t, function() end)
      -- made after the loop: finalized before it, in the same cycle, when the
      -- loop's entry in the weak map of loops is already gone
      local function close_it() t:close(); closed = true end
      if newproxy then -- LuaJIT: no __gc for tables
        getmetatable(newproxy(true)).__gc = close_it
      else
        setmetatable({}, { __gc = close_it })
      end
    end
    collectgarbage()
    collectgarbage()
    assert.is_true(closed)
    s:close()
    c:close()
    f:close()
  end)

  it("stop() ends run() with work still pending", function()
    local srv, port = H.listen()
    local rd = H.reader(port, H.path("stop"), 1)
    local s = assert(srv:accept())
    srv:close()
    local loop = zcsend.loop()
    local fd = H.int(s:getfd())
    loop:wait(fd, "r", function() error("the reader never writes") end)
    loop:wait(fd, "w", function() loop:stop() end)
    assert.is_false(loop:run()) -- the read wait is still pending
    assert.are.equal(1, loop:active())
    s:close()
    H.reader_wait(rd)
  end)

  it("checks its arguments", function()
    local loop = zcsend.loop()
    assert.has_error(function() loop:wrap(42) end, "bad argument #1 to 'wrap' (function expected, got number)")
    assert.has_error(function() loop:sendfile(1, 1, 0, nil, "x") end,
      "bad argument #5 to 'sendfile' (callback function expected, got string)")
  end)
end)

describe("garbage collection", function()
  it("frees dropped transfers and loops without leaking fds", function()
    local srv, port = H.listen()
    local rd = H.reader(port, H.path("gc"), 1)
    local s = assert(srv:accept())
    srv:close()
    local fifo = H.path("fifo")
    assert(os.execute("mkfifo " .. fifo))
    local src = assert(io.open(fifo, "r+")) -- never written: a transfer from it waits for ever
    local fds0 = H.fd_baseline()
    local active0 = zcsend.stats().active
    for i = 1, 300 do
      local p = assert(io.popen("true", "r"))
      local t = assert(zcsend.transfer(s, p)) -- a pipe: the step makes a splice pipe
      t:step()
      local loop = zcsend.loop()
      if i % 2 == 0 then -- dropped with a wait pending
        loop:wait(H.int(s:getfd()), "w", function() end)
      end
      if i % 3 == 0 then -- dropped while driving a transfer that waits on its source
        local pending = assert(zcsend.transfer(s, src))
        loop:drive(pending, function() error("never called") end)
        assert.is_false(pending:done())
      end
      p:close()
      t, loop = nil, nil
    end
    assert.are.equal(fds0, H.fd_baseline()) -- the loops and transfers dropped above, collected
    assert.are.equal(active0, zcsend.stats().active)
    src:close()
    s:close()
    H.reader_wait(rd)
  end)
end)
