-- zcsend in a real Tarantool (2.6, LuaJIT): the adapter (zcsend/tarantool.lua)
-- in tarantool processes, and the example file server
-- (examples/tarantool_fileserver.lua) driven with curl.
--
--   cd lua && make -s && make -s LUA=luajit && busted --lua=lua5.4 -o utfTerminal hostspec/tarantool_spec.lua
--
-- Needs `tarantool` (TARANTOOL=path to use another) and curl; every process
-- started here ends by itself (timeouts, lifetimes) and is stopped by its pid.
package.path = "./spec/?.lua;./hostspec/?.lua;" .. package.path
local H = require "helper"
local C = require "common"
local socket = require "socket"

local TNT = os.getenv("TARANTOOL") or "tarantool"
local LUA_DIR = C.LUA_DIR
local CORE = LUA_DIR .. "/build-luajit/zcsend/core.so"
local EXAMPLE = LUA_DIR .. "/examples/tarantool_fileserver.lua"
local MiB = H.MiB
local sh, curl, wait_for = C.sh, C.curl, C.wait_for

-- the files served and sent
local BIG = H.bytes(64 * MiB, 7)
local MID = H.bytes(3 * MiB + 17, 8)
local ONE = H.bytes(MiB, 9)
local SMALL = "hello, tarantool\n"
local ROOT = C.write_files(H.path("root"), {
  ["big.bin"] = BIG, ["mid.bin"] = MID, ["one.bin"] = ONE, ["small.txt"] = SMALL, empty = "",
})
assert(os.execute("mkdir -p " .. ROOT .. "/dir"))

teardown(H.cleanup)

