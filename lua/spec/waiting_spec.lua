-- How a transfer waits (issue 11): every wait has a timeout, hosts are
-- pluggable (zcsend.set_waiter, zcsend.add_host), and the core's t:peek /
-- t:advance / t:blocked serve hosts that wait by writing.
local H = require "helper"
local zcsend = require "zcsend"
local core = require "zcsend.core"
local socket = require "socket"

local BIG = H.path("sparse.bin") -- more than loopback's buffers hold, read fast
assert(os.execute("truncate -s 256M " .. BIG))
local SIZE = 16 * 1024 * 1024 + 77
local DATA = H.bytes(SIZE, 23)
local PATH = H.file("wait.bin", DATA)

teardown(H.cleanup)

-- a connected pair in this process: s (ours) and c (the peer, which reads
-- only if the test makes it)
local function pair()
  local srv = H.listen()
  local _, port = srv:getsockname()
  local c = assert(socket.connect("127.0.0.1", port))
  local s = assert(srv:accept())
  srv:close()
  return s, c
end

local function never_read(call)
  local s, c = pair()
  local f = assert(io.open(BIG, "rb"))
  -- its first ranges in the page cache: the transfer's first wait is then the
  -- socket's, never a disk wait (hosts that step themselves wait for the disk
  -- through the same waiter, and these tests count the bytes before the first)
  assert(f:read(16 * 1024 * 1024))
  f:seek("set", 0)
  local t0 = core.now()
  local r = { call(s, f) }
  local took = core.now() - t0
  s:close()
  c:close()
  f:close()
  return r, took
end

local function assert_timed_out(r, took, timeout)
  assert.is_nil(r[1])
  assert.are.equal(("ETIMEDOUT: no progress for %g s"):format(timeout), r[2])
  assert.are.equal("ETIMEDOUT", r[3])
  assert.is_true(r[4] > 0 and r[4] < 256 * H.MiB, tostring(r[4]))
  assert.is_true(took >= timeout and took < timeout + 2, ("took %.2f s"):format(took))
end

describe("a transfer nobody reads", function()
  it("ends with ETIMEDOUT and the bytes that went out, blocking", function()
    assert.are.equal("blocking", zcsend.host())
    local r, took = never_read(function(s, f)
      return zcsend.sendfile(s, f, 0, nil, { timeout = 0.5 })
    end)
    assert_timed_out(r, took, 0.5)
  end)

  it("ends with ETIMEDOUT on zcsend's loop", function()
    local lp = zcsend.loop()
    local r, took, host
    lp:wrap(function()
      host = zcsend.host()
      r, took = never_read(function(s, f)
        return zcsend.sendfile(s, f, 0, nil, { timeout = 0.6 })
      end)
    end)
    lp:run()
    assert.are.equal("zcsend.loop", host)
    assert_timed_out(r, took, 0.6)
  end)

  it("ends with ETIMEDOUT in cqueues", function()
    local cqueues = require "cqueues"
    local cq = cqueues.new()
    local r, took, host
    cq:wrap(function()
      host = zcsend.host()
      r, took = never_read(function(s, f)
        return zcsend.sendfile(s, f, 0, nil, { timeout = 0.4 })
      end)
    end)
    assert(cq:loop())
    assert.are.equal("cqueues", host)
    assert_timed_out(r, took, 0.4)
  end)

  it("takes the module's default, zcsend.TIMEOUT", function()
    local saved = zcsend.TIMEOUT
    zcsend.TIMEOUT = 0.3
    local r, took = never_read(function(s, f)
      return zcsend.sendfile(s, f)
    end)
    zcsend.TIMEOUT = saved
    assert.are.equal(60, saved)
    assert_timed_out(r, took, 0.3)
  end)

  it("counts as failed, and gives back every fd", function()
    local before, fds, was = zcsend.stats(), H.fd_baseline()
    never_read(function(s, f)
      return zcsend.sendfile(s, f, 0, nil, { timeout = 0.2 })
    end)
    local after = zcsend.stats()
    assert.are.equal(1, after.failed - before.failed)
    assert.are.equal(0, after.active)
    local now, is = H.fd_count()
    assert.are.equal(fds, now, was .. " | " .. is)
  end)
end)

