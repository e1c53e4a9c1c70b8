--- zcsend: zero-copy file sending for Lua 5.4 coroutine hosts.
--
--   local zcsend = require "zcsend"
--   local sent, err, name, partial = zcsend.sendfile(sock, file [, offset [, count]])
--
-- How sendfile waits depends on where it is called from:
--   * inside a coroutine started by loop:wrap() (zcsend's own libev loop): it
--     yields, and the loop resumes it when the transfer has ended;
--   * inside a cqueues controller: it waits with cqueues.poll on the transfer;
--   * anywhere else: it blocks in poll(2).
-- The results are the same in all three. Runtime failures return
-- nil, "ENAME: message", "ENAME", bytes_sent; bad arguments raise.
--
-- fds: an fd is an integer from 0 to 2^31-1 (never truncated); a transfer
-- works on dup()s of the caller's fds taken at the call, so the number of a
-- socket closed meanwhile can never receive a byte of it, and a call whose
-- socket another coroutine closed ends with nil, msg, "EBADF", sent (within
-- 0.1 s, never as a success).
local core = require "zcsend.core"

local M = {}

-- Lua 5.4 tells integers from floats; LuaJIT (5.1) has only doubles, where an
-- integral value is taken as an integer
local mtype = math.type or function(x)
  if type(x) ~= "number" then
    return nil
  end
  return (x == math.floor(x) and x >= -2 ^ 53 and x <= 2 ^ 53) and "integer" or "float"
end
local tointeger = math.tointeger or function(x)
  return mtype(x) == "integer" and x or nil
end
M._integer = tointeger

-- TLS objects are written through their own send() in chunks of this size
M.TLS_CHUNK = 128 * 1024

local owners = setmetatable({}, { __mode = "k" }) -- coroutine -> the loop that runs it

-- raised at the caller of the public function: argerror <- helper <- public <- caller
local function argerror(n, fname, msg, level)
  error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), level or 4)
end

local INT_MAX = 2147483647

-- an fd the caller gave (or its object's getfd() said): negative is closed,
-- beyond an int is out of range, as zcsend.core says too
local function checkfd(fd, n, fname, closed)
  if fd < 0 then
    argerror(n, fname, closed, 5)
  elseif fd > INT_MAX then
    local shown = math.type and ("%d"):format(fd) or ("%.0f"):format(fd)
    argerror(n, fname, ("fd %s out of range"):format(shown), 5)
  end
  return fd
end

--- true for objects that must never get plaintext on their fd: luasec
-- connections (metatable "SSL:Connection"), cqueues sockets with TLS started,
-- and any object with a truthy zcsend_tls field.
function M.istls(sock)
  if type(sock) ~= "userdata" and type(sock) ~= "table" then
    return false
  end
  local mt = getmetatable(sock)
  if type(mt) == "table" and (mt.__name == "SSL:Connection" -- 5.4; 5.1 has no __name:
      or (debug and debug.getregistry and mt == debug.getregistry()["SSL:Connection"])) then
    return true
  end
  local ok, marked = pcall(function() return sock.zcsend_tls end)
  if ok and marked then
    return true
  end
  local ok2, checktls = pcall(function() return sock.checktls end)
  if ok2 and type(checktls) == "function" then
    return checktls(sock) ~= nil
  end
  return false
end

-- the socket's fd, and whether it is TLS (or nil, msg, name: a cqueues
-- socket's buffered output could not be flushed; noflush: leave it buffered)
local function sockfd(sock, fname, noflush)
  if mtype(sock) == "integer" then
    return checkfd(sock, 1, fname, "closed socket"), false
  end
  if type(sock) == "number" then
    argerror(1, fname, "socket fd must be an integer")
  end
  local tls = M.istls(sock)
  local fd
  local ok, getfd = pcall(function() return sock.getfd end)
  if ok and type(getfd) == "function" then
    fd = getfd(sock) -- luasocket: a float on 5.3+
  else
    local ok2, pollfd = pcall(function() return sock.pollfd end)
    if ok2 and type(pollfd) == "function" then -- cqueues socket: its buffered output first
      if not tls and not noflush and sock.flush then
        local ok3, flushed, err = pcall(sock.flush, sock)
        if ok3 and not flushed then
          if mtype(err) == "integer" then
            return nil, core.strerror(err)
          end
          return nil, "EIO: " .. tostring(err), "EIO"
        end
      end
      ok2, fd = pcall(pollfd, sock) -- raises once closed
      fd = ok2 and fd or -1
    else
      argerror(1, fname, "socket, fd or object with getfd() expected, got " .. type(sock))
    end
  end
  return checkfd(tointeger(fd) or -1, 1, fname, "closed socket"), tls
end

local function filefd(file, fname)
  if mtype(file) == "integer" then
    local fd = checkfd(file, 2, fname, "closed file")
    return fd
  end
  if io.type(file) == "closed file" then
    argerror(2, fname, "attempt to use a closed file")
  end
  if io.type(file) ~= "file" then
    argerror(2, fname, "file handle or fd expected, got " .. type(file))
  end
  return core.fileno(file)
end

local function check_range(offset, count, fname)
  if offset ~= nil and mtype(offset) ~= "integer" then
    argerror(3, fname, "offset must be an integer")
  end
  if offset and offset < 0 then
    argerror(3, fname, "offset must be non-negative")
  end
  if count ~= nil and mtype(count) ~= "integer" then
    argerror(4, fname, "count must be an integer")
  end
  if count and count <= 0 then
    argerror(4, fname, "count must be positive")
  end
end

-- resumes a coroutine the loop runs; its errors go up with their traceback
local function resume(co, ...)
  local ok, err = coroutine.resume(co, ...)
  if not ok then
    error(debug.traceback(co, tostring(err)), 0)
  end
end

local function in_cqueues()
  local cq = package.loaded.cqueues
  return cq ~= nil and cq.running() ~= nil
end

-- how often a cqueues wait checks that its fd is still the caller's (zcsend's
-- loop does the same in C)
local CHECK = 0.1

