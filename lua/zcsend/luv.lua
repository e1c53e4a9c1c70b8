--- zcsend.luv: the luv host adapter (zcsend.lua loads it once luv is loaded;
-- verified with luv 1.44 / libuv 1.44 under Lua 5.4 and LuaJIT 2.1).
--
-- Two forms, the same results (sent | nil, msg, name, sent):
--
--   * coroutine form: zcsend.sendfile(handle, file [, offset [, count [, opts]]])
--     inside a coroutine that luv callbacks resume (one coroutine per
--     connection, as luvit's coro-* libraries do, or coroutine.wrap(fn)()
--     before uv.run()): the coroutine yields while the socket is full and luv
--     resumes it, every other handle runs meanwhile;
--
--   * callback form, for callback-style luv code:
--       local zluv = require "zcsend.luv"
--       zluv.sendfile(handle, file [, offset [, count [, opts]]], function(sent, msg, name, partial) end)
--     runs the coroutine form in a coroutine of its own; the callback always
--     runs later, from the loop (never from inside this call, like luv's own
--     callbacks); argument errors are raised at once.
--
-- Sockets: luv stream handles (uv.new_tcp(), uv.new_pipe(), uv.new_tty()) are
-- accepted as they are, through uv.fileno(handle). A closed or closing one, or
-- one with no fd yet (never connected), gives nil, "EBADF: ...", "EBADF", 0.
-- luv has no TLS of its own: a TLS layer written over a handle (luvit's tls)
-- must send through that layer, never give zcsend its raw handle.
--
-- Output queued with uv.write goes first: bytes sendfile puts on the fd would
-- otherwise overtake a response head uv.write has queued but not yet written
-- (a slow reader, a big head, the tail of the last response). While the
-- handle's write queue is not empty, zcsend waits (yielding) for the socket to
-- be writable, as libuv does to write its queue, until
-- uv.stream_get_write_queue_size(handle) is 0 (zcsend.luv.drain); it writes
-- nothing itself (an empty uv.write behind the queue would do, but raises
-- SIGPIPE when the peer has gone). No progress of that queue for opts.timeout
-- (the callback form, and the coroutine form with a zcsend.lua that calls
-- prepare()) or zcsend.TIMEOUT seconds (the coroutine form otherwise) ends the
-- call with nil, "ETIMEDOUT: ...", "ETIMEDOUT", 0. The drain happens once the
-- transfer holds its dups when zcsend.lua calls the owning adapter's
-- prepare(sock, timeout) (zcsend._prepare); otherwise in sockfd(), before
-- zcsend.lua has looked at the file: the callback form then takes its own
-- dup of the file first, the coroutine form can't (an integer file fd closed
-- and its number reused by another coroutine during that wait would be read
-- from: give io handles, or use the callback form).
--
-- Waiting: wait(fd, events, timeout) starts a uv poll handle on zcsend's own
-- dup of the fd and a one-shot uv timer, yields, and is resumed by whichever
-- fires first; it then stops and closes both before it returns. Stopping a uv
-- poll handle removes its fd from libuv's epoll set at once (uv_poll_stop ->
-- uv__platform_invalidate_fd: EPOLL_CTL_DEL), so zcsend may close the dup
-- right after, and no stale epoll entry outlives the wait. uv_poll_init sets
-- O_NONBLOCK on the fd's open file description: only fds that are non-blocking
-- already are polled that way (zcsend's socket dups always are during a
-- transfer; luv's own handles are). A blocking fd (a pipe as the file, a
-- blocking socket given as an integer to zcsend.wait) is watched with poll(2)
-- at timeout 0 from a uv timer (every 1 ms, backing off to 10 ms), so no flag
-- of an fd zcsend does not own is ever changed. A poll error (POLLERR: the
-- peer reset the connection; libuv reports it as EBADF) counts as ready: the
-- transfer's next step then says what really happened (ECONNRESET, EPIPE);
-- luv 1.44 itself prints "EBADF: bad file descriptor" on stderr for it (its
-- poll callback does, for every poll error).
--
-- SIGPIPE: libuv does not ignore it, and its own writes (uv.write of a head to
-- a peer that reset) raise it; like any luv server, ignore it
-- (uv.new_signal():start("sigpipe", function() end)). zcsend's own writes
-- never raise it.
--
-- Where zcsend can't wait without blocking the loop it refuses instead, before
-- a byte is written: a luv handle given to zcsend.sendfile on the main
-- coroutine while uv.run() runs (a plain luv callback) gives nil, "EAGAIN:
-- ...", "EAGAIN", 0 — use the callback form, or call it from a coroutine. Other
-- sockets waited on there end the same way (with the bytes sent so far).
-- Outside uv.run() on the main coroutine (a plain script) zcsend blocks in
-- poll(2) as it does without luv.
--
-- The coroutine that waits must be resumed by nothing else meanwhile; a
-- coroutine a cqueues controller runs waits through cqueues, not luv.
local uv = require "luv"
local core = require "zcsend.core"

