-- Other hosts and peers: cqueues, luasec TLS.
local H = require "helper"
local zcsend = require "zcsend"

local SIZE = 4 * 1024 * 1024 + 333
local DATA = H.bytes(SIZE, 13)
local PATH = H.file("hosts.bin", DATA)

teardown(H.cleanup)

describe("a cqueues-hosted server", function()
  local cqueues = require "cqueues"
  local csocket = require "cqueues.socket"

  it("serves concurrent transfers from cqueues coroutines (cqueues.poll on the transfer)", function()
    local N = 20
    local srv = csocket.listen("127.0.0.1", 0)
    srv:listen()
    local _, _, port = srv:localname()
    local out = H.path("cq")
    local rd = H.reader(port, out, N, { delay = 0.001 })
    local cq = cqueues.new()
    local f = assert(io.open(PATH, "rb"))
    local results, polls = {}, 0
    cq:wrap(function()
      for i = 1, N do
        local c = assert(srv:accept())
        c:setmode("b", "b")
        cq:wrap(function()
          c:write(("%08d"):format(i)) -- buffered by cqueues: zcsend flushes it first
          results[i] = { zcsend.sendfile(c, f, i * 1000, 1000000 + i) }
          c:close()
        end)
      end
    end)
    -- zcsend must wait through cqueues.poll, and the controller interleave
    local poll, waits = cqueues.poll, 0
    cqueues.poll = function(...)
      waits = waits + 1
      return poll(...)
    end
    cq:wrap(function()
      while #results < N do
        polls = polls + 1
        cqueues.sleep(0.001)
      end
    end)
    local ok, err = cq:loop()
    cqueues.poll = poll
    assert(ok, err)
    srv:close()
    H.reader_wait(rd)
    for i = 1, N do
      assert.are.same({ 1000000 + i }, results[i])
      local got = H.read_file(out .. "." .. i)
      local id = tonumber(got:sub(1, 8))
      assert.is_true(got:sub(9) == DATA:sub(id * 1000 + 1, id * 1000 + 1000000 + id), "connection " .. i)
    end
    assert.is_true(polls > 1)
    assert.is_true(waits > 0, "zcsend never waited through cqueues.poll")
    f:close()
  end)
end)