-- How to wait for an fd here: yield to our loop, to cqueues, or block. The
-- waiter returns true, or nil, msg, "EBADF" once another coroutine has closed
-- the fd (its number naming something else, or nothing, ends the wait).
local function fd_waiter()
  local co = coroutine.running()
  local lp = owners[co]
  if lp then
    return function(fd, events)
      lp:wait(fd, events, function(...) resume(co, ...) end)
      return coroutine.yield()
    end
  elseif in_cqueues() then
    -- cqueues raises when an fd it polls is closed behind its back (as another
    -- coroutine may do to fd): it polls our own dup, forgotten before we close it
    local cqueues = package.loaded.cqueues
    return function(fd, events)
      local id, msg, name = core.fdid(fd)
      local own = id
      if id then
        own, msg, name = core.dup(fd)
      end
      if not own then
        return nil, msg, name
      end
      local watch, ok = { pollfd = own, events = events }, nil
      repeat
        local ready = cqueues.poll(watch, CHECK) == watch
        if core.fdid(fd) ~= id then
          ok, msg, name = nil, "EBADF: fd closed while waiting", "EBADF"
        elseif ready then
          ok = true
        end
      until ok or name
      cqueues.cancel(own)
      core.close(own)
      return ok, msg, name
    end
  end
  return function(fd, events) -- nothing else runs while we block
    local ok, msg, name = core.poll(fd, events)
    if not ok then
      return nil, msg, name
    end
    return true
  end
end

-- runs a core transfer to its end, waiting as the host wants
local function drive(t)
  local co = coroutine.running()
  local lp = owners[co]
  if lp then -- zcsend's libev driver steps it; we sleep until it has ended
    local ended, sleeping = false, false
    lp:drive(t, function()
      ended = true
      if sleeping then
        resume(co)
      end
    end)
    if not ended then
      sleeping = true
      coroutine.yield()
    end
  else
    local cqueues = in_cqueues() and package.loaded.cqueues
    while true do
      local r = t:step()
      if r == "done" or r == nil then
        break
      end
      if cqueues then -- on the transfer's own dup (see fd_waiter); the step checks the socket
        local fd = t:ownfd()
        cqueues.poll({ pollfd = fd, events = t:events() }, CHECK)
        cqueues.cancel(fd)
      else
        core.poll(t:pollfd(), t:events())
      end
    end
  end
  local ok, err, name, sent = t:result()
  if ok then
    return t:sent()
  end
  return nil, err, name, sent