local M = { name = "luv" }

local STREAMS = { tcp = true, pipe = true, tty = true }
local registry = debug.getregistry()
local pack = table.pack or function(...) return { n = select("#", ...), ... } end
local unpack = table.unpack or unpack

-- the kind of luv stream handle h is ("tcp", "pipe", "tty"), or nil: any
-- other value, or a luv handle that is not a stream (a timer, udp...)
local function stream_kind(h)
  if type(h) ~= "userdata" then
    return nil
  end
  local mt = getmetatable(h)
  if mt == nil then
    return nil
  end
  for kind in pairs(STREAMS) do
    if registry["uv_" .. kind] == mt then
      return kind
    end
  end
  return nil
end
M.stream_kind = stream_kind

-- true inside a coroutine luv callbacks can resume: not the main one, able to
-- yield, and not a cqueues controller's (that one waits through cqueues)
local function in_coroutine()
  local co, main = coroutine.running()
  if co == nil or main or not coroutine.isyieldable() then
    return false
  end
  local cq = package.loaded.cqueues
  return not (cq and cq.running and cq.running() ~= nil)
end

local function loop_running()
  return uv.loop_mode() ~= nil
end

function M.active()
  return in_coroutine() or loop_running()
end

local NOWAIT = "EAGAIN: zcsend can't wait here without blocking the luv loop: "
  .. "call zcsend.sendfile from a coroutine, or use require('zcsend.luv').sendfile(handle, file, "
  .. "offset, count, opts, callback)"
local QUEUED = "EAGAIN: %d bytes written with uv.write are still queued on the handle and can't be "
  .. "waited for here: call zcsend.sendfile from a coroutine, or use require('zcsend.luv').sendfile"
local ETIMEDOUT_MSG = "ETIMEDOUT: no progress for %g s"

-- start(wake) arranges for wake(...) to be called from the loop; the running
-- coroutine sleeps until it is, and gets wake's arguments. A resume from
-- anyone else meanwhile is ignored (we sleep on).
local function sleep_until(start)
  local co = coroutine.running()
  local res, sleeping = nil, false
  start(function(...)
    if res then
      return
    end
    res = pack(...)
    if sleeping then -- its errors go up (luv reports them as a callback's) with its traceback
      local ok, err = coroutine.resume(co)
      if not ok then
        error(debug.traceback(co, tostring(err)), 0)
      end
    end
  end)
  while not res do
    sleeping = true
    coroutine.yield()
    sleeping = false
  end
  return unpack(res, 1, res.n)
end

-- sleeps ms milliseconds (a uv timer), yielding
local function sleep(ms)
  local timer = uv.new_timer()
  sleep_until(function(wake) timer:start(ms, 0, wake) end)
  timer:close()
end

-- O_NONBLOCK set on fd's open file description? (fcntl(F_GETFL) through a
-- zcsend.core that has core.nonblocking(fd); else Linux's /proc/self/fdinfo)
local O_NONBLOCK = 2048 -- 04000 on x86 and arm
local nonblocking = core.nonblocking and function(fd)
  return core.nonblocking(fd) == true
end or function(fd)
  local f = io.open("/proc/self/fdinfo/" .. fd, "r")
  if not f then
    return false
  end
  local info = f:read("a")
  f:close()
  local flags = info and info:match("flags:%s*(%d+)")
  return flags ~= nil and math.floor(tonumber(flags, 8) / O_NONBLOCK) % 2 == 1
end

-- counters, for tests and curious users: polls (uv poll waits), ticks (poll(2)
-- timer waits), drains (queued uv.write output waited for)
M.counters = { polls = 0, ticks = 0, drains = 0 }

--- wait(fd, events, timeout) -> true (ready), false (timeout) | nil, msg, name
function M.wait(fd, events, timeout)
  if not in_coroutine() then
    return nil, NOWAIT, "EAGAIN"
  end
  local ms = math.max(1, math.ceil(timeout * 1000))
  local timer = uv.new_timer()
  -- nil when libuv can't (EPERM: a regular file; EEXIST: the number is still
  -- on its books): then poll(2) from the timer
  local poll = nonblocking(fd) and uv.new_poll(fd) or nil
  local ok, msg, name = sleep_until(function(wake)
    -- an error (POLLERR, said as EBADF) is readiness: the next step tells
    if poll and poll:start(events, function() wake(true) end) then
      M.counters.polls = M.counters.polls + 1
      timer:start(ms, 0, function() wake(false) end)
      return
    end
    if poll then
      poll:close()
      poll = nil
    end
    M.counters.ticks = M.counters.ticks + 1
    local deadline, every = uv.now() + ms, 1
    local function tick()
      local ready, perr, pname = core.poll(fd, events, 0)
      local left = deadline - uv.now()
      if ready then
        wake(true)
      elseif ready == nil then
        wake(nil, perr, pname)
      elseif left <= 0 then
        wake(false)
      else
        every = math.min(every * 2, 10)
        timer:start(math.min(every, left), 0, tick)
      end
    end
    timer:start(1, 0, tick)
  end)
  if poll then
    poll:stop() -- EPOLL_CTL_DEL now: zcsend closes fd once we return
    poll:close()
  end
  timer:stop()
  timer:close()
  if ok ~= nil then
    return ok
  end
  return nil, msg, name
