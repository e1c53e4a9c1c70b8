-- zcsend in luv (1.44, libuv 1.44): the adapter (zcsend/luv.lua) in lua5.4 and
-- LuaJIT processes, and the example file server (examples/luv_fileserver.lua)
-- in its own process, driven with curl.
--
--   cd lua && make -s && make -s LUA=luajit && busted --lua=lua5.4 -o utfTerminal hostspec/luv_spec.lua
--
-- Needs lua-luv (for lua5.4; for luajit too, or the LuaJIT runs are pending),
-- curl and luasocket. Every process started here ends by itself (timeouts,
-- lifetimes) and is stopped by its pid. luv is never loaded into busted's own
-- process: the scripts run in their own.
package.path = "./spec/?.lua;./hostspec/?.lua;" .. package.path
local H = require "helper"
local C = require "common"
local socket = require "socket"

local LUA_DIR = C.LUA_DIR
local EXAMPLE = LUA_DIR .. "/examples/luv_fileserver.lua"
local MiB = H.MiB
local curl = C.curl

-- the interpreters: lua5.4 always, LuaJIT where its luv and the build are there
local HOSTS = { { name = "lua5.4", lua = "lua5.4", cpath = "./?.so", core = LUA_DIR .. "/zcsend/core.so" } }
local LUAJIT = { name = "luajit", lua = "luajit", cpath = "./build-luajit/?.so",
  core = LUA_DIR .. "/build-luajit/zcsend/core.so" }
local luajit_ok = os.execute("luajit -e 'require \"luv\"' >/dev/null 2>&1") and C.exists(LUAJIT.core)
if luajit_ok then
  HOSTS[2] = LUAJIT
end

-- the files served and sent
local BIG = H.bytes(64 * MiB, 21)
local MID = H.bytes(3 * MiB + 17, 22)
local FILE = H.bytes(4 * MiB + 3, 23)
local HEADB = H.bytes(8 * MiB, 24) -- a "response head" too big for the socket's buffers
local SMALL = H.bytes(64 * 1024 + 5, 25)
local HELLO = "hello, luv\n"
local ROOT = C.write_files(H.path("root"), {
  ["big.bin"] = BIG, ["mid.bin"] = MID, ["file.bin"] = FILE, ["head.bin"] = HEADB,
  ["small.bin"] = SMALL, ["hello.txt"] = HELLO, empty = "",
})
assert(os.execute("mkdir -p " .. ROOT .. "/dir"))

teardown(H.cleanup)

