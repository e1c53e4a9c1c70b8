-- Issue 10, "Nothing misrouted, nothing leaked": fds are never truncated, a
-- transfer never writes bytes or flags onto an fd it does not own, and a socket
-- closed under a transfer ends it with EBADF instead of a hang or a success.
local H = require "helper"
local zcsend = require "zcsend"
local core = require "zcsend.core"
local socket = require "socket"

local SIZE = 1024 * 1024
local DATA = H.bytes(SIZE, 23)
local PATH = H.file("own.bin", DATA)
local BIG = H.file("own-big.bin", string.rep(DATA, 48)) -- more than loopback buffers hold
local EMPTY = H.file("own-empty.bin", "")
local TWO32 = 4294967296

teardown(H.cleanup)

local function fdof(s)
  return H.int(s:getfd())
end

-- an in-process connection: server side s, client side c (neither reads yet)
local function pair(srv, port)
  local c = assert(socket.connect("127.0.0.1", port))
  local s = assert(srv:accept())
  c:settimeout(0)
  s:settimeout(0)
  return s, c
end

-- a new connection one of whose ends got fd n: returns that end and the other
local function reuse(n, srv, port)
  local extra = {}
  for _ = 1, 32 do
    local s, c = pair(srv, port)
    local got, other = (fdof(s) == n and s) or (fdof(c) == n and c), nil
    if got then
      other = got == s and c or s
      for _, o in ipairs(extra) do
        o:close()
      end
      return got, other
    end
    extra[#extra + 1] = s
    extra[#extra + 1] = c
  end
  error("fd " .. n .. " was not reused")
end

-- lets the loop (or cqueues) turn a few times
local function turns(sock, k)
  for _ = 1, k or 3 do
    zcsend.wait(sock, "w")
  end
end

describe("fd arguments beyond an int (issue 10, item 1)", function()
  it("sendfile raises instead of writing to fd % 2^32 (4294967297 was stdout)", function()
    local srv, port = H.listen()
    local rd = H.reader(port, H.path("trunc"), 1)
    local s = assert(srv:accept())
    srv:close()
    local fd = fdof(s)
    local f = assert(io.open(PATH, "rb"))
    local e = assert(io.open(EMPTY, "rb"))
    assert.has_error(function() zcsend.sendfile(4294967297, e) end,
      "bad argument #1 to 'sendfile' (fd 4294967297 out of range)")
    assert.has_error(function() zcsend.sendfile(TWO32 + fd, f, 0, 100) end,
      ("bad argument #1 to 'sendfile' (fd %d out of range)"):format(TWO32 + fd))
    assert.has_error(function() zcsend.sendfile(s, TWO32 + core.fileno(f), 0, 100) end,
      ("bad argument #2 to 'sendfile' (fd %d out of range)"):format(TWO32 + core.fileno(f)))
    assert.has_error(function() zcsend.transfer(TWO32 + fd, f) end,
      ("bad argument #1 to 'transfer' (fd %d out of range)"):format(TWO32 + fd))
    assert.has_error(function() zcsend.wait(TWO32 + fd, "w") end,
      ("bad argument #1 to 'wait' (fd %d out of range)"):format(TWO32 + fd))
    -- and the binding itself, whoever calls it
    assert.has_error(function() core.transfer(TWO32 + fd, core.fileno(f)) end,
      ("bad argument #1 to 'transfer' (fd %d out of range)"):format(TWO32 + fd))
    assert.has_error(function() core.poll(TWO32, "w") end, "bad argument #1 to 'poll' (fd 4294967296 out of range)")
    s:close()
    H.reader_wait(rd)
    assert.are.equal("", H.read_file(H.path("trunc.1"))) -- not one byte went to fd % 2^32
    e:close()
    f:close()
  end)

  it("loop:wait and loop:sendfile raise for an fd beyond an int", function()
    local loop = zcsend.loop()
    local f = assert(io.open(PATH, "rb"))
    assert.has_error(function() loop:wait(TWO32, "w", function() end) end,
      "bad argument #1 to 'wait' (fd 4294967296 out of range)")
    assert.has_error(function() loop:sendfile(TWO32 + 1, f, 0, 10, function() end) end,
      "bad argument #1 to 'sendfile' (fd 4294967297 out of range)")
    assert.are.equal(0, loop:active())
    f:close()
  end)

  it("an object whose getfd() says a number beyond an int is refused", function()
    local f = assert(io.open(EMPTY, "rb"))
    local fake = { getfd = function() return 4294967297.0 end }
    assert.has_error(function() zcsend.sendfile(fake, f) end,
      "bad argument #1 to 'sendfile' (fd 4294967297 out of range)")
    assert.has_error(function() zcsend.transfer(fake, f) end,
      "bad argument #1 to 'transfer' (fd 4294967297 out of range)")
    f:close()
  end)

  it("negative fds are closed ones", function()
    local f = assert(io.open(PATH, "rb"))
    local loop = zcsend.loop()
    assert.has_error(function() zcsend.sendfile(-1, f) end, "bad argument #1 to 'sendfile' (closed socket)")
    assert.has_error(function() zcsend.sendfile(1, -1) end, "bad argument #2 to 'sendfile' (closed file)")
    assert.has_error(function() zcsend.sendfile(-TWO32 + 1, f) end, "bad argument #1 to 'sendfile' (closed socket)")
    assert.has_error(function() loop:wait(-1, "w", function() end) end, "bad argument #1 to 'wait' (closed fd)")
    assert.has_error(function() core.transfer(-1, 0) end, "bad argument #1 to 'transfer' (closed socket)")
    f:close()
  end)
end)

describe("flags (issue 10, item 2: never written onto an fd zcsend does not own)", function()
  local fifo = H.path("flags.fifo")
  assert(os.execute("mkfifo " .. fifo))

  it("sendfile gives a blocking fd back blocking before it returns, and leaves a non-blocking one alone", function()
    local p = assert(io.popen("cat >/dev/null", "w"))
    local n = core.fileno(p)
    local f = assert(io.open(PATH, "rb"))
    assert.is_false(H.has(H.fdflags(n), H.O_NONBLOCK))
    assert.are.equal(SIZE, zcsend.sendfile(n, f))
    assert.is_false(H.has(H.fdflags(n), H.O_NONBLOCK))
    p:close()
    local srv, port = H.listen()
    local s, c = pair(srv, port)
    local before = H.fdflags(fdof(s))
    assert.are.equal(1000, zcsend.sendfile(s, f, 0, 1000))
    assert.are.equal(before, H.fdflags(fdof(s)))
    f:close()
    s:close()
    c:close()
    srv:close()
  end)

  it("a transfer collected after its fd was closed and reused: the log file that got the number keeps O_APPEND",
    function()
      local pipe = assert(io.open(fifo, "r+")) -- a blocking fd, no process behind it
      local n = core.fileno(pipe)
      local f = assert(io.open(PATH, "rb"))
      local t = assert(zcsend.transfer(n, f))
      assert.are.equal("write", t:step()) -- the fifo holds 64 KiB
      pipe:close()
      local logpath = H.path("app.log")
      local log = H.take_fd(n, function() return io.open(logpath, "a") end, core.fileno, io.close)
      assert.is_true(H.has(H.fdflags(n), H.O_APPEND))
      t = nil -- luacheck: ignore
      collectgarbage("collect")
      collectgarbage("collect")
      local flags = H.fdflags(n)
      assert.is_true(H.has(flags, H.O_APPEND), "the log lost O_APPEND")
      assert.is_false(H.has(flags, H.O_NONBLOCK))
      log:close()
      assert.are.equal("", H.read_file(logpath))
      f:close()
    end)

  it("... and the luasocket connection that got the number stays non-blocking: a 0.5 s receive() times out",
    function()
      local srv, port = H.listen(64)
      local pipe = assert(io.open(fifo, "r+"))
      local n = core.fileno(pipe)
      local f = assert(io.open(PATH, "rb"))
      local t = assert(zcsend.transfer(n, f))
      assert.are.equal("write", t:step())
      pipe:close()
      local c = H.take_fd(n, function() return socket.connect("127.0.0.1", port) end, fdof,
        function(o) o:close() end)
      local s = assert(srv:accept())
      assert.is_true(H.has(H.fdflags(n), H.O_NONBLOCK))
      t = nil -- luacheck: ignore
      collectgarbage("collect")
      collectgarbage("collect")
      assert.is_true(H.has(H.fdflags(n), H.O_NONBLOCK), "luasocket's fd lost O_NONBLOCK: receive would block for ever")
      c:settimeout(0.5)
      local t0 = socket.gettime()
      local data, err = c:receive(1)
      assert.are.same({ nil, "timeout" }, { data, err })
      assert.is_true(socket.gettime() - t0 < 2)
      c:close()
      s:close()
      srv:close()
      f:close()
    end)

  it("a blocking fd closed and reused while zcsend.loop drives its transfer: no byte and no flag reach the new owner",
    function()
      local pipe = assert(io.open(fifo, "r+"))
      local n = core.fileno(pipe)
      local f = assert(io.open(PATH, "rb"))
      local loop = zcsend.loop()
      local guard = H.guard(loop, 5)
      local logpath = H.path("app2.log")
      local res, log
      loop:wrap(function()
        res = { zcsend.sendfile(n, f) } -- fills the fifo's 64 KiB, then waits
        guard.done()
      end)
      loop:wrap(function()
        pipe:close()
        log = H.take_fd(n, function() return io.open(logpath, "a") end, core.fileno, io.close)
      end)
      loop:run()
      assert.is_false(guard.expired, "sendfile never returned")
      assert.are.equal("EBADF", res[3])
      assert.are.equal("EBADF: socket closed during the transfer", res[2])
      assert.is_true(res[4] > 0 and res[4] < SIZE)
      local flags = H.fdflags(n)
      assert.is_true(H.has(flags, H.O_APPEND), "the log lost O_APPEND")
      assert.is_false(H.has(flags, H.O_NONBLOCK))
      log:close()
      assert.are.equal(0, #H.read_file(logpath), "file bytes went into the log")
      f:close()
    end)
end)

describe("a socket closed by another coroutine mid-transfer (issue 10, item 3)", function()
  it("zcsend.loop: the connection that got its number receives nothing; sendfile ends EBADF with what the peer got",
    function()
      local srv, port = H.listen(64)
      local s1, c1 = pair(srv, port)
      local n = fdof(s1)
      local f = assert(io.open(BIG, "rb"))
      local loop = zcsend.loop()
      local guard = H.guard(loop, 10)
      local res, got, leaked
      loop:wrap(function()
        res = { zcsend.sendfile(s1, f) }
      end)
      loop:wrap(function()
        s1:close()
        local holder, other = reuse(n, srv, port)
        turns(holder) -- the number is watched again, by its new owner
        got = H.drain(c1, 8)
        turns(holder)
        leaked = select(3, other:receive(65536))
        holder:close()
        other:close()
        guard.done()
      end)
      loop:run()
      assert.is_false(guard.expired, "sendfile never returned")
      assert.are.equal(0, #leaked, "the new connection received file bytes")
      assert.are.equal("EBADF", res[3], tostring(res[2]))
      assert.are.equal("EBADF: socket closed during the transfer", res[2])
      assert.are.equal(#got, res[4])
      assert.is_true(got == string.rep(DATA, 48):sub(1, #got))
      c1:close()
      srv:close()
      f:close()
    end)

  it("zcsend.loop, the number not reused: sendfile returns EBADF instead of waiting for ever", function()
    local srv, port = H.listen()
    local s1, c1 = pair(srv, port)
    local f = assert(io.open(BIG, "rb"))
    local loop = zcsend.loop()
    local guard = H.guard(loop, 5)
    local res
    loop:wrap(function()
      res = { zcsend.sendfile(s1, f) }
      guard.done()
    end)
    loop:wrap(function() s1:close() end) -- c1 never reads
    loop:run()
    assert.is_false(guard.expired, "sendfile never returned")
    assert.are.same({ nil, "EBADF: socket closed during the transfer", "EBADF" }, { res[1], res[2], res[3] })
    assert.is_true(res[4] > 0)
    local got = H.drain(c1, 5) -- the transfer's dup is closed: EOF after what was sent
    assert.are.equal(res[4], #got)
    c1:close()
    srv:close()
    f:close()
  end)

  it("cqueues: the same, the socket closed by another cqueues coroutine", function()
    local cqueues = require "cqueues"
    local csocket = require "cqueues.socket"
    local srv, port = H.listen(64)
    local lsrv = csocket.listen("127.0.0.1", 0)
    lsrv:listen()
    local _, _, cport = lsrv:localname()
    local c1 = assert(socket.connect("127.0.0.1", cport))
    c1:settimeout(0)
    local f = assert(io.open(BIG, "rb"))
    local cq = cqueues.new()
    local res, leaked, finished, got = nil, nil, false, 0
    local s1 = nil
    cq:wrap(function()
      s1 = assert(lsrv:accept())
      s1:setmode("b", "b")
      res = { zcsend.sendfile(s1, f) }
      finished = true
    end)
    cq:wrap(function()
      while not s1 do
        cqueues.sleep(0.01)
      end
      cqueues.sleep(0.05) -- the transfer fills the buffers and waits
      local m = s1:pollfd()
      s1:close()
      local holder, other = reuse(m, srv, port)
      local deadline = socket.gettime() + 5
      while not finished and socket.gettime() < deadline do
        cqueues.poll({ pollfd = fdof(holder), events = "w" }, 0.01) -- the number is watched again
        local data, _, partial = c1:receive(65536) -- the old peer reads: room to write
        got = got + #(data or partial or "")
      end
      cqueues.sleep(0.05)
      leaked = select(3, other:receive(65536))
      holder:close()
      other:close()
    end)
    local deadline = socket.gettime() + 10
    while not (finished and leaked) and socket.gettime() < deadline do
      assert(cq:step(0.1))
    end
    assert.is_true(finished, "sendfile never returned")
    assert.are.equal(0, #leaked, "the new connection received file bytes")
    assert.are.same({ nil, "EBADF: socket closed during the transfer", "EBADF" }, { res[1], res[2], res[3] })
    c1:settimeout(2)
    repeat
      local data, err, partial = c1:receive(65536)
      got = got + #(data or partial or "")
    until err == "closed"
    assert.are.equal(res[4], got)
    c1:close()
    lsrv:close()
    srv:close()
    f:close()
  end)

  it("cqueues with a luasocket closed by another coroutine (no cqueues.cancel): EBADF, not a cqueues error", function()
    local cqueues = require "cqueues"
    local srv, port = H.listen(64)
    local s1, c1 = pair(srv, port)
    local w, cw = pair(srv, port)
    local f = assert(io.open(BIG, "rb"))
    local cq = cqueues.new()
    local res, waited
    cq:wrap(function() res = { zcsend.sendfile(s1, f) } end)
    cq:wrap(function() waited = { zcsend.wait(w, "r") } end)
    cq:wrap(function()
      cqueues.sleep(0.05)
      s1:close()
      w:close()
    end)
    local deadline = socket.gettime() + 10
    while not (res and waited) and socket.gettime() < deadline do
      assert(cq:step(0.1))
    end
    assert.are.same({ nil, "EBADF: fd closed while waiting", "EBADF" }, waited)
    assert.are.same({ nil, "EBADF: socket closed during the transfer", "EBADF" }, { res[1], res[2], res[3] })
    assert.is_true(res[4] > 0)
    c1:close()
    cw:close()
    srv:close()
    f:close()
  end)

  it("zcsend.transfer stepped by its host: the step after the close says EBADF and sends nothing more", function()
    local srv, port = H.listen(64)
    local s1, c1 = pair(srv, port)
    local n = fdof(s1)
    local f = assert(io.open(BIG, "rb"))
    local t = assert(zcsend.transfer(s1, f))
    assert.are.equal("write", t:step())
    local sent = t:sent()
    s1:close()
    local holder, other = reuse(n, srv, port)
    assert.are.same({ nil, "EBADF: socket closed during the transfer", "EBADF", sent }, { t:step() })
    assert.are.same({ nil, "EBADF: socket closed during the transfer", "EBADF", sent }, { t:result() })
    assert.are.equal(-1, t:pollfd())
    c1:settimeout(1)
    local got = {}
    repeat
      local data, err, partial = c1:receive(65536)
      got[#got + 1] = data or partial
    until err == "closed"
    assert.are.equal(sent, #table.concat(got))
    other:settimeout(0)
    assert.are.same({ nil, "timeout", "" }, { other:receive(1) })
    t:close()
    holder:close()
    other:close()
    c1:close()
    srv:close()
    f:close()
  end)

  it("TLS on zcsend.loop: a connection closed while sendfile waits to write ends with EBADF", function()
    local ssl = require "ssl"
    local crt, key = H.cert()
    local srv, port = H.listen()
    local rd = H.reader(port, H.path("tlsclosed"), 1, { tls = crt, delay = 0.05 })
    local s = assert(srv:accept())
    srv:close()
    local conn = assert(ssl.wrap(s, { mode = "server", protocol = "any", key = key, certificate = crt }))
    assert(conn:dohandshake())
    local f = assert(io.open(BIG, "rb"))
    local loop = zcsend.loop()
    local guard = H.guard(loop, 10)
    local res
    loop:wrap(function()
      res = { zcsend.sendfile(conn, f) }
      guard.done()
    end)
    loop:wrap(function() conn:close() end)
    loop:run()
    assert.is_false(guard.expired, "sendfile never returned")
    assert.are.equal("EBADF", res[3], tostring(res[2]))
    assert.is_true(res[4] > 0)
    H.reader_wait(rd)
    f:close()
  end)

  it("zcsend.wait on zcsend.loop returns EBADF when another coroutine closes the socket", function()
    local srv, port = H.listen()
    local s, c = pair(srv, port)
    local loop = zcsend.loop()
    local guard = H.guard(loop, 5)
    local res
    loop:wrap(function()
      res = { zcsend.wait(s, "r") }
      guard.done()
    end)
    loop:wrap(function() s:close() end)
    loop:run()
    assert.are.same({ nil, "EBADF: fd closed while waiting", "EBADF" }, res)
    c:close()
    srv:close()
  end)

  it("zcsend.wait in cqueues returns EBADF when another coroutine closes the (cqueues) socket", function()
    local cqueues = require "cqueues"
    local csocket = require "cqueues.socket"
    local lsrv = csocket.listen("127.0.0.1", 0)
    lsrv:listen()
    local _, _, cport = lsrv:localname()
    local c = assert(socket.connect("127.0.0.1", cport))
    local cq = cqueues.new()
    local s, res
    cq:wrap(function()
      s = assert(lsrv:accept())
      res = { zcsend.wait(s, "r") }
    end)
    cq:wrap(function()
      while not s do
        cqueues.sleep(0.01)
      end
      cqueues.sleep(0.05)
      s:close()
    end)
    local deadline = socket.gettime() + 5
    while not res and socket.gettime() < deadline do
      assert(cq:step(0.1))
    end
    assert.are.same({ nil, "EBADF: fd closed while waiting", "EBADF" }, res)
    c:close()
    lsrv:close()
  end)
end)

describe("a file fd closed and its number reused before the transfer dups it", function()
  local PUB = H.file("own-public.txt", string.rep("P", 1000))
  local SECRET = H.file("own-secret.txt", string.rep("S", 1000))

  -- the caller's integer fd of PUB (its own, not an io handle's)
  local function public_fd()
    local pub = assert(io.open(PUB, "rb"))
    local fd = core.dup(core.fileno(pub))
    pub:close()
    return fd
  end

  it("cqueues: while sendfile flushes the socket's buffered head (a yield), the file sent is still the one given",
    function()
      local cqueues = require "cqueues"
      local csocket = require "cqueues.socket"
      local HEAD = 8 * 1024 * 1024 -- more than the peer's buffers hold before it reads: the flush yields
      local fd = public_fd()
      local lsrv = csocket.listen("127.0.0.1", 0)
      lsrv:listen()
      local _, _, port = lsrv:localname()
      local cq = cqueues.new()
      local result, flushing, secret = nil, false, nil
      cq:wrap(function() -- the handler
        local c = assert(lsrv:accept())
        c:setmode("b", "b")
        c:setbufsiz(nil, 2 * HEAD)
        assert(c:write(string.rep("h", HEAD))) -- buffered by cqueues: sendfile flushes it first
        flushing = true
        result = { zcsend.sendfile(c, fd, 0, 1000) }
        c:close()
      end)
      local got = {}
      cq:wrap(function() -- elsewhere in the server, then the (slow) peer
        local cl = csocket.connect("127.0.0.1", port)
        cl:setmode("b", "b")
        assert(cl:connect())
        cqueues.sleep(0.2) -- the handler is inside the flush now
        assert.is_true(flushing)
        core.close(fd) -- the fd it was given is closed...
        secret = assert(io.open(SECRET, "rb")) -- ...and its number reused
        assert.are.equal(fd, core.fileno(secret)) -- the setup did what it says
        while true do
          local b = cl:read(-65536)
          if not b then
            break
          end
          got[#got + 1] = b
        end
        cl:close()
      end)
      assert(cq:loop())
      lsrv:close()
      secret:close()
      assert.are.equal(1000, result[1], result[2])
      local all = table.concat(got)
      assert.are.equal(HEAD + 1000, #all)
      assert.is_true(all:sub(HEAD + 1) == string.rep("P", 1000)) -- the file given, none of the other
    end)

  it("loop:sendfile: EBADF, nothing sent, where the caller closed the file before the socket turned writable",
    function()
      local srv, port = H.listen(64)
      local s, c = pair(srv, port)
      srv:close()
      local fd = public_fd()
      local loop = zcsend.loop()
      local res
      loop:sendfile(s, fd, 0, 1000, function(...) res = { ... } end)
      core.close(fd) -- the caller is done with its fd...
      local secret = assert(io.open(SECRET, "rb")) -- ...and the number is reused by another file
      assert.are.equal(fd, core.fileno(secret))
      loop:run()
      secret:close()
      assert.are.same({ nil, "EBADF: file closed before the socket turned writable", "EBADF", 0 }, res)
      c:settimeout(0.2)
      local got, err, partial = c:receive(1)
      assert.is_nil(got) -- none of the other file's bytes
      assert.are.equal("timeout", err)
      assert.are.equal("", partial)
      s:close()
      c:close()
    end)
end)

describe("runtime failures are nil, 'ENAME: message', 'ENAME', bytes_sent", function()
  it("from zcsend.transfer, its steps and loop:sendfile's callback", function()
    local srv, port = H.listen()
    local s, c = pair(srv, port)
    local d = assert(io.open(H.tmp, "rb"))
    assert.are.same({ nil, "EISDIR: Is a directory", "EISDIR", 0 }, { zcsend.transfer(s, d) })
    d:close()
    local f = assert(io.open(BIG, "rb"))
    local unused = 0
    while core.fdid(unused) do
      unused = unused + 1
    end
    assert.are.same({ nil, "EBADF: Bad file descriptor", "EBADF", 0 }, { zcsend.sendfile(unused, f) })
    assert.are.same({ nil, "EBADF: Bad file descriptor", "EBADF" }, { zcsend.wait(unused, "w") })
    local t = assert(zcsend.transfer(s, f))
    assert.are.equal("write", t:step())
    c:setoption("linger", { on = true, timeout = 0 })
    c:close() -- a reset
    local r
    repeat
      r = { t:step() }
      if r[1] == "write" then
        core.poll(t:pollfd(), t:events(), 1)
      end
    until r[1] ~= "write"
    assert.is_nil(r[1])
    assert.is_true(r[3] == "EPIPE" or r[3] == "ECONNRESET", r[2])
    assert.are.equal(r[3] .. ": ", r[2]:sub(1, #r[3] + 2))
    assert.are.equal(t:sent(), r[4])
    t:close()
    s:close()
    local loop = zcsend.loop()
    local s2, c2 = pair(srv, port)
    local got
    local g = assert(io.open(BIG, "rb"))
    loop:sendfile(s2, g, 0, nil, function(...) got = { ... } end)
    loop:wrap(function() s2:close() end)
    loop:run()
    assert.are.same({ nil, "EBADF: fd closed while waiting", "EBADF", 0 }, got)
    g:close()
    f:close()
    c2:close()
    srv:close()
  end)
end)

describe("a coroutine its host drops mid-wait (never resumed)", function()
  after_each(function()
    zcsend.set_waiter(nil)
  end)

  -- fn() in a coroutine whose waiter never returns (its scheduler dropped it):
  -- once collected, every fd the call held is closed
  local function dropped(fn)
    local fds = H.fd_baseline()
    local waits = 0
    zcsend.set_waiter(function()
      waits = waits + 1
      coroutine.yield() -- never resumed
    end)
    local co = coroutine.create(fn)
    assert(coroutine.resume(co))
    assert.are.equal("suspended", coroutine.status(co))
    assert.is_true(waits > 0)
    co = nil -- luacheck: ignore
    return fds
  end

  it("at a TLS object's wait to write: its dup of the socket goes with it", function()
    local srv, port = H.listen()
    local s, c = pair(srv, port)
    srv:close()
    s:settimeout(0)
    local f = assert(io.open(H.file("dropped-tls.bin", H.bytes(8 * H.MiB, 5)), "rb"))
    local fds = dropped(function()
      zcsend.sendfile(H.tls_like(s), f)
    end)
    assert.are.equal(fds, H.fd_baseline())
    f:close()
    s:close()
    c:close()
  end)

  it("in zcsend.wait: its dup of the socket goes with it", function()
    local srv, port = H.listen()
    local s, c = pair(srv, port)
    srv:close()
    local fds = dropped(function() zcsend.wait(s, "r") end)
    assert.are.equal(fds, H.fd_baseline())
    s:close()
    c:close()
  end)
end)