end

--- zcsend.luv.drain(handle [, timeout]) -> true | nil, msg, name: returns once
-- everything uv.write queued on handle has been written (at once when nothing
-- is queued); yields, so only inside a coroutine luv resumes. ETIMEDOUT: the
-- queue did not shrink for timeout seconds (default zcsend.TIMEOUT); EBADF:
-- the handle was closed meanwhile. Writes nothing itself (libuv does, as the
-- socket takes it): a write of ours could raise SIGPIPE on a peer that went.
function M.drain(handle, timeout)
  local queued = uv.stream_get_write_queue_size(handle)
  if queued == 0 then
    return true
  end
  if not in_coroutine() then
    return nil, QUEUED:format(queued), "EAGAIN"
  end
  timeout = timeout or require("zcsend").TIMEOUT
  M.counters.drains = M.counters.drains + 1
  local fd = uv.fileno(handle)
  local own, msg, name = core.hold(fd or -1) -- (closed with the box should we never be resumed)
  if not own then
    return nil, msg, name
  end
  -- libuv writes its queue when the socket turns writable; so does our poll
  -- of the same socket wake us: look at the queue each time
  local last, since, ok, idle = queued, core.now(), true, 0
  while true do
    if handle:is_closing() then
      ok, msg, name = nil, "EBADF: luv handle closed while its queued output was written", "EBADF"
      break
    end
    local size = uv.stream_get_write_queue_size(handle)
    local now = core.now()
    if size == 0 then
      break
    elseif size < last then
      last, since, idle = size, now, 0
    elseif now - since >= timeout then
      ok, msg, name = nil, ETIMEDOUT_MSG:format(timeout), "ETIMEDOUT"
      break
    end
    if idle > 0 then -- woken without progress (an error pending on the socket
      -- that libuv has not seen yet): don't spin on it
      sleep(math.min(2 ^ idle, 10))
    end
    local woke, werr, wname = M.wait(own:fd(), "w", math.min(0.1, since + timeout - now))
    if woke == nil then
      ok, msg, name = nil, werr, wname
      break
    end
    idle = idle + 1
  end
  own:close()
  return ok, msg, name
end

-- true when zcsend.lua calls the prepare() of the adapter that owns a socket
-- once the transfer holds its dups (then sockfd does not wait)
local function prepares()
  local z = package.loaded.zcsend
  return type(z) == "table" and z._prepare == true
end

--- sockfd(sock) -> fd, false for luv stream handles (after their queued
-- output has gone out); nil for anything else; nil, msg, name for a closed one
function M.sockfd(sock)
  if not stream_kind(sock) then
    return nil
  end
  if sock:is_closing() then
    return nil, "EBADF: luv handle is closed", "EBADF"
  end
  if not in_coroutine() and loop_running() then
    return nil, NOWAIT, "EAGAIN"
  end
  if not prepares() then -- else zcsend calls prepare() once it holds its dups
    local ok, msg, name = M.drain(sock)
    if not ok then
      return nil, msg, name
    end
  end
  local fd, err = uv.fileno(sock)
  if not fd then -- never connected: libuv opens a TCP socket lazily
    return nil, "EBADF: luv handle has no fd (" .. tostring(err) .. ")", "EBADF"
  end
  return fd, false
