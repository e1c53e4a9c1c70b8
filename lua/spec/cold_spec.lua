-- Issue 13 §4: a host's thread never waits for the disk. A range not in the
-- page cache is read in by a prefetch thread of the core while the host waits
-- the host's way (here: a waiter that records what it was asked), then the
-- transfer steps. Checked by what happened (the waits asked for, the core's
-- prefetch counter, the bytes), not by timing.
local H = require "helper"
local zcsend = require "zcsend"
local core = require "zcsend.core"

local SIZE = 8 * 1024 * 1024 + 3
local DATA = H.bytes(SIZE, 41)
-- /var/tmp, not H.tmp: a tmpfs keeps every page in memory, nothing to evict
local DIR = "/var/tmp/zcs-cold-" .. H.pid() -- made by the shell's mkdir: mktemp leaks under the ASan preload
assert(os.execute("mkdir -p " .. DIR))
local PATH = DIR .. "/cold.bin"
do
  local f = assert(io.open(PATH, "wb"))
  assert(f:write(DATA))
  f:close()
end

-- whether the core tells a warm PATH from a cold one: not where it has no
-- cachestat(2) (an older kernel, or valgrind, which doesn't know the call);
-- there a range past 16 pages is never "ready", and always read in by a
-- prefetch thread first, so these tests have nothing to tell apart
local function can_tell()
  H.read_file(PATH)
  return H.cached(PATH)
end

-- evicts PATH; false where the core can't tell (see can_tell)
local function evicted()
  if not can_tell() then
    return false
  end
  H.evict(PATH)
  return not H.cached(PATH)
end
local NO_CACHESTAT = "the core can't tell what is in the page cache here (no cachestat)"

-- a waiter that records the events it is asked for (into asked), then polls
-- (or answers answer(fd, ev, timeout), when given)
local function recording_waiter(asked, answer)
  zcsend.set_waiter(function(fd, ev, timeout)
    asked[#asked + 1] = ev
    return (answer or core.poll)(fd, ev, timeout)
  end)
end

-- a connection accepted from a reader process that reads it all into name.1
local function to_reader(name)
  local srv, port = H.listen()
  local out = H.path(name)
  local rd = H.reader(port, out, 1)
  local s = assert(srv:accept())
  srv:close()
  return s, function()
    assert.are.equal("done", H.reader_wait(rd))
    return H.read_file(out .. ".1")
  end
end

teardown(function()
  zcsend.set_waiter(nil)
  os.execute("rm -rf " .. DIR)
end)

-- send(s, f) of PATH to a connection whose peer never reads; what it returned
local function send_to_a_peer_that_never_reads(send)
  local srv, port = H.listen()
  local c = assert(require("socket").connect("127.0.0.1", port))
  local s = assert(srv:accept())
  srv:close()
  local f = assert(io.open(PATH, "rb"))
  local r = { send(s, f) }
  f:close()
  s:close()
  c:close()
  return table.unpack(r, 1, 4)
end

-- waits (up to a second) for the prefetch threads to let go of their dups: just
-- after the wait for their eventfd ends
local function prefetches_done()
  for _ = 1, 100 do
    if core.engine_stats().prefetching == 0 then
      return
    end
    os.execute("sleep 0.01")
  end
end

describe("a cold file", function()
  before_each(function()
    zcsend.set_waiter(nil)
  end)

  -- sends the evicted PATH through sock_of(s), s a connection to a reader: every
  -- byte arrives, and the first wait was for the disk (a prefetch), before any byte
  local function sends_cold(name, sock_of)
    if not evicted() then
      return pending(NO_CACHESTAT)
    end
    local asked = {}
    recording_waiter(asked)
    local s, received = to_reader(name)
    local before = core.engine_stats().prefetches
    local f = assert(io.open(PATH, "rb"))
    local n, msg = zcsend.sendfile(sock_of(s), f)
    f:close()
    s:close()
    assert.is_true(received() == DATA)
    assert.are.equal(SIZE, n, msg)
    assert.are.equal("r", asked[1])
    assert.is_true(core.engine_stats().prefetches > before)
    assert.are.equal(0, core.engine_stats().prefetching)
  end

  it("is read in by a prefetch thread while the host waits on its eventfd, then sent whole", function()
    sends_cold("cold-out", function(s) return s end)
  end)

  it("over TLS (chunks through the object's own send()): read in by a prefetch thread too, never by the host's",
    function()
      sends_cold("cold-tls-out", function(s)
        return H.tls_like(s)
      end)
    end)

  it("in zcsend's own loop: the loop runs other work while the first range is read in", function()
    if not evicted() then
      return pending(NO_CACHESTAT)
    end
    local lp = zcsend.loop()
    local s, received = to_reader("cold-loop-out")
    local before = core.engine_stats().prefetches
    local n, msg, ticks, ticks_at_end = nil, nil, 0, nil
    lp:wrap(function()
      local f = assert(io.open(PATH, "rb"))
      n, msg = zcsend.sendfile(s, f)
      ticks_at_end = ticks
      f:close()
      s:close()
    end)
    lp:wrap(function() -- other work on the same loop: it runs while the disk reads
      while not ticks_at_end do
        ticks = ticks + 1
        zcsend.wait(s, "w", 1) -- a wait through the loop, ready at once
        if ticks > 100000 then
          break
        end
      end
    end)
    lp:run()
    assert.is_true(received() == DATA)
    assert.are.equal(SIZE, n, msg)
    assert.is_true(core.engine_stats().prefetches > before)
    assert.is_true(ticks_at_end > 0, ("ticks %s at end, %s after"):format(ticks_at_end, ticks)) -- the other coroutine ran during the transfer
  end)

  it("a warm file asks for no prefetch", function()
    if not can_tell() then
      return pending(NO_CACHESTAT)
    end
    local f = assert(io.open(PATH, "rb"))
    f:read("a")
    f:seek("set", 0)
    local asked = {}
    recording_waiter(asked)
    local s, received = to_reader("warm-out")
    local before = core.engine_stats().prefetches
    assert.are.equal(SIZE, zcsend.sendfile(s, f))
    f:close()
    s:close()
    assert.is_true(received() == DATA)
    assert.are.equal(before, core.engine_stats().prefetches)
    for _, ev in ipairs(asked) do
      assert.are.equal("w", ev)
    end
  end)

  it("t:prefetch reads two steps' worth, and t:cached asks anew each time: evicted again, not cached", function()
    if not evicted() then
      return pending(NO_CACHESTAT)
    end
    local MiB = 1048576
    local t, close = H.file_transfer(PATH)
    assert.is_false(t:cached(MiB))
    local before = core.engine_stats().prefetch_bytes
    local efd = assert(t:prefetch(MiB))
    assert.is_true(core.poll(efd, "r", 20))
    t:prefetch_close()
    assert.are.equal(2 * MiB, core.engine_stats().prefetch_bytes - before)
    local yes = false
    for _ = 1, 100 do -- a page read in a moment ago may be locked a moment longer
      yes = t:cached(2 * MiB)
      if yes then
        break
      end
      require("socket").sleep(0.01)
    end
    assert.is_true(yes)
    assert.is_true(evicted()) -- gone again (memory pressure): the host's thread must not read it
    assert.is_false(t:cached(2 * MiB))
    close()
  end)

  it("a host whose wait raises after a disk wait it let time out: the prefetch's eventfd goes too", function()
    if not evicted() then
      return pending(NO_CACHESTAT)
    end
    local fds = H.fd_baseline()
    local asked = {}
    zcsend.set_waiter(function(fd, ev, timeout)
      asked[#asked + 1] = ev
      if #asked == 1 then -- the disk's eventfd: the prefetch ends, but the wait says "not yet"
        core.poll(fd, ev, 5)
        return false
      end
      error("the host's wait raised (a cancelled fiber, a killed light thread)")
    end)
    local ok, err = send_to_a_peer_that_never_reads(function(s, f) return pcall(zcsend.sendfile, s, f) end)
    assert.is_false(ok)
    assert.truthy(tostring(err):find("the host's wait raised", 1, true))
    assert.are.equal("r", asked[1])
    assert.are.equal(fds, H.fd_count())
  end)

  -- a send whose host never resumes it once it waits for the disk (its
  -- scheduler dropped it): once collected, it holds no fd (the prefetch's
  -- eventfd was a plain number, left open)
  local function dropped_at_the_disk_wait(sock_of)
    if not evicted() then
      return pending(NO_CACHESTAT)
    end
    local fds = H.fd_baseline()
    local asked = {}
    recording_waiter(asked, coroutine.yield) -- never resumed
    send_to_a_peer_that_never_reads(function(s, f)
      local co = coroutine.create(zcsend.sendfile)
      assert(coroutine.resume(co, sock_of(s), f))
      assert.are.equal("suspended", coroutine.status(co))
    end)
    assert.are.equal("r", asked[1])
    prefetches_done()
    assert.are.equal(fds, H.fd_baseline())
  end

  it("a send dropped by its host at the disk wait leaves no fd once collected", function()
    dropped_at_the_disk_wait(function(s) return s end)
  end)

  it("a TLS send dropped by its host at the disk wait leaves no fd once collected", function()
    dropped_at_the_disk_wait(H.tls_like)
  end)

  it("a host that never says ready: ETIMEDOUT after the call's timeout, no fd left behind", function()
    if not evicted() then
      return pending(NO_CACHESTAT)
    end
    local fds = H.fd_baseline()
    local asked = {}
    recording_waiter(asked, function()
      return false -- the disk's eventfd and the full socket alike: never in time
    end)
    local n, msg, name, sent = send_to_a_peer_that_never_reads(function(s, f)
      return zcsend.sendfile(s, f, 0, nil, { timeout = 0.3 })
    end)
    assert.is_nil(n)
    assert.are.equal("ETIMEDOUT", name, msg)
    assert.is_true(sent < SIZE)
    assert.are.equal("r", asked[1])
    prefetches_done()
    assert.are.equal(fds, H.fd_count())
  end)

  it("never steps a range nobody read in, after a disk wait that timed out and pages dropped again", function()
    if not evicted() then
      return pending(NO_CACHESTAT)
    end
    -- every step is looked at first: a range not in the page cache would be
    -- a disk read on the host's thread
    local methods = debug.getregistry()["zcsend.transfer"].__index
    local step, cold_steps = methods.step, 0
    methods.step = function(t, ...)
      if not t:cached() then
        cold_steps = cold_steps + 1
      end
      return step(t, ...)
    end
    local first, dropped = true, false
    zcsend.set_waiter(function(fd, ev, timeout)
      if ev == "r" and first then -- the prefetch ends just as the wait's slice runs out
        first = false
        core.poll(fd, "r", 10)
        return false
      elseif ev == "w" and not first and not dropped then
        dropped = true
        H.evict(PATH) -- memory pressure takes the pages meanwhile
      end
      return core.poll(fd, ev, timeout)
    end)
    local s, received = to_reader("stale-out")
    local f = assert(io.open(PATH, "rb"))
    local ok, n, msg = pcall(zcsend.sendfile, s, f)
    methods.step = step
    f:close()
    s:close()
    assert.is_true(ok, n)
    assert.are.equal(SIZE, n, msg)
    assert.is_true(received() == DATA)
    assert.is_true(dropped)
    -- before: the next cold range's wait found the old prefetch's signalled
    -- eventfd, returned at once, and the step read the disk
    assert.are.equal(0, cold_steps)
  end)

  it("a cqueues TLS socket closed by another coroutine during the disk wait: EBADF and the count, not a raise",
    function()
      if not evicted() then
        return pending(NO_CACHESTAT)
      end
      local cqueues = require "cqueues"
      local csocket = require "cqueues.socket"
      local server, client = H.cqueues_tls_contexts()
      local f = assert(io.open(PATH, "rb"))
      local cq = cqueues.new()
      local a, b = csocket.pair()
      local res
      cq:wrap(function()
        assert(a:starttls(server, 5))
        recording_waiter({}, function(fd, ev, timeout)
          if a then -- another coroutine closes the socket while the chunk is read in
            a:close()
            a = nil
          end
          return core.poll(fd, ev, timeout)
        end)
        res = table.pack(pcall(zcsend.sendfile, a, f))
      end)
      cq:wrap(function()
        assert(b:starttls(client, 5))
        b:close()
      end)
      assert(cq:loop())
      f:close()
      assert.is_true(res[1], res[2])
      assert.is_nil(res[2])
      assert.are.equal("EBADF", res[4], res[3])
      assert.are.equal(0, res[5])
    end)
end)