end

-- TLS: never plaintext on the fd. Read bounded chunks, send them with the
-- object's own send(), wait on its fd when it wants to write or read. The file
-- is read through a dup taken now (ffd may be closed and reused meanwhile).
local EBADF_CLOSED = "EBADF: socket closed during the transfer"

local function send_tls_from(sock, fd, ffd, offset, count)
  local kind, size, ename = core.fileinfo(ffd)
  if not kind then
    return nil, size, ename, 0
  end
  if kind == "directory" then
    return nil, "EISDIR: Is a directory", "EISDIR", 0
  end
  local id = core.fdid(fd)
  local seekable = kind == "file"
  local total = count
  if seekable then
    local avail = math.max(0, size - offset)
    total = count and math.min(count, avail) or avail
  end
  local wait = fd_waiter()
  local blocking = not owners[coroutine.running()] and not in_cqueues()
  if not blocking and sock.settimeout then
    sock:settimeout(0) -- these hosts need it non-blocking; they wait for us
  end
  core.host_begin()
  local sent = 0
  local function fail(code, msg, name)
    core.host_end(code, sent)
    return nil, msg, name, sent
  end
  while total == nil or sent < total do
    local want = total and math.min(M.TLS_CHUNK, total - sent) or M.TLS_CHUNK
    if not seekable and not blocking then
      local ok, err, name = wait(ffd, "r") -- a pipe: don't block the host in read()
      if not ok then
        return fail(core.EIO, err, name)
      end
    end
    if core.fdid(fd) ~= id then
      return fail(core.EBADF, EBADF_CLOSED, "EBADF")
    end
    local data, err, name = core.read(ffd, seekable and offset + sent or -1, want)
    if not data then
      return fail(core.EIO, err, name)
    end
    if #data == 0 then
      if total and seekable then
        return fail(core.ETRUNCATED, "ETRUNCATED: file ended before the requested byte count was sent",
          "ETRUNCATED")
      end
      break
    end
    local i = 1
    while i <= #data do
      local last, serr, partial = sock:send(data, i)
      if last then
        i = tointeger(last) + 1 -- luasocket's counts are floats on 5.3+
      else
        partial = partial and tointeger(partial)
        if partial and partial >= i then
          i = partial + 1
        end
        local ok, werr, wname = true, nil, nil
        if serr == "wantwrite" or serr == "timeout" then
          ok, werr, wname = wait(fd, "w")
        elseif serr == "wantread" then
          ok, werr, wname = wait(fd, "r")
        elseif core.fdid(fd) ~= id then -- "closed": by another coroutine, not by the peer
          ok = nil
        else
          sent = sent + (i - 1)
          return fail(core.EPIPE, "EPIPE: TLS send failed: " .. tostring(serr), "EPIPE")
        end
        if not ok then
          sent = sent + (i - 1)
          if wname and wname ~= "EBADF" then
            return fail(core.EIO, werr, wname)
          end
          return fail(core.EBADF, EBADF_CLOSED, "EBADF")
        end
      end
    end
    sent = sent + #data
  end
  core.host_end(0, sent)
  return sent
end

local function send_tls(sock, fd, ffd, offset, count)
  local dfd, err, name = core.dup(ffd)
  if not dfd then
    return nil, err, name, 0
  end
  local res = { pcall(send_tls_from, sock, fd, dfd, offset, count) }
  if in_cqueues() then
    package.loaded.cqueues.cancel(dfd) -- cqueues must forget an fd it polled before it closes
  end
  core.close(dfd)
  if not res[1] then
    error(res[2], 0)
  end
  return res[2], res[3], res[4], res[5]
end