-- ---- Tarantool scripts run in-process --------------------------------------------
-- Each script gets this prelude; R(key, ...) prints "key=v1|v2|..." (tostring of
-- every value), and the spec compares those strings exactly.
local PRELUDE = [==[
package.path = LUA_DIR .. "/?.lua;" .. package.path
package.cpath = LUA_DIR .. "/build-luajit/?.so;" .. package.cpath
local zcsend = require "zcsend"
local core = require "zcsend.core"
local socket = require "socket"
local fiber = require "fiber"
local fio = require "fio"
]==] .. C.R .. [==[
-- a listening Tarantool socket whose handler is handler(c), and its port
local function server(handler)
  local s = assert(socket.tcp_server("127.0.0.1", 0, handler))
  return s, s:name().port
end
local function connect(port)
  return assert(socket.tcp_connect("127.0.0.1", port))
end
-- reads exactly n bytes from a Tarantool socket (timeout s): the string or nil
local function readn(c, n, timeout)
  local parts, got = {}, 0
  while got < n do
    local d = c:read(math.min(n - got, 65536), timeout or 10)
    if not d or d == "" then
      return nil, got
    end
    parts[#parts + 1] = d
    got = got + #d
  end
  return table.concat(parts)
end
-- the data field (generation << 32 | fd) of each entry of the epoll sets of
-- this process, by "epollfd:tfd:inode" (libev bumps an fd's generation each
-- time it registers it again: a rebuild of its set bumps all of them), and the
-- number of entries whose fd no longer names the file they were added for
local function epoll_entries()
  local entries, stale = {}, 0
  for _, name in ipairs(fio.listdir("/proc/self/fd")) do
    if fio.readlink("/proc/self/fd/" .. name) == "anon_inode:[eventpoll]" then
      local fh = io.open("/proc/self/fdinfo/" .. name)
      local info = fh and fh:read("*a") or ""
      if fh then
        fh:close()
      end
      for tfd, data, ino in info:gmatch("tfd:%s*(%d+)%s+events:%s*%x+%s+data:%s*(%x+)%s+pos:%d+%s+ino:(%x+)") do
        entries[name .. ":" .. tfd .. ":" .. ino] = tonumber(data:sub(1, -9), 16) or 0
        local st = fio.stat("/proc/self/fd/" .. tfd)
        if not st or st.inode ~= tonumber(ino, 16) then
          stale = stale + 1
        end
      end
    end
  end
  return entries, stale
end
-- how many entries present in both a and b had their generation bumped, and
-- how many were in both (none: a rebuilt set under a new epoll fd)
local function bumped(a, b)
  local n, common = 0, 0
  for k, g in pairs(a) do
    if b[k] then
      common = common + 1
      if b[k] ~= g then
        n = n + 1
      end
    end
  end
  return n, common
end
local function fdcount()
  return #fio.listdir("/proc/self/fd")
end
local A = require "zcsend.tarantool"
]==]

local nscript = 0
-- runs code in a tarantool process (killed after `limit` s); asserts it got
-- to its end and returns the R() results by key
local function tarantool(code, limit, args)
  nscript = nscript + 1
  local text = ("local LUA_DIR = %q\nlocal ROOT = %q\n"):format(LUA_DIR, ROOT) .. PRELUDE .. code
    .. "\nR('end', 'ok')\nos.exit(0)\n"
  return C.run_script(H.path(("tnt%d.lua"):format(nscript)), text,
    ("timeout -s KILL %d %s %%s %s 2>%%s"):format(limit or 60, TNT, args or ""))
end

describe("zcsend inside Tarantool", function()
  setup(function()
    assert(sh("command -v " .. TNT) ~= "", "tarantool is not installed")
    assert(C.exists(CORE), CORE .. " is missing: make -C lua LUA=luajit")
  end)

  it("loads the LuaJIT build and waits through the fiber, in the main script and in fibers", function()
    local res = tarantool([[
R("core", package.searchpath("zcsend.core", package.cpath))
R("host_main", zcsend.host())
local f = fiber.new(function() R("host_fiber", zcsend.host()) end)
fiber.sleep(0)
R("adapter", package.loaded["zcsend.tarantool"] == A, A.name, A.active(), A._epoll)
]])
    assert.are.equal(LUA_DIR .. "/build-luajit/zcsend/core.so", res.core)
    assert.are.equal("tarantool", res.host_main)
    assert.are.equal("tarantool", res.host_fiber)
    assert.are.equal("true|tarantool|true|true", res.adapter)
  end)

  it("takes Tarantool's own sockets as they are; a closed one is EBADF; others are not its own", function()
    local res = tarantool([[
local got = fiber.channel(1)
local srv, port = server(function(c) got:put(A.sockfd(c) == c:fd()) fiber.sleep(0.2) end)
local c = connect(port)
R("connected", A.sockfd(c) == c:fd(), select(2, A.sockfd(c)))
R("accepted", got:get(5))
R("listening", A.sockfd(srv) == srv:fd())
c:close()
R("closed", A.sockfd(c))
R("table", A.sockfd({}), A.sockfd({ fd = function() return 3 end }), A.sockfd(3), A.sockfd("x"))
srv:close()
]])
    assert.are.equal("true|false", res.connected)
    assert.are.equal("true", res.accepted)
    assert.are.equal("true", res.listening)
    assert.are.equal("nil|EBADF: Tarantool socket is closed|EBADF", res.closed)
    assert.are.equal("nil|nil|nil|nil", res.table)
  end)

  it("wait(): true once ready, false after the timeout while other fibers run", function()
    local res = tarantool([[
local srv, port = server(function(c) fiber.sleep(2) end)
local c = connect(port)
local fd = core.dup(c:fd())
R("writable", A.wait(fd, "w", 1))
local ticks, stop = 0, false
fiber.create(function() while not stop do fiber.sleep(0.01) ticks = ticks + 1 end end)
local t0 = fiber.clock()
local r = { A.wait(fd, "r", 0.3) }
local took = fiber.clock() - t0
stop = true
R("timeout", r[1], r[2], r[3])
R("took", took >= 0.29 and took < 0.6, took)
R("ticks", ticks >= 15, ticks)
R("badfd", A.wait(-1, "r", 0.1))
R("badevents", A.wait(fd, "x", 0.1))
core.close(fd)
-- zcsend.wait: its own timeout, and a socket another fiber closes
t0 = fiber.clock()
R("zwait_timeout", zcsend.wait(c, "r", 0.25))
fiber.create(function() fiber.sleep(0.05) c:close() end)
R("zwait_closed", zcsend.wait(c, "r", 5))
R("zwait_took", fiber.clock() - t0 < 0.6)
srv:close()
]])
    assert.are.equal("true", res.writable)
    assert.are.equal("false|nil|nil", res.timeout)
    assert.are.equal("true", res.took:match("^[^|]*"), res.took)
    assert.are.equal("true", res.ticks:match("^[^|]*"), res.ticks)
    assert.are.equal("nil|EBADF: no fd to wait on|EBADF", res.badfd)
    assert.are.equal("nil|EIO: bad events x|EIO", res.badevents)
    assert.are.equal("nil|ETIMEDOUT: no progress for 0.25 s|ETIMEDOUT", res.zwait_timeout)
    assert.are.equal("nil|EBADF: fd closed while waiting|EBADF", res.zwait_closed)
    assert.are.equal("true", res.zwait_took)
  end)

  it("answers bad input exactly and never crashes", function()
    local res = tarantool([[
local got, first = fiber.channel(1), true
local srv, port = server(function(c)
  local mine = first -- c's peer: the first connection
  first = false
  local parts = {}
  while true do
    local d = c:read(65536, 5)
    if not d or d == "" then break end
    parts[#parts + 1] = d
  end
  if mine then
    got:put(table.concat(parts))
  end
end)
local c = connect(port)
local path = ROOT .. "/small.txt"
local f = io.open(path, "rb")
R("nofd", pcall(zcsend.sendfile, {}, f))
R("number", pcall(zcsend.sendfile, 1.5, f))
local closed = connect(port)
closed:close()
R("closed_socket", zcsend.sendfile(closed, f))
local g = io.open(path, "rb")
g:close()
R("closed_file", pcall(zcsend.sendfile, c, g))
R("negative_offset", pcall(zcsend.sendfile, c, f, -1))
R("zero_count", pcall(zcsend.sendfile, c, f, 0, 0))
R("bad_timeout", pcall(zcsend.sendfile, c, f, 0, 1, { timeout = -1 }))
R("past_eof", zcsend.sendfile(c, f, 2, 100))
R("offset_past_eof", zcsend.sendfile(c, f, 100, 5))
R("rest", zcsend.sendfile(c, f, 2))
c.zcsend_tls = true -- Tarantool 2.6 has no TLS sockets: one that says so is refused
R("tls", zcsend.sendfile(c, f))
c.zcsend_tls = nil
R("dir", zcsend.sendfile(c, io.open(ROOT .. "/dir", "rb")))
R("transfer_closed", zcsend.transfer(closed, f))
R("wait_closed", zcsend.wait(closed, "w", 1))
c:close()
local all = io.open(path, "rb"):read("*a")
local peer = got:get(5)
R("peer_got", #peer, peer == all:sub(3))
f:close()
srv:close()
]])
    assert.are.equal(
      "false|bad argument #1 to 'sendfile' (socket, fd or object with getfd() expected, got table)", res.nofd)
    assert.are.equal("false|bad argument #1 to 'sendfile' (socket fd must be an integer)", res.number)
    assert.are.equal("nil|EBADF: Tarantool socket is closed|EBADF|0", res.closed_socket)
    assert.are.equal("false|bad argument #2 to 'sendfile' (attempt to use a closed file)", res.closed_file)
    assert.are.equal("false|bad argument #3 to 'sendfile' (offset must be non-negative)", res.negative_offset)
    assert.are.equal("false|bad argument #4 to 'sendfile' (count must be positive)", res.zero_count)
    assert.are.equal("false|bad argument #5 to 'sendfile' (timeout must be a positive number of seconds)",
      res.bad_timeout)
    -- a count past the end is refused before a byte goes out; without a count, the rest
    local truncated = "nil|ETRUNCATED: file ended before the requested byte count was sent|ETRUNCATED|0"
    assert.are.equal(truncated, res.past_eof)
    assert.are.equal(truncated, res.offset_past_eof)
    assert.are.equal("15|nil|nil|nil", res.rest)
    assert.are.equal("nil|EPROTONOSUPPORT: TLS on a Tarantool socket is not supported " ..
      "(Tarantool 2.6 has no TLS sockets); nothing was sent|EPROTONOSUPPORT|0", res.tls)
    assert.are.equal("nil|EISDIR: Is a directory|EISDIR|0", res.dir)
    assert.are.equal("nil|EBADF: Tarantool socket is closed|EBADF|0", res.transfer_closed)
    assert.are.equal("nil|EBADF: Tarantool socket is closed|EBADF", res.wait_closed)
    assert.are.equal("15|true", res.peer_got) -- those 15 bytes, and nothing else
  end)

  it("ends a transfer with ETIMEDOUT, ECANCELED (fiber:cancel) or EBADF (closed by another fiber), bytes counted", function()
    local res = tarantool([[
local srv, port = server(function(c) fiber.sleep(3) end) -- never reads
local path = ROOT .. "/big.bin"
local function run(name, c, opts, act)
  local r
  local f = fiber.new(function()
    local fh = io.open(path, "rb")
    r = { zcsend.sendfile(c, fh, 0, nil, opts) }
    fh:close()
  end)
  fiber.sleep(0.35)
  local t0 = fiber.clock()
  act(f)
  while not r and fiber.clock() - t0 < 5 do fiber.sleep(0.001) end
  R(name, r[1], r[2], r[3], r[4] > 0 and r[4] < 64 * 1048576)
  R(name .. "_took", fiber.clock() - t0)
end
local t0 = fiber.clock()
run("timeout", connect(port), { timeout = 0.5 }, function() end)
run("cancel", connect(port), nil, function(f) f:cancel() end)
local c = connect(port)
run("closed", c, nil, function() c:close() end)
srv:close()
]])
    assert.are.equal("nil|ETIMEDOUT: no progress for 0.5 s|ETIMEDOUT|true", res.timeout)
    assert.is_true(tonumber(res.timeout_took) < 0.5, res.timeout_took) -- 0.35 s passed before
    assert.are.equal("nil|ECANCELED: fiber is cancelled|ECANCELED|true", res.cancel)
    assert.is_true(tonumber(res.cancel_took) < 0.05, res.cancel_took)
    assert.are.equal("nil|EBADF: socket closed during the transfer|EBADF|true", res.closed)
    assert.is_true(tonumber(res.closed_took) < 0.15, res.closed_took)
  end)

  it("leaves no epoll registration behind: 1,000 transfers, fds reused, libev never rebuilds its set", function()
    -- every transfer waits (small socket buffers); its dup is closed while the
    -- connection stays open (keep-alive), then the numbers are reused
    local res = tarantool([[
local N = tonumber(arg[1])
local SIZE = 1048576
local path = ROOT .. "/one.bin"
local waits = 0
local wait = A.wait
A.wait = function(...) waits = waits + 1 return wait(...) end
local srv, port = server(function(c)
  c:setsockopt("SOL_SOCKET", "SO_SNDBUF", 65536)
  local f = io.open(path, "rb")
  while true do
    local line = c:read("\n", 10)
    if not line or line == "" then break end
    local n, msg = zcsend.sendfile(c, f, 0, SIZE, { timeout = 5 })
    if n ~= SIZE then R("send_failed", n, msg) break end
  end
  f:close()
end)
local fh = io.open(path, "rb")
local ONE = fh:read("*a")
fh:close()
local function batch(conns, rounds)
  local done, bad = 0, 0
  for i = 1, conns do
    fiber.create(function()
      local c = connect(port)
      c:setsockopt("SOL_SOCKET", "SO_RCVBUF", 65536)
      for _ = 1, rounds do
        c:write("go\n")
        local data = readn(c, SIZE, 10)
        if data ~= ONE then bad = bad + 1 end
      end
      c:close()
      done = done + 1
    end)
  end
  local t0 = fiber.clock()
  while done < conns and fiber.clock() - t0 < 40 do fiber.sleep(0.01) end
  return done == conns and bad == 0
end
-- warm up, then the counts
R("warm", batch(2, 5))
local fds0 = fdcount()
local before = epoll_entries()
-- keep-alive connections; their numbers reused by the next batches
local ok = true
for _ = 1, N / 100 do
  ok = batch(4, 25) and ok
end
-- an idle keep-alive connection after transfers: nothing of its dups left
local idle = connect(port)
idle:setsockopt("SOL_SOCKET", "SO_RCVBUF", 65536)
for _ = 1, 3 do idle:write("go\n") ok = readn(idle, SIZE, 10) ~= nil and ok end
fiber.sleep(0.05)
local after, stale = epoll_entries()
R("transfers_ok", ok)
R("waits", waits > N)
local nbumped, common = bumped(before, after)
R("rebuilt", nbumped, common > 0)
R("stale", stale)
idle:close()
fiber.sleep(0.1)
R("fds", fdcount() - fds0)
srv:close()
]], 80, "1000")
    assert.are.equal("true", res.warm)
    assert.is_nil(res.send_failed)
    assert.are.equal("true", res.transfers_ok)
    assert.are.equal("true", res.waits) -- they did wait, through the adapter
    assert.are.equal("0|true", res.rebuilt) -- no long-lived entry was ever registered anew
    assert.are.equal("0", res.stale)
    assert.are.equal("0", res.fds)
  end)

  it("inside a box transaction yields like Tarantool's own sockets: a wait aborts a memtx transaction", function()
    local dir = H.path("box")
    assert(os.execute("mkdir -p " .. dir))
    local res = tarantool([[
box.cfg{ work_dir = arg[1], wal_mode = "none", log_level = 1 }
local sp = box.schema.space.create("t")
sp:create_index("pk")
-- small buffers both ends: 4 MiB cannot fit in them, so the sends below must wait
-- (with autotuned loopback buffers they sometimes did not, and nothing yielded)
local srv, port = server(function(c)
  c:setsockopt("SOL_SOCKET", "SO_RCVBUF", 65536)
  fiber.sleep(0.3)
  readn(c, 4 * 1048576 + 100, 5)
end)
local c = connect(port)
c:setsockopt("SOL_SOCKET", "SO_SNDBUF", 65536)
local f = io.open(ROOT .. "/one.bin", "rb")
box.begin()
sp:replace{1}
R("small", zcsend.host(), zcsend.sendfile(c, f, 0, 100)) -- no wait: no yield
R("commit_small", pcall(box.commit))
box.begin()
sp:replace{2}
local sent = {}
for i = 1, 4 do
  sent[i] = zcsend.sendfile(c, f, 0, 1048576) -- 4 MiB to a peer that reads after 0.3 s: waits
end
R("waits", unpack(sent))
R("commit_waited", pcall(box.commit))
R("rows", sp:get{1} ~= nil, sp:get{2} ~= nil)
]], 30, dir)
    assert.are.equal("tarantool|100|nil|nil|nil", res.small)
    assert.are.equal("true", res.commit_small)
    assert.are.equal("1048576|1048576|1048576|1048576", res.waits)
    assert.are.equal("false|Transaction has been aborted by a fiber yield", res.commit_waited)
    assert.are.equal("true|false", res.rows)
  end)

  it("(the measure above is not blind: waiting on the dups themselves makes libev rebuild)", function()
    local res = tarantool([[
A._no_epoll = true
local SIZE = 1048576
local srv, port = server(function(c)
  c:setsockopt("SOL_SOCKET", "SO_SNDBUF", 65536)
  local f = io.open(ROOT .. "/one.bin", "rb")
  while true do
    local line = c:read("\n", 10)
    if not line or line == "" then break end
    zcsend.sendfile(c, f, 0, SIZE, { timeout = 5 })
  end
  f:close()
end)
local c = connect(port)
c:setsockopt("SOL_SOCKET", "SO_RCVBUF", 65536)
c:write("go\n")
readn(c, SIZE, 10)
local before = epoll_entries()
for _ = 1, 20 do c:write("go\n") readn(c, SIZE, 10) end
fiber.sleep(0.05)
local after, stale = epoll_entries()
local nb, common = bumped(before, after)
-- a rebuild bumps the generations in place, or (libev's loop_fork) replaces
-- the epoll fd, leaving no entry in common with the set before
R("rebuilt", next(before) ~= nil and (nb > 0 or common == 0))
R("detail", nb, common, stale)
c:close()
srv:close()
]])
    assert.are.equal("true", res.rebuilt, res.detail)
  end)

  -- issue 13 §4: a range not in the page cache is never stepped on the tx
  -- thread; a prefetch thread reads it in while the fiber waits on its eventfd
  it("a cold file: read in by a prefetch thread while the Tarantool fibers run on, then sent byte-exact", function()
    local path, data, remove = C.cold_file("cold.bin", 8 * MiB + 3, 10)
    finally(remove)
    local out = H.path("cold.got")
    if not C.evicted(path) then -- right before the script: nothing reads the file meanwhile
      return pending(C.NO_CACHESTAT)
    end
    local res = tarantool(([[
local PATH, OUT, SIZE = %q, %q, %d
local fds0 = fdcount()
local before = core.engine_stats().prefetches
-- a fiber ticking every 2 ms: how often it ran during the transfer (an event
-- count, no timing)
local ticks, stop = 0, false
fiber.create(function()
  while not stop do
    fiber.sleep(0.002)
    ticks = ticks + 1
  end
end)
local srv, port = server(function(c)
  local f = io.open(PATH, "rb")
  local t0 = ticks
  R("result", zcsend.sendfile(c, f))
  R("ticks", ticks - t0)
  f:close()
end)
local c = connect(port)
local got = readn(c, SIZE, 30)
R("eof", c:read(1, 10))
c:close()
stop = true
srv:close()
local o = io.open(OUT, "wb")
o:write(got or "")
o:close()
-- the prefetch thread lets go of its dups just after its eventfd says done
local st
for _ = 1, 300 do
  st = core.engine_stats()
  if st.prefetching == 0 and fdcount() == fds0 then
    break
  end
  fiber.sleep(0.01)
end
R("prefetches", before, st.prefetches)
R("prefetching", st.prefetching)
R("fds", fdcount() - fds0)
]]):format(path, out, #data))
    assert.are.equal(("%d|nil|nil|nil"):format(#data), res.result)
    assert.are.equal("", res.eof) -- and nothing after it
    assert.is_true(H.read_file(out) == data, "the cold file arrived altered")
    local before, after = res.prefetches:match("^(%d+)|(%d+)$")
    print(("\n[tarantool] a cold 8 MiB file: %d prefetches, %s fiber ticks during the transfer")
      :format(tonumber(after) - tonumber(before), res.ticks))
    assert.is_true(tonumber(after) > tonumber(before), "no prefetch in the Tarantool process: " .. res.prefetches)
    assert.are.equal("0", res.prefetching)
    assert.is_true(tonumber(res.ticks) > 0, "no fiber ran during the transfer")
    assert.are.equal("0", res.fds)
  end)
end)

-- ---- the example file server ------------------------------------------------------

-- starts the example on a free port; it exits by itself after `lifetime` s
local function start_server(env, lifetime)
  local err = H.path("server.err")
  local pid, p = C.spawn(("env %s %s %s %s 0 %d 2>%s"):format(env or "", TNT, EXAMPLE, ROOT, lifetime or 120, err))
  local line = p:read("l")
  local port = line and tonumber(line:match("^port (%d+)$"))
  assert(port, "the server did not start: " .. tostring(line) .. "\n" .. H.read_file(err))
  return { p = p, pid = pid, port = port, err = err }
end

-- SIGTERM by pid; true if it exited within 5 s (then SIGKILL)
local function stop_server(srv)
  local exited = C.stop(srv.pid, "TERM", 5)
  srv.p:close()
  return exited
end

local function stats(srv, query)
  local body = curl(("http://127.0.0.1:%d/stats%s"):format(srv.port, query or ""))
  local st = {
    max_gap_ms = tonumber(body:match('"max_gap_ms":([%d%.eE+-]+)')),
    transfers = tonumber(body:match('"transfers":(%d+)')),
    lua_kb = tonumber(body:match('"lua_kb":([%d%.eE+-]+)')),
    errors = {},
  }
  for k, v in (body:match('"errors":(%b{})') or ""):gmatch('"(%u+)":(%d+)') do
    st.errors[k] = tonumber(v)
  end
  local last = body:match('"last_error":(%b{})')
  if last then
    st.last = { name = last:match('"name":"([^"]*)"'), msg = last:match('"msg":"([^"]*)"'),
      sent = tonumber(last:match('"sent":(%d+)')) }
  end
  assert(st.transfers, "no stats: " .. body)
  return st
end

-- how many transfers stats st saw end with ECONNRESET or EPIPE (a peer gone)
local function resets(st)
  return (st.errors.ECONNRESET or 0) + (st.errors.EPIPE or 0)
end

-- a small request's time, in seconds, and its body
local function small_request(srv)
  local out = curl(("-w '\\n%%{http_code} %%{time_total}' http://127.0.0.1:%d/small.txt"):format(srv.port))
  local body, code, t = out:match("^(.*)\n(%d+) ([%d.]+)$")
  return tonumber(t), body, code
end

describe("the Tarantool example file server, with curl", function()
  local srv
  setup(function()
    assert(sh("command -v curl") ~= "", "curl is not installed")
    assert(C.exists(CORE), CORE .. " is missing: make -C lua LUA=luajit")
    srv = start_server("FILESERVER_STATS=1", 120)
  end)
  teardown(function()
    if srv then
      assert.is_true(stop_server(srv), "the server did not exit on SIGTERM")
    end
  end)

  it("sends 64 MiB byte-exact; HEAD, Range, empty files, 404, 403", function()
    local url = ("http://127.0.0.1:%d"):format(srv.port)
    local out = H.path("big.got")
    stats(srv, "?reset")
    assert.are.equal("200 67108864", curl(("-o %s -w '%%{http_code} %%{size_download}' %s/big.bin"):format(out, url)))
    local gap = stats(srv).max_gap_ms
    assert.is_true(H.read_file(out) == BIG, "64 MiB differ")
    os.remove(out)
    print(("\n[tarantool] max fiber gap during a full-speed 64 MiB download: %.1f ms"):format(gap))
    assert.is_true(gap < 100, "a fiber waited " .. gap .. " ms")
    local head = curl("-I " .. url .. "/mid.bin")
    assert.are.equal("HTTP/1.1 200 OK", head:match("^[^\r]*"))
    assert.are.equal(tostring(#MID), head:match("Content%-Length: (%d+)"))
    assert.are.equal(MID:sub(1000001, 2000000), curl("-r 1000000-1999999 " .. url .. "/mid.bin"))
    assert.are.equal(MID:sub(-5000), curl("-r -5000 " .. url .. "/mid.bin"))
    assert.are.equal(MID:sub(3 * MiB + 1), curl("-r " .. 3 * MiB .. "- " .. url .. "/mid.bin"))
    assert.are.equal("416", C.status("-r 99999999- " .. url .. "/mid.bin"))
    assert.are.equal(MID:sub(6, 10), curl("-H 'RANGE: bytes=5-9' " .. url .. "/mid.bin")) -- any case
    assert.are.equal("200 " .. #MID, C.status("-r 9-5 " .. url .. "/mid.bin", true))
    assert.are.equal("200 0", C.status(url .. "/empty", true))
    assert.are.equal("404", C.status(url .. "/nothing"))
    assert.are.equal("404", C.status(url .. "/dir"))
    assert.are.equal("403", C.status("--path-as-is " .. url .. "/../etc/passwd"))
    -- keep-alive: three files on one connection, byte-exact
    local a, b = H.path("ka1"), H.path("ka2")
    assert.are.equal("200 200 ", curl(("-w '%%{http_code} ' -o %s %s/one.bin -o %s %s/small.txt"):format(
      a, url, b, url)))
    assert.is_true(H.read_file(a) == ONE)
    assert.are.equal(SMALL, H.read_file(b))
  end)

  it("answers a small request promptly while two rate-limited downloads run; the fiber gap stays small", function()
    local url = ("http://127.0.0.1:%d/big.bin"):format(srv.port)
    local before = stats(srv)
    local outs = {}
    for i = 1, 2 do -- 64 MiB at 1 MB/s: cut by --max-time 4 (curl exits 28), by themselves
      outs[i] = H.path("slow" .. i)
      os.execute(("(curl -s --max-time 4 --limit-rate 1M -o %s -w '%%{http_code}' %s; echo $?) > %s.code 2>&1 &")
        :format(outs[i], url, outs[i]))
    end
    socket.sleep(0.5)
    stats(srv, "?reset")
    local worst = 0
    for _ = 1, 10 do
      local t, body = small_request(srv)
      assert.are.equal(SMALL, body)
      worst = math.max(worst, t)
      socket.sleep(0.1)
    end
    local gap = stats(srv).max_gap_ms
    for i = 1, 2 do -- the downloads were still running all along
      assert.are.equal("", H.read_file(outs[i] .. ".code"), "download " .. i .. " ended too soon")
    end
    print(("\n[tarantool] small request during 2 slow downloads: max %.1f ms of 10; max fiber gap %.1f ms")
      :format(worst * 1000, gap))
    assert.is_true(worst < 0.5, "small request took " .. worst .. " s")
    assert.is_true(gap < 100, "a fiber waited " .. gap .. " ms")
    for i = 1, 2 do -- cut by curl's --max-time: what came is the file's start, exactly
      assert.are.equal("20028\n", wait_for(function()
        local code = H.read_file(outs[i] .. ".code")
        return code:find("\n") and code
      end, 8))
      local got = H.read_file(outs[i])
      assert.is_true(#got > 0 and #got < #BIG and got == BIG:sub(1, #got), "slow download " .. i .. " differs")
    end
    -- the server saw both go: EPIPE or ECONNRESET, with the bytes sent
    local st = wait_for(function()
      local s = stats(srv)
      return resets(s) == resets(before) + 2 and s
    end, 5)
    assert.is_truthy(st, "the server did not see both downloads end")
  end)

  it("ends a transfer to a client that never reads with ETIMEDOUT, serving others meanwhile", function()
    -- a server of its own, giving up after 2 s without progress (curl
    -- --limit-rate may pause reading for longer than that)
    local srv = start_server("ZCSEND_TIMEOUT=2 FILESERVER_STATS=1", 30)
    finally(function()
      assert.is_true(stop_server(srv), "the server did not exit on SIGTERM")
    end)
    local before = stats(srv)
    local c = C.raw_get(srv.port, "/big.bin")
    local t0 = socket.gettime()
    socket.sleep(0.5)
    local t, body = small_request(srv)
    assert.are.equal(SMALL, body)
    assert.is_true(t < 0.5, "small request took " .. t .. " s")
    local st = wait_for(function()
      local s = stats(srv)
      return (s.errors.ETIMEDOUT or 0) > (before.errors.ETIMEDOUT or 0) and s
    end, 8)
    local took = socket.gettime() - t0
    c:close()
    assert.is_truthy(st, "no ETIMEDOUT")
    assert.are.same({ name = "ETIMEDOUT", msg = "ETIMEDOUT: no progress for 2 s" },
      { name = st.last.name, msg = st.last.msg })
    assert.is_true(st.last.sent > 0 and st.last.sent < #BIG, tostring(st.last.sent))
    assert.is_true(took >= 2 and took < 4, "ETIMEDOUT after " .. took .. " s")
    assert.are.equal(SMALL, select(2, small_request(srv)))
  end)

  it("gives ECONNRESET or EPIPE on a peer reset mid-transfer, and keeps serving", function()
    local before = stats(srv)
    local c = C.raw_get(srv.port, "/big.bin")
    local got = 0
    while got < MiB do
      local data, _, partial = c:receive(65536)
      data = data or partial
      assert(data and #data > 0, "connection ended early")
      got = got + #data
    end
    C.reset(c)
    local st = wait_for(function()
      local s = stats(srv)
      return resets(s) > resets(before) and s
    end, 5)
    assert.is_truthy(st, "no ECONNRESET/EPIPE")
    assert.is_true(st.last.name == "ECONNRESET" or st.last.name == "EPIPE", st.last.name)
    assert.are.equal(st.last.name .. ": ", st.last.msg:sub(1, #st.last.name + 2))
    assert.is_true(st.last.sent >= MiB - 65536 and st.last.sent < #BIG, tostring(st.last.sent))
    local out = H.path("after_reset")
    assert.are.equal("200", curl(("-o %s -w '%%{http_code}' http://127.0.0.1:%d/one.bin"):format(out, srv.port)))
    assert.is_true(H.read_file(out) == ONE)
  end)

  it("has its fds and memory back where they started after 1,000 transfers", function()
    local url = ("http://127.0.0.1:%d/one.bin"):format(srv.port)
    local function transfers(procs, each)
      local args = string.rep("-o /dev/null " .. url .. " ", each)
      local cmds = {}
      for i = 1, procs do
        cmds[i] = ("curl -s --max-time 60 -w '%%{http_code}\\n' %s"):format(args)
      end
      -- procs clients at once, each keep-alive through its `each` downloads
      local out = sh("( " .. table.concat(cmds, " & ") .. " & wait )")
      local n = 0
      for _ in out:gmatch("200\n") do
        n = n + 1
      end
      return n
    end
    assert.are.equal(100, transfers(2, 50)) -- warm up
    local function settled_fds(target)
      return wait_for(function()
        local n = C.fd_count(srv.pid)
        return (target == nil or n == target) and n
      end, 3) or C.fd_count(srv.pid)
    end
    local fds0 = settled_fds()
    local st0 = stats(srv, "?gc")
    local rss0 = C.rss_kb(srv.pid)
    assert.are.equal(1000, transfers(10, 100))
    local fds1 = settled_fds(fds0)
    local st1 = stats(srv, "?gc")
    local rss1 = C.rss_kb(srv.pid)
    print(("\n[tarantool] 1,000 transfers: fds %d -> %d, Lua heap %.0f -> %.0f KiB, RSS %d -> %d KiB")
      :format(fds0, fds1, st0.lua_kb, st1.lua_kb, rss0, rss1))
    assert.are.equal(fds0, fds1)
    assert.are.equal(st0.transfers + 1000, st1.transfers)
    assert.are.same(st0.errors, st1.errors)
    assert.is_true(st1.lua_kb - st0.lua_kb < 256, "Lua heap grew " .. (st1.lua_kb - st0.lua_kb) .. " KiB")
    assert.is_true(rss1 - rss0 < 8192, "RSS grew " .. (rss1 - rss0) .. " KiB")
  end)

  it("exits by itself once its lifetime is over", function()
    local short = start_server("", 1)
    local t0 = socket.gettime()
    local gone = wait_for(function() return C.gone(short.pid) end, 5)
    if not gone then
      os.execute("kill -KILL " .. short.pid)
    end
    short.p:close()
    assert.is_true(gone, "still running after 5 s")
    assert.is_true(socket.gettime() - t0 < 3)
  end)
end)