describe("zcsend.wait", function()
  it("ends with ETIMEDOUT after its timeout", function()
    local s, c = pair()
    local t0 = core.now()
    local ok, msg, name = zcsend.wait(s, "r", 0.3)
    local took = core.now() - t0
    assert.is_nil(ok)
    assert.are.equal("ETIMEDOUT: no progress for 0.3 s", msg)
    assert.are.equal("ETIMEDOUT", name)
    assert.is_true(took >= 0.3 and took < 1.5)
    c:send("x")
    assert.is_true(zcsend.wait(s, "r", 5))
    s:close()
    c:close()
  end)

  it("ends with ETIMEDOUT on zcsend's loop", function()
    local s, c = pair()
    local lp, res = zcsend.loop(), nil
    lp:wrap(function()
      res = { zcsend.wait(s, "r", 0.3) }
    end)
    lp:run()
    assert.are.same({ nil, "ETIMEDOUT: no progress for 0.3 s", "ETIMEDOUT" }, res)
    s:close()
    c:close()
  end)
end)

describe("bad timeouts", function()
  local s, c = pair()
  local f = assert(io.open(PATH, "rb"))
  for _, bad in ipairs({ -1, 0, "5", 0 / 0, { timeout = -2 }, { timeout = "x" } }) do
    it("sendfile refuses " .. tostring(type(bad) == "table" and bad.timeout or bad), function()
      assert.has_error(function()
        zcsend.sendfile(s, f, 0, 10, bad)
      end, "bad argument #5 to 'sendfile' (timeout must be a positive number of seconds)")
      assert.has_error(function()
        zcsend.wait(s, "w", bad)
      end, "bad argument #3 to 'wait' (timeout must be a positive number of seconds)")
    end)
  end
  it("a number alone is the timeout", function()
    assert.are.equal(10, zcsend.sendfile(s, f, 0, 10, 5))
    assert.are.equal(DATA:sub(1, 10), c:receive(10))
    s:close()
    c:close()
    f:close()
  end)
end)

-- a peer process reads slowly (64 KiB per ms) through a small send buffer,
-- so transfers must wait many times
local function slow_transfer(call)
  local srv, port = H.listen()
  local out = H.path("slow" .. math.random(1e9))
  local rd = H.reader(port, out, 1, { delay = 0.001 })
  local s = assert(srv:accept())
  assert(s:setoption("send-buffer-size", 65536))
  srv:close()
  local f = assert(io.open(PATH, "rb"))
  local r = { call(s, f) }
  s:close()
  f:close()
  assert.are.equal("done", H.reader_wait(rd))
  return r, H.read_file(out .. ".1")
end

describe("zcsend.set_waiter", function()
  after_each(function()
    zcsend.set_waiter(nil)
  end)

  it("waits through the function given, in slices of at most 0.1 s", function()
    local calls, longest, events = 0, 0, {}
    zcsend.set_waiter(function(fd, ev, timeout)
      calls = calls + 1
      longest = math.max(longest, timeout)
      events[ev] = true
      assert.is_true(fd >= 0)
      return core.poll(fd, ev, timeout)
    end)
    assert.are.equal("waiter", zcsend.host())
    local r, got = slow_transfer(function(s, f)
      return zcsend.sendfile(s, f)
    end)
    assert.are.same({ SIZE }, r)
    assert.is_true(got == DATA)
    assert.is_true(calls > 0)
    assert.is_true(longest <= 0.1)
    assert.are.same({ w = true }, events)
  end)

  it("a waiter's error ends the transfer with its words and the count", function()
    zcsend.set_waiter(function()
      return nil, "ECONNRESET: the host says so", "ECONNRESET"
    end)
    local r = never_read(function(s, f)
      return zcsend.sendfile(s, f)
    end)
    assert.is_nil(r[1])
    assert.are.equal("ECONNRESET: the host says so", r[2])
    assert.are.equal("ECONNRESET", r[3])
    assert.is_true(r[4] > 0)
  end)

  it("a waiter that always times out gives ETIMEDOUT after the call's timeout", function()
    zcsend.set_waiter(function()
      return false
    end)
    local r, took = never_read(function(s, f)
      return zcsend.sendfile(s, f, 0, nil, { timeout = 0.3 })
    end)
    assert_timed_out(r, took, 0.3)
  end)

  it("refuses what is not a function", function()
    assert.has_error(function()
      zcsend.set_waiter(42)
    end, "bad argument #1 to 'set_waiter' (function or nil expected, got number)")
  end)
end)

