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

-- the socket's fd, and whether it is TLS
local function sockfd(sock, fname)
  if mtype(sock) == "integer" then
    return sock, false
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
      if not tls and sock.flush then
        local flushed, err = sock:flush()
        if not flushed then
          return nil, err
        end
      end
      fd = pollfd(sock)
    else
      argerror(1, fname, "socket, fd or object with getfd() expected, got " .. type(sock))
    end
  end
  fd = tointeger(fd)
  if not fd or fd < 0 then
    argerror(1, fname, "closed socket")
  end
  return fd, tls
end

local function filefd(file, fname)
  if mtype(file) == "integer" then
    if file < 0 then
      argerror(2, fname, "closed file")
    end
    return file
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

-- how to wait for an fd here: yield to our loop, to cqueues, or block
local function fd_waiter()
  local co = coroutine.running()
  local lp = owners[co]
  if lp then
    return function(fd, events)
      lp:wait(fd, events, function() resume(co) end)
      coroutine.yield()
    end
  elseif in_cqueues() then
    local cqueues = package.loaded.cqueues
    return function(fd, events)
      cqueues.poll({ pollfd = fd, events = events })
    end
  end
  return function(fd, events)
    core.poll(fd, events)
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
    local poll = in_cqueues() and package.loaded.cqueues.poll
    while true do
      local r = t:step()
      if r == "done" or r == nil then
        break
      end
      if poll then
        poll(t)
      else
        core.poll(t:pollfd(), t:events())
      end
    end
  end
  local ok, err, name = t:result()
  if ok then
    return t:sent()
  end
  return nil, err, name, t:sent()
end

-- TLS: never plaintext on the fd. Read bounded chunks, send them with the
-- object's own send(), wait on its fd when it wants to write or read.
local function send_tls(sock, fd, ffd, offset, count)
  local kind, size = core.fileinfo(ffd)
  if not kind then
    return nil, size, select(3, core.fileinfo(ffd)), 0
  end
  if kind == "directory" then
    return nil, "EISDIR: Is a directory", "EISDIR", 0
  end
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
      wait(ffd, "r") -- a pipe: don't block the host in read()
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
        i = last + 1
      else
        if partial and partial >= i then
          i = partial + 1
        end
        if serr == "wantwrite" or serr == "timeout" then
          wait(fd, "w")
        elseif serr == "wantread" then
          wait(fd, "r")
        else
          sent = sent + (i - 1)
          return fail(core.EPIPE, "EPIPE: TLS send failed: " .. tostring(serr), "EPIPE")
        end
      end
    end
    sent = sent + #data
  end
  core.host_end(0, sent)
  return sent
end

--- zcsend.sendfile(sock, file [, offset [, count]]) -> sent | nil, msg, name, sent
-- sock: integer fd, luasocket TCP/Unix object, cqueues socket, any object with
-- getfd(), or a TLS object (through its own send()). file: io handle or fd.
-- count defaults to the rest of the file (of a pipe: to its end).
function M.sendfile(sock, file, offset, count)
  local fd, tls = sockfd(sock, "sendfile")
  if not fd then
    return nil, "EIO: " .. tostring(tls), "EIO", 0
  end
  local ffd = filefd(file, "sendfile")
  check_range(offset, count, "sendfile")
  if tls then
    return send_tls(sock, fd, ffd, offset or 0, count)
  end
  local t, err, name = core.transfer(fd, ffd, offset, count)
  if not t then
    return nil, err, name, 0
  end
  local r1, r2, r3, r4 = drive(t)
  t:close()
  return r1, r2, r3, r4
end

--- zcsend.wait(sock_or_fd, "r"|"w"): waits until the socket is readable or
-- writable, the way sendfile would here (yield to zcsend's loop or to cqueues,
-- or block), so a host can read requests and write headers the same way.
function M.wait(sock, events)
  local fd = sockfd(sock, "wait")
  if events ~= "r" and events ~= "w" and events ~= "rw" then
    argerror(2, "wait", '"r", "w" or "rw" expected', 3)
  end
  fd_waiter()(fd, events)
end

--- zcsend.transfer(sock, file [, offset [, count]]) -> transfer | nil, msg, name
-- A transfer object any host that waits on fds can drive: t:step() returns
-- "done", "write", "read", "source" (wait, then step again) or nil, msg, name;
-- t:pollfd(), t:events(), t:timeout() are cqueues' pollable protocol;
-- t:sent(), t:done(), t:result(), t:cancel(), t:close().
function M.transfer(sock, file, offset, count)
  local fd, tls = sockfd(sock, "transfer")
  if tls then
    argerror(1, "transfer", "TLS objects can't be stepped: use zcsend.sendfile", 3)
  end
  local ffd = filefd(file, "transfer")
  check_range(offset, count, "transfer")
  return core.transfer(fd, ffd, offset, count)
end

--- zcsend.loop() -> a libev loop: loop:wrap(fn, ...), loop:sendfile(sock, file,
-- offset, count, callback), loop:wait(fd, "r"|"w", callback), loop:run(),
-- loop:stop(). Errors in callbacks and wrapped functions stop the loop and are
-- raised by run() with their traceback.
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
  local fd = sockfd(sock, "sendfile")
  filefd(file, "sendfile")
  check_range(offset, count, "sendfile")
  self:wait(fd, "w", function()
    self:wrap(function()
      callback(M.sendfile(sock, file, offset, count))
    end)
  end)
end

M.stats = core.stats
M.backend = core.backend
M._VERSION = "0.1.0"

return M