-- ---- luv scripts in their own processes -------------------------------------------
-- Each script gets this prelude; R(key, ...) prints "key=v1|v2|..." (tostring of
-- every value) and the spec compares those strings exactly. The script's code
-- sets things up; then uv.run() runs until every handle is closed.
local PRELUDE = [==[
if os.getenv("ZCSEND_GC_STRESS") == "1" then -- the collector all the time (as in spec/helper.lua)
  if _VERSION == "Lua 5.4" then
    collectgarbage("incremental", 1, 1000)
  else
    collectgarbage("setpause", 1)
    collectgarbage("setstepmul", 1000)
  end
end
package.path = LUA_DIR .. "/?.lua;" .. package.path
package.cpath = CPATH .. ";" .. package.cpath
io.stdout:setvbuf("no")
local uv = require "luv"
local zcsend = require "zcsend"
local zluv = require "zcsend.luv"
local core = require "zcsend.core"
local sigpipe = uv.new_signal() -- as every luv server does: libuv's own writes raise it
sigpipe:start("sigpipe", function() end)
sigpipe:unref()
local guard = uv.new_timer() -- a script that hangs fails instead
guard:start(LIMIT * 1000, 0, function() io.stdout:write("guard=expired\n") os.exit(2) end)
guard:unref()
]==] .. C.R .. [==[
-- a pcall's outcome: "ok|results..." or "error|message"
local function E(k, ok, ...)
  if ok then
    R(k, "ok", ...)
  else
    R(k, "error", (...))
  end
end
local unpack = table.unpack or unpack
local function readfile(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end
local function now()
  return uv.hrtime() / 1e9
end
-- a luv server on 127.0.0.1: handler(c) per connection, in a coroutine of its
-- own (or plainly from the listen callback: plain)
local function serve(handler, plain)
  local srv = uv.new_tcp()
  assert(srv:bind("127.0.0.1", 0))
  assert(srv:listen(16, function()
    local c = uv.new_tcp()
    assert(srv:accept(c))
    if plain then
      handler(c)
    else
      coroutine.wrap(handler)(c)
    end
  end))
  return srv, srv:getsockname().port
end
-- a luv client reading everything: done(data, err) at EOF; opts.delay: ms
-- before it starts reading; opts.noread: never reads. Returns the handle.
local function client(port, opts, done)
  local c, parts = uv.new_tcp(), {}
  c:connect("127.0.0.1", port, function(err)
    if c:is_closing() then -- closed by the test before it connected
      return
    end
    assert(not err, err)
    local function start()
      c:read_start(function(rerr, data)
        if data then
          parts[#parts + 1] = data
        else
          c:close()
          done(table.concat(parts), rerr)
        end
      end)
    end
    if opts.noread then
      return
    elseif opts.delay then
      local t = uv.new_timer()
      t:start(opts.delay, 0, function() t:close() start() end)
    else
      start()
    end
  end)
  return c
end
-- sends the whole file on c in form "co" (zcsend.sendfile, in the connection's
-- coroutine) or "cb" (zluv.sendfile, from the listen callback: serve(handler,
-- form == "cb")); ended(sent, msg, name, partial) either way
local function send_form(form, c, file, ended)
  if form == "co" then
    ended(zcsend.sendfile(c, file))
  else
    zluv.sendfile(c, file, ended)
  end
end
local function finish(c) -- shuts down and closes a server-side connection
  c:shutdown(function() c:close() end)
end
local function nonblock(fd) -- O_NONBLOCK on fd's open file description
  local flags = readfile("/proc/self/fdinfo/" .. fd):match("flags:%s*(%d+)")
  return math.floor(tonumber(flags, 8) / 2048) % 2 == 1
end
local function fdcount()
  local n, req = 0, uv.fs_scandir("/proc/self/fd")
  while uv.fs_scandir_next(req) do
    n = n + 1
  end
  return n - 1 -- the scan's own fd
end
-- the entries of libuv's epoll set as "tfd:inode", and how many of them no
-- longer name the file they were added for
local function epoll_entries()
  local info = readfile("/proc/self/fdinfo/" .. uv.backend_fd())
  local list, stale = {}, 0
  for tfd, ino in info:gmatch("tfd:%s*(%d+)%s+events:%s*%x+%s+data:%s*%x+%s+pos:%d+%s+ino:(%x+)") do
    list[#list + 1] = tfd .. ":" .. ino
    local st = uv.fs_stat("/proc/self/fd/" .. tfd)
    if not st or st.ino ~= tonumber(ino, 16) then
      stale = stale + 1
    end
  end
  table.sort(list)
  return table.concat(list, ","), stale
end
]==]

local nscript = 0
-- runs code under host (lua5.4 or luajit), killed after limit s; asserts it
-- got to its end and returns the R() results by key
local function run(host, code, limit)
  nscript = nscript + 1
  limit = limit or 30
  local text = ("local LUA_DIR, ROOT, CPATH, LIMIT = %q, %q, %q, %d\n"):format(LUA_DIR, ROOT,
    LUA_DIR .. "/" .. host.cpath:sub(3), limit) .. PRELUDE .. code .. "\nuv.run()\nR('end', 'ok')\nos.exit(0)\n"
  return C.run_script(H.path(("luv%d.lua"):format(nscript)), text,
    ("cd %s && timeout -s KILL %d %s %%s 2>%%s"):format(LUA_DIR, limit + 5, host.lua))
end

local NOWAIT = "EAGAIN: zcsend can't wait here without blocking the luv loop: call zcsend.sendfile "
  .. "from a coroutine, or use require('zcsend.luv').sendfile(handle, file, offset, count, opts, callback)"

for _, host in ipairs(HOSTS) do
  describe("zcsend in luv (" .. host.name .. ")", function()
    setup(function()
      assert(C.exists(host.core), host.core .. " is missing: make -C lua" .. (host.name == "luajit" and " LUA=luajit" or ""))
    end)

    it("takes luv stream handles as they are; waits through luv in coroutines and refuses to block the loop", function()
      local res = run(host, ([[
local NOWAIT = %q
R("core", package.searchpath("zcsend.core", package.cpath))
R("host_main", zcsend.host(), zluv.active())
R("adapter", package.loaded["zcsend.luv"] == zluv, zluv.name)
local f = assert(io.open(ROOT .. "/small.bin", "rb"))
local udp = uv.new_udp()
R("others", zluv.sockfd({}), zluv.sockfd(3), zluv.sockfd(udp), zluv.sockfd(f))
local fresh = uv.new_tcp()
R("fresh", zluv.sockfd(fresh))
local fds = uv.pipe({ nonblock = true }, { nonblock = true })
local pw = uv.new_pipe(false)
pw:open(fds.write)
R("pipe", zluv.sockfd(pw) == fds.write, zluv.stream_kind(pw))
local srv, port
srv, port = serve(function(c)
  R("host_co", zcsend.host(), zluv.active())
  local fd, tls = zluv.sockfd(c)
  R("accepted", fd == uv.fileno(c), tls, zluv.stream_kind(c))
  R("sent", zcsend.sendfile(c, f, 0, 1000))
  -- wait(): false after its timeout while the loop runs on; true once ready
  local ticks, ticker = 0, uv.new_timer()
  ticker:start(10, 10, function() ticks = ticks + 1 end)
  local own = core.dup(uv.fileno(c))
  local t0 = now()
  local r = { zluv.wait(own, "r", 0.3) }
  R("wait_timeout", r[1], now() - t0 >= 0.29, ticks >= 15)
  R("wait_ready", zluv.wait(own, "w", 1))
  core.close(own)
  R("zwait", zcsend.wait(c, "r", 0.2))
  ticker:close()
  c:close()
  R("closed", zluv.sockfd(c))
  R("closed_send", zcsend.sendfile(c, f, 0, 10))
  R("closed_wait", zcsend.wait(c, "w", 1))
  srv:close()
end)
local t = uv.new_timer()
t:start(1, 0, function()
  t:close()
  R("host_cb", zcsend.host(), zluv.active())
  R("wait_cb", zluv.wait(0, "r", 0.1))
end)
client(port, {}, function(data) R("got", data == readfile(ROOT .. "/small.bin"):sub(1, 1000)) end)
-- another socket (an integer fd) on the main coroutine while uv.run() runs:
-- what goes at once goes; the first wait is refused, not blocked on
local big = assert(io.open(ROOT .. "/big.bin", "rb"))
local srv3, port3, peer
srv3, port3 = serve(function(c)
  local t0 = now()
  local r = { zcsend.sendfile(uv.fileno(c), big, 0, 16 * 1024 * 1024) }
  R("int_main", r[1], r[2] == NOWAIT, r[3], r[4] > 0 and r[4] < 16 * 1024 * 1024, now() - t0 < 1)
  c:close()
  peer:close()
  srv3:close()
  big:close()
end, true)
peer = client(port3, { noread = true })
fresh:close()
udp:close()
pw:close()
core.close(fds.read)
]]):format(NOWAIT))
      assert.are.equal(host.core, res.core)
      assert.are.equal("blocking|false", res.host_main)
      assert.are.equal("true|luv", res.adapter)
      assert.are.equal("nil|nil|nil|nil", res.others)
      assert.are.equal("nil|EBADF: luv handle has no fd (EBADF: bad file descriptor)|EBADF", res.fresh)
      assert.are.equal("true|pipe", res.pipe)
      assert.are.equal("luv|true", res.host_co)
      assert.are.equal("luv|true", res.host_cb)
      assert.are.equal("nil|" .. NOWAIT .. "|EAGAIN", res.wait_cb)
      assert.are.equal("true|false|tcp", res.accepted)
      assert.are.equal("1000|nil|nil|nil", res.sent)
      assert.are.equal("false|true|true", res.wait_timeout)
      assert.are.equal("true", res.wait_ready)
      assert.are.equal("nil|ETIMEDOUT: no progress for 0.2 s|ETIMEDOUT", res.zwait)
      assert.are.equal("nil|EBADF: luv handle is closed|EBADF", res.closed)
      assert.are.equal("nil|EBADF: luv handle is closed|EBADF|0", res.closed_send)
      assert.are.equal("nil|EBADF: luv handle is closed|EBADF", res.closed_wait)
      assert.are.equal("true", res.got)
      assert.are.equal("nil|true|EAGAIN|true|true", res.int_main)
    end)

    it("answers bad input exactly, in both forms, and never crashes", function()
      local res = run(host, [[
local data = readfile(ROOT .. "/small.bin")
local f = assert(io.open(ROOT .. "/small.bin", "rb"))
local size = f:seek("end")
local closedf = assert(io.open(ROOT .. "/small.bin", "rb"))
closedf:close()
local udp, tmr, dead = uv.new_udp(), uv.new_timer(), uv.new_tcp()
dead:close()
local function nop() end
local srv, port
srv, port = serve(function(c) -- the coroutine form
  E("table", pcall(zcsend.sendfile, {}, f))
  E("udp", pcall(zcsend.sendfile, udp, f))
  E("timer", pcall(zcsend.sendfile, tmr, f))
  E("closed_handle", pcall(zcsend.sendfile, dead, f))
  E("closed_file", pcall(zcsend.sendfile, c, closedf))
  E("neg_offset", pcall(zcsend.sendfile, c, f, -1, 10))
  E("float_offset", pcall(zcsend.sendfile, c, f, 1.5, 10))
  E("zero_count", pcall(zcsend.sendfile, c, f, 0, 0))
  E("bad_timeout", pcall(zcsend.sendfile, c, f, 0, 10, { timeout = 0 }))
  E("past_eof", pcall(zcsend.sendfile, c, f, size - 100, 1000))
  E("offset_past_eof", pcall(zcsend.sendfile, c, f, size + 5, 10))
  E("offset_past_eof_rest", pcall(zcsend.sendfile, c, f, size + 5))
  E("good", pcall(zcsend.sendfile, c, f, 0, 1000))
  finish(c)
  srv:close()
end)
client(port, {}, function(got) R("co_got", got == data:sub(1, 1000)) end)
local srv2, port2
srv2, port2 = serve(function(c) -- the callback form, and the coroutine form from a plain callback
  E("cb_nocb", pcall(zluv.sendfile, c, f, 0, 10))
  E("cb_table", pcall(zluv.sendfile, {}, f, nop))
  E("cb_udp", pcall(zluv.sendfile, udp, f, nop))
  E("cb_closed_file", pcall(zluv.sendfile, c, closedf, nop))
  E("cb_neg_offset", pcall(zluv.sendfile, c, f, -1, 10, nop))
  E("cb_zero_count", pcall(zluv.sendfile, c, f, 0, 0, nop))
  E("cb_bad_timeout", pcall(zluv.sendfile, c, f, 0, 10, { timeout = -1 }, nop))
  R("main_refused", zcsend.sendfile(c, f, 0, 10))
  local called = false
  zluv.sendfile(dead, f, 0, 10, function(...)
    called = true
    R("cb_closed_handle", ...)
  end)
  R("cb_sync", called)
  zluv.sendfile(c, f, size - 100, 1000, function(...)
    R("cb_past_eof", ...)
    zluv.sendfile(c, f, function(...) -- offset and count left out: the whole file
      R("cb_good", ...)
      finish(c)
      srv2:close()
    end)
  end)
end, true)
client(port2, {}, function(got) R("cb_got", got == data) end)
udp:close()
tmr:close()
]])
      local function argerr(n, msg)
        return ("error|bad argument #%d to 'sendfile' (%s)"):format(n, msg)
      end
      -- the coroutine form: zcsend's own answers
      assert.are.equal(argerr(1, "socket, fd or object with getfd() expected, got table"), res.table)
      assert.are.equal(argerr(1, "socket, fd or object with getfd() expected, got userdata"), res.udp)
      assert.are.equal(argerr(1, "socket, fd or object with getfd() expected, got userdata"), res.timer)
      assert.are.equal("ok|nil|EBADF: luv handle is closed|EBADF|0", res.closed_handle)
      assert.are.equal(argerr(2, "attempt to use a closed file"), res.closed_file)
      assert.are.equal(argerr(3, "offset must be non-negative"), res.neg_offset)
      assert.are.equal(argerr(3, "offset must be an integer"), res.float_offset)
      assert.are.equal(argerr(4, "count must be positive"), res.zero_count)
      assert.are.equal(argerr(5, "timeout must be a positive number of seconds"), res.bad_timeout)
      -- a count is exact: past the file's end it fails before a byte moves
      local TRUNC = "ok|nil|ETRUNCATED: file ended before the requested byte count was sent|ETRUNCATED|0"
      assert.are.equal(TRUNC, res.past_eof)
      assert.are.equal(TRUNC, res.offset_past_eof)
      assert.are.equal("ok|0|nil|nil|nil", res.offset_past_eof_rest) -- the rest of the file: nothing
      assert.are.equal("ok|1000|nil|nil|nil", res.good)
      assert.are.equal("true", res.co_got)
      -- the callback form: argument errors raise at the call
      assert.are.equal(argerr(6, "callback function expected, got nil"), res.cb_nocb)
      assert.are.equal(argerr(1, "luv stream handle (tcp, pipe, tty) expected, got table"), res.cb_table)
      assert.are.equal(argerr(1, "luv stream handle (tcp, pipe, tty) expected, got userdata"), res.cb_udp)
      assert.are.equal(argerr(2, "attempt to use a closed file"), res.cb_closed_file)
      assert.are.equal(argerr(3, "offset must be non-negative"), res.cb_neg_offset)
      assert.are.equal(argerr(4, "count must be positive"), res.cb_zero_count)
      assert.are.equal(argerr(5, "timeout must be a positive number of seconds"), res.cb_bad_timeout)
      -- the coroutine form on the main coroutine while uv.run() runs: refused, nothing sent
      assert.are.equal("nil|" .. NOWAIT .. "|EAGAIN|0", res.main_refused)
      -- runtime failures reach the callback, always from the loop
      assert.are.equal("false", res.cb_sync)
      assert.are.equal("nil|EBADF: luv handle is closed|EBADF|0", res.cb_closed_handle)
      assert.are.equal("nil|ETRUNCATED: file ended before the requested byte count was sent|ETRUNCATED|0", res.cb_past_eof)
      assert.are.equal(("%d|nil|nil|nil"):format(#SMALL), res.cb_good)
      assert.are.equal("true", res.cb_got)
    end)

    for _, form in ipairs({ "co", "cb", "int" }) do
      local what = form == "int" and "an integer fd (control: no drain) lets the file overtake the queued head"
        or ("the " .. (form == "co" and "coroutine" or "callback") .. " form sends the file after the head uv.write queued")
      it(what, function()
        local res = run(host, ([[
local FORM = %q
local head = readfile(ROOT .. "/head.bin")
local file = readfile(ROOT .. "/file.bin")
local f = assert(io.open(ROOT .. "/file.bin", "rb"))
local srv, port
srv, port = serve(function(c)
  uv.write(c, head)
  R("queued", uv.stream_get_write_queue_size(c) > 0)
  local drains = zluv.counters.drains
  local function ended(...)
    R("result", ...)
    R("drains", zluv.counters.drains - drains)
    finish(c)
    srv:close()
  end
  if FORM == "int" then
    ended(zcsend.sendfile(uv.fileno(c), f))
  else
    send_form(FORM, c, f, ended)
  end
end, FORM == "cb")
client(port, { delay = 300 }, function(got)
  R("len", #got == #head + #file)
  R("exact", got == head .. file)
end)
]]):format(form))
        assert.are.equal("true", res.queued)
        assert.are.equal(("%d|nil|nil|nil"):format(#FILE), res.result)
        assert.are.equal("true", res.len)
        if form == "int" then
          assert.are.equal("0", res.drains)
          assert.are.equal("false", res.exact) -- what the drain prevents: this test can see it
        else
          assert.are.equal("1", res.drains)
          assert.are.equal("true", res.exact)
        end
      end)
    end

    for _, form in ipairs({ "co", "cb" }) do
      it("an integer file fd closed and its number reused while the head drains (" .. form
        .. " form): the bytes still come from the file asked for", function()
        local res = run(host, ([[
local FORM = %q
local head = readfile(ROOT .. "/head.bin")
local file = readfile(ROOT .. "/file.bin")
local f = assert(io.open(ROOT .. "/file.bin", "rb"))
local fd = core.dup(core.fileno(f))
f:close()
local other -- what takes fd's number
local srv, port
srv, port = serve(function(c)
  uv.write(c, head)
  local t = uv.new_timer()
  t:start(50, 0, function() -- while the sendfile below waits for the head to leave
    t:close()
    core.close(fd)
    other = assert(io.open(ROOT .. "/small.bin", "rb"))
    R("reused", core.fileno(other) == fd)
  end)
  local function ended(...)
    R("result", ...)
    other:close()
    finish(c)
    srv:close()
  end
  send_form(FORM, c, fd, ended)
end, FORM == "cb")
client(port, { delay = 300 }, function(got) R("exact", got == head .. file) end)
R("prepare_hook", zcsend._prepare == true)
]]):format(form))
        assert.are.equal("true", res.reused)
        if form == "co" and res.prepare_hook ~= "true" then
          -- zcsend.lua resolves the file only after the adapter's sockfd() has
          -- waited for the head: a hole the proposed prepare() hook closes
          pending("the coroutine form needs zcsend.lua's prepare() hook for this (now: " .. res.result .. ", exact " .. res.exact .. ")")
          return
        end
        assert.are.equal(("%d|nil|nil|nil"):format(#FILE), res.result)
        assert.are.equal("true", res.exact)
      end)
    end

    it("a handle another callback closes mid-transfer ends it with EBADF at once, bytes counted (both forms)", function()
      local res = run(host, [[
local f = assert(io.open(ROOT .. "/big.bin", "rb"))
local function closed_under(k)
  local peer, srv, port
  srv, port = serve(function(c)
    local t0, closed_at = now(), nil
    local t = uv.new_timer()
    t:start(200, 0, function() -- the peer reads nothing: the transfer is waiting
      t:close()
      closed_at = now()
      c:close()
    end)
    local function ended(sent, msg, name, partial)
      R(k, sent, msg, name, partial > 0 and partial < 64 * 1024 * 1024)
      R(k .. "_prompt", closed_at ~= nil and now() - closed_at < 0.3)
      peer:close()
      srv:close()
    end
    send_form(k, c, f, ended)
  end, k == "cb")
  peer = client(port, { noread = true })
end
closed_under("co")
closed_under("cb")
]])
      for _, k in ipairs({ "co", "cb" }) do -- the same in both forms
        assert.are.equal("nil|EBADF: socket closed during the transfer|EBADF|true", res[k])
        assert.are.equal("true", res[k .. "_prompt"])
      end
    end)

    it("queued output that never leaves ends the call with ETIMEDOUT after the timeout, nothing sent", function()
      local res = run(host, [[
local head = readfile(ROOT .. "/head.bin")
local f = assert(io.open(ROOT .. "/file.bin", "rb"))
-- k: "co" (the coroutine form, zcsend.TIMEOUT) or "cb" (the callback form, opts.timeout)
local function stuck(k)
  local peer, srv, port
  srv, port = serve(function(c)
    uv.write(c, head)
    local t0 = now()
    local function ended(...)
      R(k, ...)
      R(k .. "_elapsed", now() - t0 >= 0.45 and now() - t0 < 2)
      c:close()
      peer:close()
      srv:close()
    end
    if k == "co" then
      zcsend.TIMEOUT = 0.5
      local r = { zcsend.sendfile(c, f) }
      zcsend.TIMEOUT = 60
      ended(unpack(r, 1, 4))
    else
      zluv.sendfile(c, f, 0, 1000, { timeout = 0.5 }, ended)
    end
  end, k == "cb")
  peer = client(port, { noread = true })
end
stuck("co")
stuck("cb")
]])
      for _, k in ipairs({ "co", "cb" }) do -- the same in both forms
        assert.are.equal("nil|ETIMEDOUT: no progress for 0.5 s|ETIMEDOUT|0", res[k])
        assert.are.equal("true", res[k .. "_elapsed"])
      end
    end)

    it("never touches the flags of a blocking fd: a pipe as the file is watched with poll(2)", function()
      local path = ROOT .. "/file.bin"
      local res = run(host, ([[
local path = %q
local file = readfile(path)
local src = assert(io.popen(("head -c 100000 %%s; sleep 0.3; tail -c +100001 %%s"):format(path, path), "r"))
local sfd = core.fileno(src)
local before = nonblock(sfd)
local srv, port
srv, port = serve(function(c)
  local ticks = zluv.counters.ticks
  R("result", zcsend.sendfile(c, src))
  R("ticked", zluv.counters.ticks > ticks)
  R("flags", before, nonblock(sfd))
  local w = assert(io.popen("cat >/dev/null", "w"))
  local wfd = core.fileno(w)
  R("wait_blocking", nonblock(wfd), zcsend.wait(wfd, "w", 1), nonblock(wfd))
  w:close()
  src:close()
  finish(c)
  srv:close()
end)
client(port, {}, function(got) R("exact", got == file) end)
]]):format(path))
      assert.are.equal(("%d|nil|nil|nil"):format(#FILE), res.result)
      assert.are.equal("true", res.ticked)
      assert.are.equal("false|false", res.flags)
      assert.are.equal("false|true|false", res.wait_blocking)
      assert.are.equal("true", res.exact)
    end)

    it("leaves no epoll entry nor fd behind: 300 keep-alive transfers that wait, fds reused", function()
      local res = run(host, [[
local data = readfile(ROOT .. "/big.bin")
local f = assert(io.open(ROOT .. "/big.bin", "rb"))
local N, expect = 300, {}
for i = 1, N do
  expect[i] = data:sub(i * 1000 + 1, i * 1000 + 65536 + i)
end
expect = table.concat(expect)
local polls, ticks = zluv.counters.polls, zluv.counters.ticks
-- a round: a connection, N transfers on it, closed; then(set, fds, stale) after
local function round(k, after)
  local srv, port
  srv, port = serve(function(c)
    c:send_buffer_size(16384) -- most transfers wait
    local ok = 0
    for i = 1, N do
      if zcsend.sendfile(c, f, i * 1000, 65536 + i) == 65536 + i then
        ok = ok + 1
      end
    end
    R("sent" .. k, ok)
    local _, stale = epoll_entries()
    R("stale" .. k, stale)
    finish(c)
    srv:close()
  end)
  client(port, {}, function(got)
    R("exact" .. k, got == expect)
    local t = uv.new_timer()
    t:start(50, 0, function()
      t:close()
      local set, stale = epoll_entries()
      after(set, fdcount(), stale)
    end)
  end)
end
-- the second round leaves what the first left: nothing of its own accumulates
round(1, function(set1, fds1, stale1)
  round(2, function(set2, fds2, stale2)
    R("waited", zluv.counters.polls - polls >= N, zluv.counters.ticks - ticks)
    R("epoll_back", set1 == set2, set1, set2)
    R("stale_after", stale1, stale2)
    R("fds_back", fds2 - fds1)
  end)
end)
]])
      for k = 1, 2 do
        assert.are.equal("300", res["sent" .. k])
        assert.are.equal("0", res["stale" .. k])
        assert.are.equal("true", res["exact" .. k])
      end
      assert.are.equal("true|0", res.waited) -- polled through luv, never the poll(2) fallback
      assert.are.equal("true", res.epoll_back:match("^%a+"), res.epoll_back)
      assert.are.equal("0|0", res.stale_after)
      assert.are.equal("0", res.fds_back)
    end)

    it("the coroutine form never blocks the loop: a 10 ms timer during two slow readers", function()
      local out1 = H.path("slow" .. host.name)
      local res = run(host, ([[
local OUT, N = %q, 12 * 1024 * 1024
local f = assert(io.open(ROOT .. "/big.bin", "rb"))
local gap, last, done = 0, uv.hrtime(), 0
local ticker = uv.new_timer()
ticker:start(10, 10, function()
  local t = uv.hrtime()
  gap = math.max(gap, (t - last) / 1e6)
  last = t
end)
local srv, port
srv, port = serve(function(c)
  local r = { zcsend.sendfile(c, f, 0, N) }
  done = done + 1
  R("result" .. done, r[1], r[3])
  c:close()
  if done == 2 then
    ticker:close()
    srv:close()
    R("gap_ms", ("%%.1f"):format(gap))
  end
end)
local rd = io.popen(("lua5.4 spec/reader.lua %%d %%s 2 0.01 0 -"):format(port, OUT))
local t = uv.new_timer()
t:start(0, 20, function()
  if done == 2 then
    t:close()
    R("reader", rd:read("*l"))
    rd:close()
  end
end)
]]):format(out1), 60)
      assert.are.equal(("%d|nil"):format(12 * MiB), res.result1)
      assert.are.equal(("%d|nil"):format(12 * MiB), res.result2)
      assert.are.equal("done", res.reader)
      assert.is_true(H.read_file(out1 .. ".1") == BIG:sub(1, 12 * MiB))
      assert.is_true(H.read_file(out1 .. ".2") == BIG:sub(1, 12 * MiB))
      local gap = tonumber(res.gap_ms)
      print(("luv (%s), coroutine form, 2 readers at ~6 MB/s: 10 ms timer max gap %.1f ms"):format(host.name, gap))
      assert.is_true(gap < 100, "loop stalled: max timer gap " .. gap .. " ms")
    end)

    -- issue 13 §4: a range not in the page cache is never stepped on the loop's
    -- thread; a prefetch thread reads it in while luv waits on its eventfd
    it("a cold file: read in by a prefetch thread while the luv loop runs on, then sent byte-exact", function()
      local path, data, remove = C.cold_file("cold.bin", 8 * MiB + 3, 26)
      finally(remove)
      local out = H.path("cold." .. host.name)
      if not C.evicted(path) then -- right before the script: nothing reads the file meanwhile
        return pending(C.NO_CACHESTAT)
      end
      local res = run(host, ([[
local PATH, OUT = %q, %q
-- libuv opens /dev/null at a loop's first listen and keeps it (its EMFILE
-- reserve): listened once before the count
serve(function() end):close()
local fds0 = fdcount()
local before = core.engine_stats().prefetches
-- a 2 ms timer: how often it ran during the transfer (an event count, no timing)
local ticks, ended = 0, 0
local ticker = uv.new_timer()
ticker:start(2, 2, function() ticks = ticks + 1 end)
-- both ends done: the counters, once the prefetch thread has let go of its
-- dups (it does just after its eventfd says done) and the fds are back
local function settle()
  ended = ended + 1
  if ended < 2 then
    return
  end
  ticker:close()
  local polls, t = 0, uv.new_timer()
  t:start(0, 10, function()
    polls = polls + 1
    local st = core.engine_stats()
    if (st.prefetching == 0 and fdcount() == fds0) or polls > 300 then
      t:close()
      R("prefetches", before, st.prefetches)
      R("prefetching", st.prefetching)
      R("fds", fdcount() - fds0)
    end
  end)
end
local srv, port
srv, port = serve(function(c)
  local f = assert(io.open(PATH, "rb"))
  local t0 = ticks
  R("result", zcsend.sendfile(c, f))
  R("ticks", ticks - t0)
  f:close()
  srv:close()
  c:shutdown(function() c:close() settle() end)
end)
client(port, {}, function(got)
  local o = assert(io.open(OUT, "wb"))
  o:write(got)
  o:close()
  settle()
end)
]]):format(path, out))
      assert.are.equal(("%d|nil|nil|nil"):format(#data), res.result)
      assert.is_true(H.read_file(out) == data, "the cold file arrived altered")
      local before, after = res.prefetches:match("^(%d+)|(%d+)$")
      print(("luv (%s), a cold 8 MiB file: %d prefetches, %s timer ticks during the transfer")
        :format(host.name, tonumber(after) - tonumber(before), res.ticks))
      assert.is_true(tonumber(after) > tonumber(before), "no prefetch in the luv process: " .. res.prefetches)
      assert.are.equal("0", res.prefetching)
      assert.is_true(tonumber(res.ticks) > 0, "the luv loop never ran during the transfer")
      assert.are.equal("0", res.fds)
    end)
  end)
end

if not luajit_ok then
  pending("luv for LuaJIT (lua-luv for 5.1) or lua/build-luajit/zcsend/core.so missing: LuaJIT runs skipped")
end

-- ---- the example server, a process of its own, with curl -----------------------------
local nserver = 0
-- starts the example under host; env: extra environment; returns {pid, port, log}
local function start_server(host, env, lifetime)
  nserver = nserver + 1
  local log = H.path(("server%d.log"):format(nserver))
  local cmd = ("cd %s && ZCSEND_STATS=1 ZCSEND_CPATH=%q %s %s %s %s 0 %d >%s 2>&1")
    :format(LUA_DIR, host.cpath, env or "", host.lua, EXAMPLE, ROOT, lifetime or 60, log)
  local pid = C.background(cmd)
  local port
  for _ = 1, 200 do
    port = tonumber((H.read_file(log):match("^(%d+)\n")))
    if port then
      break
    end
    socket.sleep(0.05)
  end
  assert(port, "the server did not start: " .. H.read_file(log))
  return { pid = pid, port = port, log = log, url = ("http://127.0.0.1:%d"):format(port) }
end

local function stop_server(s)
  os.execute("kill " .. s.pid .. " 2>/dev/null")
end

local function alive(s)
  return C.exists("/proc/" .. s.pid .. "/fd")
end

local function stats(s, reset)
  local t = {}
  for k, v in curl(s.url .. "/stats" .. (reset and "?reset" or "")):gmatch("([%w_.]+)=([^\n]*)") do
    t[k] = tonumber(v) or v
  end
  return t
end


for _, host in ipairs(HOSTS) do
  describe("the luv example file server (" .. host.name .. ")", function()
    local s
    before_each(function()
      s = start_server(host, host.env)
    end)
    after_each(function()
      stop_server(s)
    end)

    it("serves 64 MiB byte-exact, HEAD, keep-alive, 404 and 405", function()
      local got = H.path("big." .. host.name)
      assert.are.equal("200 67108864", curl(("-o %s -w '%%{http_code} %%{size_download}' %s/big.bin"):format(got, s.url)))
      assert.is_true(H.read_file(got) == BIG, "64 MiB differ")
      os.remove(got)
      local head = curl("-I " .. s.url .. "/small.bin")
      assert.is_truthy(head:find("^HTTP/1.1 200 OK\r\n"))
      assert.is_truthy(head:find("\r\nContent%-Length: 65541\r\n"))
      -- three on one connection (curl reuses it: one connect)
      assert.are.equal(HELLO .. SMALL .. HELLO, curl(s.url .. "/hello.txt " .. s.url .. "/small.bin " .. s.url .. "/hello.txt"))
      assert.are.equal("1\n0\n", curl(("-o /dev/null -o /dev/null -w '%%{num_connects}\\n' %s/hello.txt %s/hello.txt")
        :format(s.url, s.url)))
      assert.are.equal("", curl(s.url .. "/empty"))
      assert.are.equal("404", C.status(s.url .. "/nope"))
      assert.are.equal("404", C.status(s.url .. "/dir"))
      assert.are.equal("403", C.status("--path-as-is " .. s.url .. "/../etc/passwd"))
      assert.are.equal("405", C.status("-X POST " .. s.url .. "/hello.txt"))
      assert.are.equal(0, stats(s).failures)
    end)

    it("answers a small request promptly while two curl --limit-rate 1M downloads run; the loop never stalls", function()
      local outs, dls = {}, {}
      for i = 1, 2 do
        outs[i] = H.path(("slow%d.%s"):format(i, host.name))
        dls[i] = io.popen(("curl -s --max-time 30 --limit-rate 1M -o %s -w '%%{http_code} %%{size_download}' %s/mid.bin")
          :format(outs[i], s.url))
      end
      socket.sleep(0.3)
      stats(s, true) -- the timer's gap from now on
      local worst = 0
      for _ = 1, 6 do
        local t = tonumber(curl("-o /dev/null -w '%{time_total}' " .. s.url .. "/hello.txt"))
        worst = math.max(worst, t)
        socket.sleep(0.3)
      end
      local st = stats(s)
      for i = 1, 2 do
        assert.are.equal("200 " .. #MID, dls[i]:read("a"))
        dls[i]:close()
        assert.is_true(H.read_file(outs[i]) == MID, "slow download " .. i .. " differs")
      end
      print(("luv (%s) example: small request max %.1f ms during 2 x curl --limit-rate 1M; 10 ms timer max gap %.1f ms")
        :format(host.name, worst * 1000, st.max_gap_ms))
      assert.is_true(worst < 0.5, "small request took " .. worst .. " s")
      assert.is_true(st.max_gap_ms < 100, "loop stalled: max timer gap " .. st.max_gap_ms .. " ms")
      assert.are.equal(0, st.failures)
    end)

    it("a client that never reads ends with ETIMEDOUT; the server keeps serving meanwhile and after", function()
      stop_server(s)
      s = start_server(host, "ZCSEND_TIMEOUT=1")
      local c = C.raw_get(s.port, "/big.bin")
      local t0 = socket.gettime()
      assert.are.equal(HELLO, curl(s.url .. "/hello.txt")) -- while it is stuck
      assert.is_true(C.wait_for(function() return stats(s)["error.ETIMEDOUT"] == 1 end, 10))
      local took = socket.gettime() - t0
      local sent, total = H.read_file(s.log):match("sendfile /big.bin: ETIMEDOUT: no progress for 1 s %(sent (%d+) of (%d+)%)")
      assert.are.equal(tostring(#BIG), total)
      assert.is_true(tonumber(sent) > 0 and tonumber(sent) < #BIG)
      assert.is_true(took >= 1 and took < 6, "took " .. took)
      assert.are.equal(1, stats(s).failures)
      c:close()
      assert.are.equal("200 " .. #SMALL, C.status(s.url .. "/small.bin", true))
    end)

    it("a peer that resets mid-transfer gives ECONNRESET or EPIPE and the server survives", function()
      local c = C.raw_get(s.port, "/big.bin")
      c:settimeout(10)
      assert(c:receive(MiB))
      C.reset(c)
      assert.is_true(C.wait_for(function() return stats(s).failures == 1 end, 10))
      local st = stats(s)
      assert.are.equal(1, (st["error.ECONNRESET"] or 0) + (st["error.EPIPE"] or 0))
      local name, sent = H.read_file(s.log):match("sendfile /big.bin: (E%u+): [^\n]* %(sent (%d+) of %d+%)")
      assert.is_truthy(name == "ECONNRESET" or name == "EPIPE", name)
      assert.is_true(tonumber(sent) >= MiB - 200 and tonumber(sent) < #BIG)
      assert.is_true(alive(s))
      assert.are.equal("200 " .. #SMALL, C.status(s.url .. "/small.bin", true))
      assert.is_true(C.wait_for(function() return stats(s).connections == 1 end, 5)) -- the reset one is gone
    end)

    it("gives back fds and memory: 1,000 transfers on new and kept-alive connections", function()
      local function batch(n) -- n curls of 100 transfers each, all bytes counted
        for _ = 1, n do
          assert.are.equal(tostring(100 * #SMALL),
            curl(("'%s/small.bin?i=[1-100]' | wc -c"):format(s.url)):match("(%d+)"))
        end
      end
      local function settled() -- no connection but the one asking
        return C.wait_for(function() return stats(s).connections == 1 end, 5)
      end
      batch(2) -- warm up: buffers, the allocator's arenas
      assert.is_true(settled())
      local st0, fds0, rss0 = stats(s), C.fd_count(s.pid), C.rss_kb(s.pid)
      batch(10)
      assert.is_true(settled())
      assert.is_true(C.wait_for(function() return C.fd_count(s.pid) == fds0 end, 5),
        ("fds: %d before, %d after"):format(fds0, C.fd_count(s.pid)))
      local st, rss = stats(s), C.rss_kb(s.pid)
      assert.are.equal(st0.transfers + 1000, st.transfers)
      assert.are.equal(0, st.failures)
      print(("luv (%s) example, 1,000 transfers: fds %d -> %d, Lua heap %d -> %d KiB, RSS %d -> %d KiB")
        :format(host.name, fds0, C.fd_count(s.pid), st0.lua_kb, st.lua_kb, rss0, rss))
      assert.is_true(st.lua_kb <= st0.lua_kb + 64, ("Lua heap %d -> %d KiB"):format(st0.lua_kb, st.lua_kb))
      assert.is_true(rss <= rss0 + 1024, ("RSS %d -> %d KiB"):format(rss0, rss))
    end)
  end)
end