end

--- prepare(sock, timeout): for a zcsend.lua that calls it before the
-- transfer: the queued uv.write output of a luv handle goes first (with the
-- call's own timeout)
function M.prepare(sock, timeout)
  if stream_kind(sock) and not sock:is_closing() then
    return M.drain(sock, timeout)
  end
  return true
end

-- ---- the callback form --------------------------------------------------------

-- raised at the caller of zcsend.luv.sendfile (level: argerror <- ... <- it)
local function argerror(n, msg, level)
  error(("bad argument #%d to 'sendfile' (%s)"):format(n, msg), level or 4)
end

local tointeger = math.tointeger or function(x)
  return type(x) == "number" and x == math.floor(x) and x or nil
end

local function isint(x)
  if math.type then
    return math.type(x) == "integer"
  end
  return tointeger(x) ~= nil
end

-- the checks zcsend.sendfile makes, made here before anything starts, so
-- that they raise at the caller (zcsend's own come only after a drain)
local function check_args(handle, file, offset, count, opts)
  if not stream_kind(handle) then
    argerror(1, "luv stream handle (tcp, pipe, tty) expected, got " .. type(handle))
  end
  if io.type(file) == "closed file" then
    argerror(2, "attempt to use a closed file")
  elseif io.type(file) ~= "file" and not (isint(file) and file >= 0) then
    argerror(2, "file handle or fd expected, got " .. type(file))
  end
  if offset ~= nil and not isint(offset) then
    argerror(3, "offset must be an integer")
  elseif offset and offset < 0 then
    argerror(3, "offset must be non-negative")
  end
  if count ~= nil and not isint(count) then
    argerror(4, "count must be an integer")
  elseif count and count <= 0 then
    argerror(4, "count must be positive")
  end
  local t = type(opts) == "table" and opts.timeout or opts
  if t ~= nil and (type(t) ~= "number" or not (t > 0)) then
    argerror(5, "timeout must be a positive number of seconds")
  end
  return t
end

--- zcsend.luv.sendfile(handle, file [, offset [, count [, opts]]], callback)
-- callback(sent | nil, msg, name, sent), from the loop. opts.timeout (or a
-- number): seconds without progress, for the queued output and the transfer.
-- Returns nothing; argument errors raise here.
function M.sendfile(handle, file, offset, count, opts, callback)
  if type(offset) == "function" then
    offset, count, opts, callback = nil, nil, nil, offset
  elseif type(count) == "function" then
    count, opts, callback = nil, nil, count
  elseif type(opts) == "function" then
    opts, callback = nil, opts
  end
  if type(callback) ~= "function" then
    argerror(6, "callback function expected, got " .. type(callback), 3)
  end
  local timeout = check_args(handle, file, offset, count, opts)
  local zcsend = require "zcsend"
  local starting = true
  local co = coroutine.create(function()
    local r
    if handle:is_closing() then
      r = pack(true, nil, "EBADF: luv handle is closed", "EBADF", 0)
    elseif prepares() then -- zcsend drains the queue itself, once it holds its dups
      r = pack(pcall(zcsend.sendfile, handle, file, offset, count, opts))
    else
      -- the file as it is now: the drain may take a while, and the caller's fd
      -- be closed and its number reused meanwhile
      local own, msg, name = core.hold(io.type(file) == "file" and core.fileno(file) or file)
      local ok = own ~= nil
      if ok then
        ok, msg, name = M.drain(handle, timeout)
      end
      if ok then
        r = pack(pcall(zcsend.sendfile, handle, own:fd(), offset, count, opts))
      else
        r = pack(true, nil, msg, name, 0)
      end
      if own then
        own:close()
      end
    end
    if not r[1] then -- raised: at the caller while it still runs, else to the callback
      if starting then
        error(r[2], 0)
      end
      r = pack(true, nil, "EINVAL: " .. tostring(r[2]), "EINVAL", 0)
    end
    if starting then -- ended without waiting: the callback still comes from the loop
      sleep(0)
    end
    callback(unpack(r, 2, r.n))
  end)
  local ok, err = coroutine.resume(co)
  starting = false
  if not ok then
    error(err, 0)
  end
end

return M