describe("zcsend.add_host", function()
  it("a host that waits by writing through its own object: t:peek, t:advance, t:blocked", function()
    local on, probes, yields, refused = true, 0, 0, 0
    local a = {
      name = "writer",
      active = function()
        return on
      end,
      wait = function(fd, ev, timeout)
        return core.poll(fd, ev, timeout)
      end,
      -- as nginx does: the next byte through the host's own (blocking) send
      wait_transfer = function(t, sock, timeout)
        if not t:blocked() then
          yields = yields + 1
          return true
        end
        local data, _, name = t:peek(1)
        if not data then -- the emulation's buffer goes first: wait another way
          assert.are.equal("EAGAIN", name)
          refused = refused + 1
          return core.poll(t:ownfd(), "w", timeout)
        end
        if #data == 0 then
          return true
        end
        sock:settimeout(timeout)
        local n = sock:send(data)
        if n then
          probes = probes + 1
          t:advance(1)
        end
        return true
      end,
    }
    zcsend.add_host(a)
    assert.are.equal("writer", zcsend.host())
    local before = zcsend.stats()
    local r, got = slow_transfer(function(s, f)
      return zcsend.sendfile(s, f, 5, SIZE - 10)
    end)
    on = false
    assert.are.same({ SIZE - 10 }, r)
    assert.is_true(got == DATA:sub(6, SIZE - 5))
    if zcsend.backend() ~= "emulated" then
      assert.is_true(probes > 0)
    else -- the emulated backend always holds the bytes it read: peek says EAGAIN
      assert.is_true(refused > 0 and probes == 0)
    end
    local after = zcsend.stats()
    if zcsend.backend() ~= "emulated" then
      -- copied: the probes, and the rest read at once where it was at most
      -- SMALL_COPY bytes when a step came (t:cached)
      local zc = after.bytes_zero_copy - before.bytes_zero_copy
      local fb = after.bytes_fallback - before.bytes_fallback
      assert.are.equal(SIZE - 10, zc + fb)
      assert.is_true(fb >= probes and fb - probes <= core.SMALL_COPY, ("%d copied, %d probes"):format(fb, probes))
    end
    assert.are.equal(1, after.completed - before.completed)
  end)

  it("refuses an adapter without active() and wait()", function()
    assert.has_error(function()
      zcsend.add_host({ name = "x" })
    end, "bad argument #1 to 'add_host' (adapter with active() and wait() expected)")
  end)
end)

describe("t:peek and t:advance", function()
  it("peek moves nothing; advance counts what the host wrote", function()
    local s, c = pair()
    local f = assert(io.open(PATH, "rb"))
    local t = assert(zcsend.transfer(s, f, 10, 100))
    assert.are.equal(DATA:sub(11, 14), t:peek(4))
    assert.are.equal(DATA:sub(11, 14), t:peek(4))
    assert.are.equal(DATA:sub(11, 110), t:peek(1000)) -- never past the range
    assert(s:send(DATA:sub(11, 13)))
    t:advance(3)
    assert.are.equal(3, t:sent())
    assert.has_error(function()
      t:advance(98)
    end, "advance past what is left")
    assert.are.equal("done", t:step())
    assert.are.equal(100, t:sent())
    assert.are.equal("", t:peek(4)) -- nothing left
    assert.are.equal(DATA:sub(11, 110), c:receive(100))
    t:close()
    s:close()
    c:close()
    f:close()
  end)

  it("a pipe can't be peeked: ESPIPE", function()
    local s, c = pair()
    local p = io.popen("printf abc", "r")
    local t = assert(zcsend.transfer(s, p))
    assert.are.same({ nil, "ESPIPE: Illegal seek", "ESPIPE" }, { t:peek(1) })
    t:close()
    assert.are.equal("abc", p:read("a")) -- peek took nothing from the pipe
    p:close()
    s:close()
    c:close()
  end)

  it("blocked() tells a full socket from a spent budget", function()
    local s, c = pair()
    local f = assert(io.open(BIG, "rb"))
    local t = assert(zcsend.transfer(s, f))
    while t:step() == "write" and not t:blocked() do
    end
    assert.is_true(t:blocked()) -- nobody reads: the socket fills
    assert.are.equal("write", t:step())
    assert.is_true(t:blocked()) -- and stays full
    t:close()
    assert.is_false(t:blocked()) -- over
    s:close()
    c:close()
    f:close()
  end)
end)