describe("cqueues sockets and TLS", function()
  local cqueues = require "cqueues"
  local csocket = require "cqueues.socket"

  -- fn(a, b) on a connected cqueues pair, in a controller
  local function on_pair(fn)
    local cq = cqueues.new()
    local res
    cq:wrap(function()
      local a, b = csocket.pair()
      res = { fn(a, b) }
      a:close()
      b:close()
    end)
    assert(cq:loop())
    return table.unpack(res)
  end

  -- sendfile(a, f, ...) from one coroutine over TLS on a cqueues pair (a in
  -- its default text mode), the peer reading want bytes as they are (or until
  -- an error) in another; with stop, once stop.at bytes arrived the peer goes
  -- away (stop.close "peer": a reset, as the sender sees it) or closes the
  -- sender's socket under it ("sender"). sendfile's results, then what arrived.
  local function over_tls(f, want, stop, ...)
    local args = table.pack(...)
    local server, client = H.cqueues_tls_contexts()
    local cq = cqueues.new()
    local a, b = csocket.pair()
    local res, got = nil, {}
    cq:wrap(function()
      assert(a:starttls(server, 5))
      a:write("HEAD:") -- buffered by cqueues (no newline: line mode keeps it): goes first, through TLS too
      res = table.pack(zcsend.sendfile(a, f, table.unpack(args, 1, args.n)))
      pcall(a.flush, a, 5) -- (raises where it was closed under us)
      a:close()
    end)
    cq:wrap(function()
      assert(b:starttls(client, 5))
      b:setmode("b", "b") -- as any other client reads: a text-mode sender's \r\n stays
      local n = 0
      while n < want do
        local data = b:xread(-65536, nil, 5)
        if not data then
          break
        end
        got[#got + 1] = data
        n = n + #data
        if stop and n >= stop.at then
          if stop.close == "sender" then
            a:close()
          end
          break
        end
      end
      b:close()
    end)
    assert(cq:loop())
    return res, table.concat(got)
  end

  it("a socket with TLS started gets the file through its own send(), byte-exact, waiting the host's way", function()
    local size = 3 * H.MiB + 5
    local data = ("line\n"):rep(1000) .. H.bytes(size - 5000, 17) -- (in text mode each \n went as \r\n)
    local f = assert(io.open(H.file("cq-tls.bin", data), "rb"))
    local polls, poll = 0, cqueues.poll
    cqueues.poll = function(...)
      polls = polls + 1
      return poll(...)
    end
    local res, got = over_tls(f, size + 5)
    cqueues.poll = poll
    assert.are.equal(size, res[1], res[2])
    assert.are.equal(#data + 5, #got)
    assert.is_true(got == "HEAD:" .. data, "not the file's bytes")
    assert.is_true(polls > 0) -- its buffer filled: zcsend waited through cqueues
    local res2, got2 = over_tls(f, 1000 + 5, nil, 5000, 1000) -- a range
    assert.are.equal(1000, res2[1], res2[2])
    assert.is_true(got2 == "HEAD:" .. data:sub(5001, 6000))
    f:close()
  end)

  it("a TLS socket whose peer goes away: an error with the bytes that left its buffer, never success", function()
    local size = 8 * H.MiB
    local f = assert(io.open(H.file("cq-tls-reset.bin", H.bytes(size, 18)), "rb"))
    local res, got = over_tls(f, size, { at = 256 * 1024, close = "peer" })
    assert.is_nil(res[1])
    assert.is_true(res[3] == "EPIPE" or res[3] == "ECONNRESET", tostring(res[2]))
    assert.is_true(res[4] < size and res[4] >= #got - 5, ("%d sent, %d arrived"):format(res[4], #got))
    -- closed under it by another coroutine: EBADF, never success
    res, got = over_tls(f, size, { at = 256 * 1024, close = "sender" })
    f:close()
    assert.is_nil(res[1])
    assert.are.equal("EBADF", res[3], res[2])
    assert.is_true(res[4] < size and res[4] >= #got - 5, ("%d sent, %d arrived"):format(res[4], #got))
  end)

  it("a TLS send that times out: the peer gets exactly the bytes counted; the socket's writes fail, its reads flush none",
    function()
    local size = 8 * H.MiB
    local data = H.bytes(size, 23)
    local f = assert(io.open(H.file("cq-tls-timeout.bin", data), "rb"))
    local server, client = H.cqueues_tls_contexts()
    local cq = cqueues.new()
    local a, b = csocket.pair()
    local r1, later, go, got = nil, nil, false, {}
    cq:wrap(function()
      assert(a:starttls(server, 5))
      r1 = table.pack(zcsend.sendfile(a, f, 0, nil, { timeout = 0.3 })) -- the peer isn't reading yet
      -- what the socket's buffer still holds of the file would go out first
      -- here, after the caller resumed from r1[4]: instead the write fails
      go = true -- (the peer reads from now on)
      a:xread("*l", 0.3) -- a read flushes the output buffer first (autoflush): not the rest of the chunk
      later = table.pack(a:xwrite(data:sub(r1[4] + 1, r1[4] + 100), "bn", 5))
      a:close()
    end)
    cq:wrap(function()
      assert(b:starttls(client, 5))
      b:setmode("b", "b")
      while not go do
        cqueues.sleep(0.05)
      end
      while true do
        local d = b:xread(-65536, "b", 5)
        if not d then
          break
        end
        got[#got + 1] = d
      end
      b:close()
    end)
    assert(cq:loop())
    f:close()
    got = table.concat(got)
    assert.is_nil(r1[1])
    assert.are.equal("ETIMEDOUT", r1[3], r1[2])
    assert.truthy(r1[2]:find("its writes now fail", 1, true), r1[2])
    assert.is_nil(later[1]) -- refused, not queued behind the rest of the chunk
    assert.are.equal(r1[4], #got) -- exactly what was counted: no more, no less
    assert.is_true(got == data:sub(1, #got))
  end)

  it("an object whose checktls() can't tell (cqueues without luaossl) is refused, never sent plaintext", function()
    local f = assert(io.open(H.file("cq-unknown.bin", "x"), "rb"))
    local srv, port = H.listen()
    local c = assert(require("socket").connect("127.0.0.1", port))
    local s = assert(srv:accept())
    srv:close()
    local unknown = {
      pollfd = function() return H.int(s:getfd()) end,
      checktls = function() return nil, "module 'openssl.ssl' not found" end,
    }
    local ok, msg = zcsend.istls(unknown)
    assert.is_nil(ok)
    assert.truthy(msg:find("can't tell", 1, true))
    assert.is_true(zcsend.wait(unknown, "w", 1)) -- a wait sends nothing: no refusal
    local n, emsg, name, sent = zcsend.sendfile(unknown, f)
    assert.is_nil(n)
    assert.are.equal("EOPNOTSUPP", name, emsg)
    assert.are.equal(0, sent)
    local loop, res = zcsend.loop(), nil
    loop:sendfile(unknown, f, 0, nil, function(...) res = { ... } end)
    assert.is_nil(res) -- said from run(), not from the call
    assert.is_true(loop:run())
    assert.are.same({ nil, emsg, "EOPNOTSUPP", 0 }, res)
    c:settimeout(0.1)
    assert.is_nil((c:receive(1)))
    f:close()
    s:close()
    c:close()
  end)
end)

describe("luasec TLS connections", function()
  local ssl = require "ssl"
  local crt, key = H.cert()

  local function tls_pair(opts)
    local srv, port = H.listen()
    local out = H.path("tls" .. math.random(1e9))
    opts = opts or {}
    opts.tls = crt
    local rd = H.reader(port, out, 1, opts)
    local s = assert(srv:accept())
    srv:close()
    local conn = assert(ssl.wrap(s, { mode = "server", protocol = "any", key = key, certificate = crt }))
    assert(conn:dohandshake())
    return conn, rd, out .. ".1"
  end

  it("never get plaintext: chunked through the connection's own send()", function()
    local conn, rd, out = tls_pair()
    local f = assert(io.open(PATH, "rb"))
    local before = zcsend.stats()
    assert.is_true(zcsend.istls(conn))
    assert.are.equal(SIZE - 10, zcsend.sendfile(conn, f, 10))
    local after = zcsend.stats()
    assert.are.equal(0, after.bytes_zero_copy - before.bytes_zero_copy)
    assert.are.equal(SIZE - 10, after.bytes_fallback - before.bytes_fallback)
    conn:close()
    H.reader_wait(rd)
    assert.is_true(H.read_file(out) == DATA:sub(11))
    f:close()
  end)

  it("send on zcsend's loop, yielding on wantwrite", function()
    local conn, rd, out = tls_pair({ delay = 0.001 })
    local f = assert(io.open(PATH, "rb"))
    local loop = zcsend.loop()
    local got
    loop:sendfile(conn, f, 0, 3000000, function(...) got = { ... } end)
    assert.is_true(loop:run())
    assert.are.same({ 3000000 }, got)
    conn:close()
    H.reader_wait(rd)
    assert.is_true(H.read_file(out) == DATA:sub(1, 3000000))
    f:close()
  end)

  it("report a peer that goes away, with the bytes sent", function()
    local conn, rd = tls_pair({ close_after = 100000 })
    local big = H.file("tlsbig.bin", string.rep(DATA, 4))
    local f = assert(io.open(big, "rb"))
    local n, msg, name, sent = zcsend.sendfile(conn, f)
    assert.is_nil(n)
    assert.are.equal("EPIPE", name)
    assert.is_truthy(msg:find("^EPIPE: TLS send failed"))
    assert.is_true(sent >= 100000 and sent < 4 * SIZE)
    conn:close()
    H.reader_wait(rd)
    f:close()
  end)

  it("refuse a count past the file's end before a byte goes out", function()
    local conn, rd, out = tls_pair()
    local f = assert(io.open(PATH, "rb"))
    assert.are.same({ nil, "ETRUNCATED: file ended before the requested byte count was sent", "ETRUNCATED", 0 },
      { zcsend.sendfile(conn, f, 10, SIZE) })
    assert.are.equal(SIZE - 10, zcsend.sendfile(conn, f, 10, SIZE - 10)) -- the same connection goes on
    conn:close()
    H.reader_wait(rd)
    assert.is_true(H.read_file(out) == DATA:sub(11))
    f:close()
  end)

  it("can't be stepped as a plain transfer", function()
    local conn, rd = tls_pair()
    local f = assert(io.open(PATH, "rb"))
    assert.has_error(function() zcsend.transfer(conn, f) end,
      "bad argument #1 to 'transfer' (TLS objects can't be stepped: use zcsend.sendfile)")
    conn:close()
    H.reader_wait(rd)
    f:close()
  end)

  it("objects marked zcsend_tls take the same path", function()
    local srv, port = H.listen()
    local rd = H.reader(port, H.path("marked"), 1)
    local s = assert(srv:accept())
    srv:close()
    local sent_through = 0
    local wrapper = setmetatable({ zcsend_tls = true }, { __index = {
      getfd = function() return s:getfd() end,
      send = function(_, data, i) sent_through = sent_through + #data - (i or 1) + 1; return s:send(data, i) end,
    } })
    local f = assert(io.open(PATH, "rb"))
    assert.are.equal(1000, zcsend.sendfile(wrapper, f, 0, 1000))
    assert.are.equal(1000, sent_through)
    s:close()
    H.reader_wait(rd)
    f:close()
  end)

  -- the write path's chunk source (the core's): a wrapper object stands for TLS
  local function marked(on_send)
    local srv, port = H.listen()
    local out = H.path("marked" .. math.random(1e9))
    local rd = H.reader(port, out, 1)
    local s = assert(srv:accept())
    srv:close()
    local through = { n = 0 }
    local wrapper = setmetatable({ zcsend_tls = true }, { __index = {
      getfd = function() return s:getfd() end,
      send = function(_, data, i)
        if on_send then on_send(through.n) end
        through.n = through.n + #data - (i or 1) + 1
        return s:send(data, i)
      end,
    } })
    return wrapper, function() s:close(); H.reader_wait(rd); return H.read_file(out .. ".1") end, through
  end

  it("a file that shrinks mid-transfer: its bytes, then ETRUNCATED, counted failed", function()
    local small = string.rep(DATA:sub(1, 100000), 4)
    local path = H.file("shrinks.bin", small)
    local wrapper, finish = marked(function(n)
      if n == 0 then -- after the first chunk was read: keep 200000 bytes
        local w = assert(io.open(path, "wb"))
        w:write(small:sub(1, 200000))
        w:close()
      end
    end)
    local f = assert(io.open(path, "rb"))
    local before = zcsend.stats()
    local n, msg, name, sent = zcsend.sendfile(wrapper, f)
    local after = zcsend.stats()
    assert.are.same({ nil, "ETRUNCATED: file ended before the requested byte count was sent", "ETRUNCATED", 200000 },
      { n, msg, name, sent })
    assert.are.equal(1, after.started - before.started)
    assert.are.equal(1, after.failed - before.failed)
    assert.are.equal(before.active, after.active)
    assert.are.equal(200000, after.bytes_fallback - before.bytes_fallback)
    assert.is_true(finish() == small:sub(1, 200000))
    f:close()
  end)

  it("a pipe source: read where it stands, until the count or its end", function()
    local wrapper, finish = marked()
    local p = assert(io.popen("head -c 300000 /dev/zero", "r"))
    assert.are.equal(1000, zcsend.sendfile(wrapper, p, 0, 1000))
    assert.are.equal(299000, zcsend.sendfile(wrapper, p))
    p:close()
    assert.are.equal(300000, #finish())
  end)

  it("a host's send that raises: the transfer counts as cancelled at once", function()
    local wrapper, finish = marked(function(n)
      if n > 0 then error("the host gave up", 0) end
    end)
    local f = assert(io.open(PATH, "rb"))
    local before = zcsend.stats()
    assert.has_error(function() zcsend.sendfile(wrapper, f) end, "the host gave up")
    local after = zcsend.stats()
    assert.are.equal(1, after.cancelled - before.cancelled)
    assert.are.equal(before.active, after.active)
    finish()
    f:close()
  end)
end)
