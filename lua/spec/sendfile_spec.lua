-- zcsend.sendfile from Lua 5.4: blocking, on zcsend's loop, in cqueues, over TLS.
local H = require "helper"
local zcsend = require "zcsend"
local socket = require "socket"

local SIZE = 8 * 1024 * 1024 + 12345
local DATA = H.bytes(SIZE, 7)
local PATH = H.file("data.bin", DATA)
local EMULATED = zcsend.backend() == "emulated"

teardown(H.cleanup)

-- one connection from a reader process; returns the server-side socket and the reader
local function connect(opts)
  local srv, port = H.listen()
  local out = H.path("out" .. math.random(1e9))
  local rd = H.reader(port, out, 1, opts)
  local s = assert(srv:accept())
  srv:close()
  return s, rd, out .. ".1"
end

describe("zcsend.sendfile, blocking (no coroutine host)", function()
  it("sends a whole file, every byte", function()
    local s, rd, out = connect()
    local f = assert(io.open(PATH, "rb"))
    local before = zcsend.stats()
    assert.are.equal(SIZE, zcsend.sendfile(s, f))
    s:close()
    assert.are.equal("done", H.reader_wait(rd))
    assert.is_true(H.read_file(out) == DATA)
    local after = zcsend.stats()
    local zc = after.bytes_zero_copy - before.bytes_zero_copy
    assert.are.equal(EMULATED and 0 or SIZE, zc)
    assert.are.equal(1, after.completed - before.completed)
    f:close()
  end)

  for _, case in ipairs({ { 0, 1 }, { 1, nil }, { 4095, 4097 }, { H.MiB, 3 * H.MiB }, { 123457, nil },
    { 0, SIZE }, { SIZE - 1, 1 } }) do
    local offset, count = case[1], case[2]
    it(("offset %d, count %s"):format(offset, tostring(count)), function()
      local want = DATA:sub(offset + 1, count and offset + count or nil)
      local s, rd, out = connect()
      local f = assert(io.open(PATH, "rb"))
      assert.are.equal(#want, zcsend.sendfile(s, f, offset, count))
      s:close()
      H.reader_wait(rd)
      assert.is_true(H.read_file(out) == want)
      f:close()
    end)
  end

  it("sends a small cached file as the transfer is made (start), and only when asked", function()
    local core = require "zcsend.core"
    local small = H.file("small.bin", DATA:sub(1, 5000))
    local f = assert(io.open(small, "rb"))
    assert(f:read("a"))
    for _, start in ipairs({ false, true }) do
      local s, rd, out = connect()
      local before = zcsend.stats()
      local t = assert(core.transfer(H.int(s:getfd()), core.fileno(f), 10, 4000, start))
      -- start: read and sent in the call (on the emulated backend as a transfer would);
      -- without it nothing moves before a step
      assert.are.equal((start and not EMULATED) and 4000 or 0, t:sent())
      assert.are.equal((start and not EMULATED) and 1 or 0, zcsend.stats().completed - before.completed)
      assert.are.equal("done", t:step())
      assert.are.equal(4000, t:sent())
      t:close()
      s:close()
      H.reader_wait(rd)
      assert.is_true(H.read_file(out) == DATA:sub(11, 4010))
    end
    -- a count past the file's end: ETRUNCATED before a byte, as without start
    local s, rd = connect()
    local t, msg, name, sent = core.transfer(H.int(s:getfd()), core.fileno(f), 10, 6000, true)
    assert.is_nil(t)
    assert.are.equal("ETRUNCATED", name)
    assert.are.equal(0, sent)
    s:close()
    H.reader_wait(rd)
    f:close()
  end)

  it("takes an integer fd for the socket and for the file", function()
    local s, rd, out = connect()
    local f = assert(io.open(PATH, "rb"))
    local fd = H.int(s:getfd())
    assert.are.equal(1000, zcsend.sendfile(fd, require("zcsend.core").fileno(f), 10, 1000))
    s:close()
    H.reader_wait(rd)
    assert.is_true(H.read_file(out) == DATA:sub(11, 1010))
    f:close()
  end)

  it("takes a luasocket Unix stream socket", function()
    local unix = require "socket.unix"
    local path = H.path("unix.sock")
    local srv = assert(unix.stream and unix.stream() or unix())
    assert(srv:bind(path))
    assert(srv:listen(1))
    local c = assert(unix.stream and unix.stream() or unix())
    assert(c:connect(path))
    local s = assert(srv:accept())
    local f = assert(io.open(PATH, "rb"))
    assert.are.equal(100000, zcsend.sendfile(s, f, 77, 100000)) -- fits the socket buffer
    assert.is_true(c:receive(100000) == DATA:sub(78, 100077))
    s:close()
    c:close()
    srv:close()
    f:close()
  end)

  it("sends a pipe to its end", function()
    local s, rd, out = connect()
    local p = assert(io.popen("head -c 3000000 " .. PATH, "r"))
    assert.are.equal(3000000, zcsend.sendfile(s, p))
    p:close()
    s:close()
    H.reader_wait(rd)
    assert.is_true(H.read_file(out) == DATA:sub(1, 3000000))
  end)
end)

describe("bad input", function()
  local s, rd
  before_each(function()
    s, rd = connect()
  end)
  after_each(function()
    s:close()
    H.reader_wait(rd)
  end)

  it("raises for a pipe's handle holding bytes it read ahead", function()
    -- its stdio buffer holds the pipe's next bytes: sent from the fd they
    -- were skipped, and the peer got a stream with a hole
    local p = assert(io.popen("printf 'line\\nrest of the stream'", "r"))
    assert.are.equal("line", p:read("l"))
    assert.has_error(function() zcsend.sendfile(s, p) end,
      "bad argument #2 to 'sendfile' (the handle holds 18 bytes of its pipe read ahead"
      .. " (it was read from): pass a handle not read from, or an fd)")
    assert.are.equal("rest of the stream", p:read("a"))
    p:close()
  end)

  it("refuses an offset on a pipe (ESPIPE), reading nothing", function()
    -- it was ignored: the stream's first bytes went as the ones asked for
    local p = assert(io.popen("printf 0123456789", "r"))
    local sent, msg, name, n = zcsend.sendfile(s, p, 5, 3)
    assert.is_nil(sent)
    assert.are.equal("ESPIPE", name)
    assert.are.equal(0, n)
    assert.is_truthy(msg:find("ESPIPE", 1, true), msg)
    assert.are.equal("0123456789", p:read("a"))
    p:close()
  end)

  it("raises for a closed file handle", function()
    local f = assert(io.open(PATH, "rb"))
    f:close()
    assert.has_error(function() zcsend.sendfile(s, f) end,
      "bad argument #2 to 'sendfile' (attempt to use a closed file)")
  end)

  it("raises for a closed socket", function()
    local c = socket.tcp()
    c:close()
    local f = assert(io.open(PATH, "rb"))
    assert.has_error(function() zcsend.sendfile(c, f) end, "bad argument #1 to 'sendfile' (closed socket)")
    f:close()
  end)

  it("raises for what is no socket or file", function()
    local f = assert(io.open(PATH, "rb"))
    assert.has_error(function() zcsend.sendfile("x", f) end,
      "bad argument #1 to 'sendfile' (socket, fd or object with getfd() expected, got string)")
    assert.has_error(function() zcsend.sendfile(s, "x") end,
      "bad argument #2 to 'sendfile' (file handle or fd expected, got string)")
    assert.has_error(function() zcsend.sendfile(s, f, -1) end,
      "bad argument #3 to 'sendfile' (offset must be non-negative)")
    assert.has_error(function() zcsend.sendfile(s, f, 1.5) end,
      "bad argument #3 to 'sendfile' (offset must be an integer)")
    assert.has_error(function() zcsend.sendfile(s, f, 0, 0) end,
      "bad argument #4 to 'sendfile' (count must be positive)")
    f:close()
  end)

  it("returns EISDIR for a directory", function()
    local d = assert(io.open(H.tmp, "rb"))
    local n, msg, name, sent = zcsend.sendfile(s, d)
    assert.are.same({ nil, "EISDIR: Is a directory", "EISDIR", 0 }, { n, msg, name, sent })
    d:close()
  end)

  it("returns 0 for an offset past the end", function()
    local f = assert(io.open(PATH, "rb"))
    assert.are.equal(0, zcsend.sendfile(s, f, SIZE + 10))
    f:close()
  end)

  -- a count is what the caller promised its peer (a Content-Length): one the
  -- file can't cover fails before a byte goes out, never a short success
  for _, case in ipairs({ { 0, SIZE + 1 }, { SIZE - 5, 6 }, { SIZE + 10, 1 }, { 0, 100 * H.MiB } }) do
    it(("refuses a count past the end (offset %d, count %d): ETRUNCATED, 0 sent"):format(case[1], case[2]),
      function()
        local c, rd, out = connect()
        local f = assert(io.open(PATH, "rb"))
        local before = zcsend.stats()
        assert.are.same({ nil, "ETRUNCATED: file ended before the requested byte count was sent", "ETRUNCATED", 0 },
          { zcsend.sendfile(c, f, case[1], case[2]) })
        assert.are.equal(before.started, zcsend.stats().started)
        c:close()
        H.reader_wait(rd)
        assert.are.equal("", H.read_file(out)) -- not a byte
        f:close()
      end)
  end
end)

describe("failures mid-transfer", function()
  it("a peer that closes gives EPIPE/ECONNRESET with the bytes sent, and no SIGPIPE", function()
    local s, rd = connect({ close_after = H.MiB })
    local f = assert(io.open(PATH, "rb"))
    local big = H.file("big.bin", string.rep(DATA, 8))
    local g = assert(io.open(big, "rb"))
    local n, msg, name, sent = zcsend.sendfile(s, g)
    assert.is_nil(n)
    assert.is_true(name == "EPIPE" or name == "ECONNRESET", msg)
    assert.are.equal(name .. ": ", msg:sub(1, #name + 2))
    assert.is_true(sent >= H.MiB and sent < 8 * SIZE)
    H.reader_wait(rd)
    s:close()
    f:close()
    g:close()
  end)

  it("never kill the interpreter with SIGPIPE nor change its signal handling (no luasocket loaded)", function()
    local big = H.file("sigpipe.bin", string.rep(DATA, 4))
    local p = io.popen(("%s spec/sigpipe_child.lua %s"):format(H.LUA, big))
    local line = p:read("a")
    local ok, how, code = p:close()
    assert.is_true(ok) -- a death by signal is no success
    if how then -- Lua 5.2+ says how it ended; LuaJIT's close() only whether it succeeded
      assert.are.same({ "exit", 0 }, { how, code })
    end
    local n, name, sent, same = line:match("^(%S+)\t(%S+)\t(%d+)\t(%S+)")
    assert.are.equal("nil", n)
    assert.are.equal("EPIPE", name)
    assert.is_true(tonumber(sent) >= 100000)
    assert.are.equal("true", same)
  end)

  it("a file that shrinks mid-transfer gives ETRUNCATED with the bytes sent", function()
    local s, rd = connect({ delay = 0.002 })
    local p = H.file("shrinks.bin", DATA)
    local f = assert(io.open(p, "rb"))
    local t = assert(zcsend.transfer(s, f))
    assert.are.equal("write", t:step()) -- the budget (2 MiB) or a full socket ends the step
    assert(os.execute("truncate -s 6000000 " .. p))
    local r, msg, name
    repeat
      r, msg, name = t:step()
      if r == "write" then
        require("zcsend.core").poll(t:pollfd(), t:events())
      end
    until r ~= "write"
    assert.is_nil(r)
    assert.are.equal("ETRUNCATED", name)
    assert.are.equal("ETRUNCATED: file ended before the requested byte count was sent", msg)
    assert.are.equal(6000000, t:sent()) -- the first step moved at most its 2 MiB budget
    t:close()
    s:close()
    H.reader_wait(rd)
    f:close()
  end)
end)

describe("zcsend.transfer (pollable)", function()
  it("steps to the end, waiting on what each step asks for", function()
    local s, rd, out = connect()
    local f = assert(io.open(PATH, "rb"))
    local t = assert(zcsend.transfer(s, f, 5))
    local core = require "zcsend.core"
    assert.are.equal(0.1, t:timeout()) -- steps again meanwhile: it checks the socket is still s
    local waits = 0
    while true do
      local r = assert(t:step())
      if r == "done" then
        break
      end
      assert.are.equal("w", t:events())
      assert.are.equal(H.int(s:getfd()), t:pollfd()) -- the caller's fd (it writes to its own dup)
      core.poll(t:pollfd(), t:events())
      waits = waits + 1
    end
    assert.is_true(t:done())
    assert.is_true(t:result())
    assert.is_nil(t:timeout())
    assert.are.equal(-1, t:pollfd())
    assert.are.equal(SIZE - 5, t:sent())
    t:close()
    s:close()
    H.reader_wait(rd)
    assert.is_true(H.read_file(out) == DATA:sub(6))
    f:close()
  end)
end)