--- zcsend.sendfile(sock, file [, offset [, count]]) -> sent | nil, msg, name, sent
-- sock: integer fd, luasocket TCP/Unix object, cqueues socket, any object with
-- getfd(), or a TLS object (through its own send()). file: io handle or fd.
-- count defaults to the rest of the file (of a pipe: to its end).
function M.sendfile(sock, file, offset, count)
  local fd, tls, ename = sockfd(sock, "sendfile")
  if not fd then
    return nil, tls, ename, 0
  end
  local ffd = filefd(file, "sendfile")
  check_range(offset, count, "sendfile")
  if tls then
    return send_tls(sock, fd, ffd, offset or 0, count)
  end
  local t, err, name, sent = core.transfer(fd, ffd, offset, count)
  if not t then
    return nil, err, name, sent
  end
  local r1, r2, r3, r4 = drive(t)
  t:close()
  return r1, r2, r3, r4
end

--- zcsend.wait(sock_or_fd, "r"|"w") -> true | nil, msg, name: waits until the
-- socket is readable or writable, the way sendfile would here (yield to
-- zcsend's loop or to cqueues, or block), so a host can read requests and
-- write headers the same way. EBADF: another coroutine closed the socket.
function M.wait(sock, events)
  local fd, err, ename = sockfd(sock, "wait")
  if not fd then
    return nil, err, ename
  end
  if events ~= "r" and events ~= "w" and events ~= "rw" then
    argerror(2, "wait", '"r", "w" or "rw" expected', 3)
  end
  return fd_waiter()(fd, events)
end

--- zcsend.transfer(sock, file [, offset [, count]]) -> transfer | nil, msg, name, 0
-- A transfer object any host that waits on fds can drive: t:step() returns
-- "done", "write", "read", "source" (wait, then step again) or nil, msg,
-- name, sent; t:pollfd(), t:events(), t:timeout() are cqueues' pollable
-- protocol (pollfd is the caller's fd, though bytes go to the transfer's own
-- dup of it; timeout makes the host step again within 0.1 s, and a step
-- notices a socket closed meanwhile);
-- t:sent(), t:done(), t:result(), t:cancel(), t:close().
function M.transfer(sock, file, offset, count)
  local fd, tls, ename = sockfd(sock, "transfer")
  if not fd then
    return nil, tls, ename, 0
  end
  if tls then
    argerror(1, "transfer", "TLS objects can't be stepped: use zcsend.sendfile", 3)
  end
  local ffd = filefd(file, "transfer")
  check_range(offset, count, "transfer")
  return core.transfer(fd, ffd, offset, count)
end

--- zcsend.loop() -> a libev loop: loop:wrap(fn, ...), loop:sendfile(sock, file,
-- offset, count, callback), loop:wait(fd, "r"|"w", callback), loop:run(),
-- loop:stop(). wait's callback gets true, or nil, msg, "EBADF" when the fd's
-- number stopped naming what it did at the call (closed, maybe reused).
-- Errors in callbacks and wrapped functions stop the loop and are raised by
-- run() with their traceback.
function M.loop()
  return core.loop()
end

local Loop = core.loop_methods

--- runs fn(...) as a coroutine on this loop; zcsend.sendfile inside it yields
function Loop:wrap(fn, ...)
  if type(fn) ~= "function" then
    argerror(1, "wrap", "function expected, got " .. type(fn), 3)
  end
  local co = coroutine.create(fn)
  owners[co] = self
  resume(co, ...)
  return co
end

--- loop:sendfile(sock, file, offset, count, callback): callback(sent | nil, msg, name, sent)
-- runs from loop:run(), never from inside this call (the transfer starts once
-- the socket is writable), so a callback's error always comes out of run().
function Loop:sendfile(sock, file, offset, count, callback)
  if type(callback) ~= "function" then
    argerror(5, "sendfile", "callback function expected, got " .. type(callback), 3)
  end
  local fd = sockfd(sock, "sendfile", true) -- sendfile flushes, and says if that failed
  filefd(file, "sendfile")
  check_range(offset, count, "sendfile")
  self:wait(fd, "w", function(ok, msg, name)
    if not ok then
      return callback(nil, msg, name, 0)
    end
    self:wrap(function()
      callback(M.sendfile(sock, file, offset, count))
    end)
  end)
end

M.stats = core.stats
M.backend = core.backend
M._VERSION = "0.1.0"

return M
