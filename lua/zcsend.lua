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
-- and any object with a truthy zcsend_tls field; nil, msg where the object's
-- checktls() can't tell (cqueues without luaossl says "module 'openssl.ssl'
-- not found" for every socket): callers refuse it, never risk plaintext.
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
    local ssl, why = checktls(sock)
    if ssl ~= nil then
      return true
    elseif why ~= nil then
      return nil, "EOPNOTSUPP: can't tell whether this socket is TLS (its checktls() says: "
        .. tostring(why) .. "); refusing rather than risking plaintext on TLS"
    end
  end
  return false
end

-- the shipped adapters, loaded once their host shows itself
local SHIPPED = {
  { "zcsend.nginx", function() return type(rawget(_G, "ngx")) == "table" and ngx.get_phase ~= nil end },
  { "zcsend.tarantool", function() return rawget(_G, "_TARANTOOL") ~= nil end },
  { "zcsend.luv", function() return package.loaded.luv ~= nil end },
}
local adapters, shipped_loaded = {}, {}

local function host_adapters()
  for i, s in ipairs(SHIPPED) do
    if not shipped_loaded[i] and s[2]() then
      shipped_loaded[i] = true
      adapters[#adapters + 1] = require(s[1])
    end
  end
  return adapters
end

-- the socket's fd, and whether it is TLS (or nil, msg, name: a cqueues
-- socket's buffered output could not be flushed; noflush: leave it buffered);
-- with guard (the file's fd), a 5th value where the flush may have yielded: a
-- box (core.hold) of guard taken before it (another coroutine may close guard
-- and have its number reused meanwhile), the caller's to use instead and close;
-- waiting: for
-- zcsend.wait, which sends nothing: no TLS object is refused
local function sockfd(sock, fname, noflush, guard, waiting)
  if mtype(sock) == "integer" then
    return checkfd(sock, 1, fname, "closed socket"), false
  end
  if type(sock) == "number" then
    argerror(1, fname, "socket fd must be an integer")
  end
  for _, a in ipairs(host_adapters()) do -- the hosts' own objects first
    if a.sockfd then
      local afd, atls, aname = a.sockfd(sock)
      if afd then -- and the adapter whose object it is
        return checkfd(tointeger(afd) or -1, 1, fname, "closed socket"), atls, nil, a
      elseif atls then
        return nil, atls, aname
      end
    end
  end
  local tls, unknown = M.istls(sock)
  if tls == nil and not waiting then
    return nil, unknown, "EOPNOTSUPP"
  end
  local fd, own
  local ok, getfd = pcall(function() return sock.getfd end)
  if ok and type(getfd) == "function" then
    fd = getfd(sock) -- luasocket: a float on 5.3+
  else
    local ok2, pollfd = pcall(function() return sock.pollfd end)
    if ok2 and type(pollfd) == "function" then -- cqueues socket: its buffered output first
      -- (TLS: never flushed here; the file's chunks go through the same buffer, after it)
      if not tls and not noflush and sock.flush then
        if guard then
          local msg, name
          own, msg, name = core.hold(guard)
          if not own then
            return nil, msg, name
          end
        end
        local ok3, flushed, err = pcall(sock.flush, sock)
        if ok3 and not flushed then
          if own then
            own:close()
          end
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
  fd = tointeger(fd) or -1
  if own and (fd < 0 or fd > INT_MAX) then -- checkfd raises: our dup goes first
    own:close()
  end
  return checkfd(fd, 1, fname, "closed socket"), tls, nil, nil, own
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
  local fd, ahead = core.fileno(file)
  if ahead > 0 then -- sent from the fd, they would be skipped: a hole in the stream
    argerror(2, fname, ("the handle holds %d bytes of its pipe read ahead (it was read from):"
      .. " pass a handle not read from, or an fd"):format(ahead))
  end
  return fd
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

-- Every wait is cut into slices of at most CHECK seconds: after each, zcsend
-- checks that the caller's fd still names its socket (zcsend's loop does the
-- same in C), and that the transfer has not been idle past its timeout.
local CHECK = 0.1

--- the longest a transfer or a wait may go without progress, in seconds, where
-- a call gives no timeout of its own: then it ends with nil, "ETIMEDOUT: ...",
-- "ETIMEDOUT", sent
M.TIMEOUT = 60

-- ---- hosts ---------------------------------------------------------------------
-- A host adapter tells zcsend how to wait inside one host without blocking it.
-- zcsend/nginx.lua, zcsend/tarantool.lua and zcsend/luv.lua are shipped; any
-- other host can add its own with zcsend.add_host(adapter). Fields:
--   name                      for messages and zcsend.host()
--   active()                  true when the running code can wait through this
--                             host now (a fiber, a luv loop...; nginx: any
--                             phase of a worker: its wait fails at once with
--                             EOPNOTSUPP where the phase can't yield, so zcsend
--                             never blocks the worker in poll(2))
--   sockfd(sock)              optional: fd, tls for the host's own socket
--                             objects; nil for objects that are not its own;
--                             nil, msg, name for its own, closed
--   wait(fd, events, timeout) true once fd is ready ("r", "w", "rw"), false
--                             after timeout seconds, or nil, msg, name; never
--                             blocks the host (nil, msg, "ECANCELED" for a
--                             cancelled fiber, say). fd is a dup zcsend owns
--                             and closes after the wait: a host that registered
--                             it with its poller forgets it before returning
--                             (libev's epoll backend keeps an entry for a
--                             closed dup while the socket lives: Tarantool's
--                             adapter waits on a private epoll instead)
--   wait_transfer(t, sock, timeout, left)   optional: waits, as wait does,
--                             after t:step() said "write", through sock itself
--                             (for a host that can wait for a socket only by
--                             writing to it: t:peek(n), t:advance(n),
--                             t:blocked()); left: seconds before the idle
--                             timeout, for a host whose own wait can't be cut
--                             into slices (a cosocket's send timeout)
--   prepare(sock, timeout)    optional: true | nil, msg, name: called for the
--                             adapter whose sockfd() claimed sock, once the
--                             transfer holds its dups, before its first byte:
--                             output the host still queues for sock goes first
--                             (luv's uv.write queue)
--   send(sock, data, timeout) optional: true | nil, msg, name, nsent: all of
--                             data through the host's own send (TLS)
-- A transfer waits through the first that applies: zcsend.set_waiter's
-- function, zcsend's own loop (loop:wrap), the adapters added, the shipped
-- adapters whose host is here, cqueues, and last a blocking poll(2) (a plain
-- script: nothing else could run meanwhile).

local BLOCKING = {
  name = "blocking",
  wait = function(fd, events, timeout)
    return core.poll(fd, events, timeout)
  end,
}

local CQUEUES = {
  name = "cqueues",
  active = in_cqueues,
  wait = function(fd, events, timeout)
    local cqueues = package.loaded.cqueues
    local watch = { pollfd = fd, events = events }
    local ready = cqueues.poll(watch, timeout) == watch
    cqueues.cancel(fd) -- cqueues must forget an fd it polled before it is closed
    return ready
  end,
}

--- zcsend.add_host(adapter): waits through adapter where adapter.active() says
-- so, before every other host but zcsend.set_waiter's
function M.add_host(a)
  if type(a) ~= "table" or type(a.wait) ~= "function" or type(a.active) ~= "function" then
    argerror(1, "add_host", "adapter with active() and wait() expected", 3)
  end
  table.insert(adapters, 1, a)
end

local user_waiter

--- zcsend.set_waiter(fn | nil): every wait goes through fn(fd, events, timeout),
-- which returns true once fd is ready, false after timeout seconds, or nil,
-- msg, name; nil goes back to finding the host
function M.set_waiter(fn)
  if fn ~= nil and type(fn) ~= "function" then
    argerror(1, "set_waiter", "function or nil expected, got " .. type(fn), 3)
  end
  user_waiter = fn and { name = "waiter", wait = fn } or nil
end

-- zcsend's own loop, for the coroutine co it runs
local function loop_host(lp, co)
  return {
    name = "zcsend.loop",
    loop = lp,
    wait = function(fd, events, timeout)
      lp:wait(fd, events, function(...) resume(co, ...) end, timeout)
      local ok, msg, name = coroutine.yield()
      if ok then
        return true
      elseif name == "ETIMEDOUT" then
        return false
      end
      return nil, msg, name
    end,
  }
end

-- the host the running code waits through
local function current_host()
  if user_waiter then
    return user_waiter
  end
  local co = coroutine.running()
  local lp = owners[co]
  if lp then
    return loop_host(lp, co)
  end
  for _, a in ipairs(host_adapters()) do
    if a.active() then
      return a
    end
  end
  if in_cqueues() then
    return CQUEUES
  end
  return BLOCKING
end

--- zcsend.host() -> the name of what zcsend.sendfile would wait through here:
-- "waiter", "zcsend.loop", "nginx", "tarantool", "luv", "cqueues", "blocking"...
function M.host()
  return current_host().name
end

local ETIMEDOUT_MSG = "ETIMEDOUT: no progress for %g s"

-- waits until fd ("r"/"w"/"rw") is ready, through host, on a dup of fd taken
-- now; true | nil, msg, name (EBADF: fd no longer names what it did;
-- ETIMEDOUT: timeout seconds passed)
local function wait_fd(host, fd, events, timeout)
  local id, msg, name = core.fdid(fd)
  local own = id -- a box holding our dup: closed with it should the host never resume us
  if id then
    own, msg, name = core.hold(fd)
  end
  if not own then
    return nil, msg, name
  end
  if host.loop then -- the loop's own wait checks that fd stays the caller's
    own:close()
    local ok, wmsg, wname = host.wait(fd, events, timeout)
    if ok == false then
      return nil, ETIMEDOUT_MSG:format(timeout), "ETIMEDOUT"
    end
    return ok, wmsg, wname
  end
  local deadline = core.now() + timeout
  local ok
  while true do
    local left = deadline - core.now()
    if left <= 0 then
      ok, msg, name = nil, ETIMEDOUT_MSG:format(timeout), "ETIMEDOUT"
      break
    end
    local called
    called, ok, msg, name = pcall(host.wait, own:fd(), events, math.min(left, CHECK))
    if not called then -- the host raised: our dup must not outlive the wait
      own:close()
      error(ok, 0)
    end
    if core.fdid(fd) ~= id then
      ok, msg, name = nil, "EBADF: fd closed while waiting", "EBADF"
    end
    if ok or ok == nil then
      break
    end
  end
  own:close()
  return ok, msg, name
end

-- A range not in the page cache would hold up the host's thread in the next
-- step while the disk reads it: a prefetch thread of the core reads it instead
-- (t:prefetch), and the host waits for that the host's way, on the eventfd it
-- gives (disk.fd, kept across waits until it says done; t's, which closes it
-- should the host never resume us). true when the step
-- may go (read in, or no prefetch could start: step as before), false when the
-- wait timed out, nil, msg, name when it failed.
local function wait_disk(t, host, disk, timeout)
  if not disk.fd then
    disk.fd = t:prefetch()
    if not disk.fd then
      return true
    end
  end
  local called, ok, msg, name = pcall(host.wait, disk.fd, "r", timeout)
  if not called or ok ~= false then -- done, failed or raised: the eventfd goes
    t:prefetch_close()
    disk.fd = nil
  end
  if not called then
    error(ok, 0)
  end
  return ok, msg, name
end

-- whether a step now could wait for the disk (never asked in a plain script,
-- which blocks anyway)
local function cold(t, host)
  return host.name ~= "blocking" and not t:cached()
end

-- runs a core transfer to its end through host; no progress for timeout
-- seconds ends it with ETIMEDOUT
local function drive(t, host, sock, timeout, owner)
  -- output the socket's own object still holds goes first (luv's uv.write
  -- queue): waited for now, when the transfer holds its dups of both fds
  if owner and owner.prepare then
    local ok, msg, name = owner.prepare(sock, timeout)
    if not ok then
      t:cancel(core[name] or core.EIO)
      return nil, msg, name, 0
    end
  end
  if host.loop then -- zcsend's libev driver steps it and calls back from loop:run();
    -- before each step it asks whether the range is in the page cache, and has a
    -- prefetch thread read in one that is not while the loop runs the rest
    local co = coroutine.running()
    host.loop:drive(t, function()
      resume(co)
    end, timeout)
    coroutine.yield()
  else
    local seen, since = t:sent(), core.now()
    local hmsg, hname -- a failed wait ends the transfer with the host's own words
    local fresh -- just read in, or cancelled: the step goes, whatever the cache says
    local disk = {} -- the prefetch waited for
    while true do
      local r
      if not fresh and cold(t, host) then
        r = "disk"
      else
        fresh = false
        if disk.fd then -- its range is read in (or stepped regardless): a later
          -- cold range needs a prefetch of its own, not this signalled eventfd
          t:prefetch_close()
          disk.fd = nil
        end
        r = t:step()
      end
      if r == "done" or r == nil then
        t:prefetch_close()
        break
      end
      local now = core.now()
      if t:sent() ~= seen then
        seen, since = t:sent(), now
      end
      local left = since + timeout - now
      if left <= 0 then
        t:cancel(core.ETIMEDOUT)
        fresh = true
      else
        local slice, ok, called = math.min(left, CHECK), nil, true
        if r == "disk" then -- (a raise there closes disk.fd itself)
          ok, hmsg, hname = wait_disk(t, host, disk, slice)
          fresh = ok
        elseif r == "write" and host.wait_transfer then
          called, ok, hmsg, hname = pcall(host.wait_transfer, t, sock, slice, left)
        else
          called, ok, hmsg, hname = pcall(host.wait, t:ownfd(), t:events(), slice)
        end
        if not called then -- the host raised: the prefetch's eventfd, kept across waits, goes too
          t:prefetch_close()
          error(ok, 0)
        end
        if ok == nil then
          t:prefetch_close()
          t:cancel(core[hname] or core.EIO)
          t:step()
          return nil, hmsg, hname, t:sent()
        end
      end
    end
  end
  local ok, err, name, sent = t:result()
  if ok then
    return t:sent()
  elseif name == "ETIMEDOUT" then
    err = ETIMEDOUT_MSG:format(timeout)
  end
  return nil, err, name, sent
end

-- a chunk's bytes into the page cache, read by a prefetch thread while the host
-- waits for its eventfd; true when done (or where no thread could read it: the
-- plain read that follows does), nil, msg, name when the wait failed
local function wait_chunk(host, c, timeout)
  local efd = c:prefetch(M.TLS_CHUNK)
  if not efd then
    return true
  end
  local deadline = core.now() + timeout
  local called, ok, msg, name
  repeat
    local left = deadline - core.now()
    if left <= 0 then
      ok, msg, name = nil, ETIMEDOUT_MSG:format(timeout), "ETIMEDOUT"
      break
    end
    called, ok, msg, name = pcall(host.wait, efd, "r", math.min(left, CHECK))
    if not called then -- the host raised: the eventfd must not outlive the wait
      c:prefetch_close()
      error(ok, 0)
    end
  until ok or ok == nil
  c:prefetch_close() -- (c's: closed with c should the host never resume us)
  return ok, msg, name
end

-- TLS: never plaintext on the fd. Read bounded chunks, send them with the
-- host's send, or the object's own send(), waiting on its fd when it wants to
-- write or read. The file is read through a dup taken now (ffd may be closed
-- and reused meanwhile).
local EBADF_CLOSED = "EBADF: socket closed during the transfer"

-- luasec's send(data, i) -> last | nil, err, partial, waiting between tries
local function send_chunk(host, sock, fd, id, data, timeout)
  if host.send then
    return host.send(sock, data, timeout)
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
        ok, werr, wname = wait_fd(host, fd, "w", timeout)
      elseif serr == "wantread" then
        ok, werr, wname = wait_fd(host, fd, "r", timeout)
      elseif core.fdid(fd) ~= id then -- "closed": by another coroutine, not by the peer
        ok, werr, wname = nil, EBADF_CLOSED, "EBADF"
      else
        ok, werr, wname = nil, "EPIPE: TLS send failed: " .. tostring(serr), "EPIPE"
      end
      if not ok then
        return nil, wname == "EBADF" and EBADF_CLOSED or werr, wname, i - 1
      end
    end
  end
  return true
end

-- a cqueues socket's own send(data, i, j, "bn") (not luasec's): it takes data
-- into its output buffer and writes what the socket takes, through TLS; the
-- count is what it took, and send(data, #data + 1, #data, "bn") writes more of
-- the rest ("b": as they are, whatever mode the socket is in; "n": now). Waits
-- on the fd for what it wants (events(): TLS may need to read). true once all
-- of data has left the buffer; else nil, msg, name, how many of data's bytes
-- had (as of the last send: only sends write). What is left in the buffer then
-- would go out at the socket's next write (or read: autoflush), after the
-- caller resumed from the count: its writes fail from then on instead
-- (seterror("w")), and its reads flush nothing (autoflush off).
local function send_chunk_cqueues(host, sock, fd, id, data, timeout)
  local i, out, left = 1, 0, 0
  -- cqueues' errno (positive) where the send stopped short, "closed" where
  -- another coroutine closed the socket (checked first: a closed one raises;
  -- nothing yields between that look and the send)
  local function send()
    if core.fdid(fd) ~= id then
      return "closed"
    end
    local n, why = sock:send(data, i, #data, "bn")
    i = i + n
    left = select(2, sock:pending()) -- the buffer's last bytes: the caller's go first
    out = math.max(0, i - 1 - left)
    return why
  end
  local why = send()
  while why or i <= #data do
    local ok, werr, wname
    if why == "closed" then
      ok, werr, wname = nil, EBADF_CLOSED, "EBADF"
    elseif why == -core.EAGAIN then -- (the core's errnos are negative)
      ok, werr, wname = wait_fd(host, fd, sock:events():find("r", 1, true) and "r" or "w", timeout)
    elseif why == -core.EPIPE or why == -core.ECONNRESET then
      werr, wname = core.strerror(why)
    else
      local cerrno = package.loaded["cqueues.errno"]
      ok, werr, wname = nil, "EPIPE: TLS send failed: " .. (cerrno and cerrno.strerror(why) or tostring(why)), "EPIPE"
    end
    if not ok then
      if wname ~= "EBADF" and left > 0 then
        sock:seterror("w", -(core[wname] or core.EIO))
        local _, wmode = sock:setmode(nil, nil) -- and its reads must not flush it (autoflush)
        sock:setmode(nil, wmode .. "A")
        werr = ("%s (%d bytes left in the socket's buffer: its writes now fail)"):format(werr, left)
      end
      return nil, werr, wname, out
    end
    why = send()
  end
  return true
end

-- whether sock is a live cqueues socket
local function cqueues_socket(sock)
  local cs = package.loaded["cqueues.socket"]
  return cs ~= nil and type(cs.type) == "function" and cs.type(sock) == "socket"
end

-- the core's chunk source c sizes, reads and counts the range; here: waiting
-- and writing the host's way
local function send_chunks(host, sock, fd, c, timeout)
  local id = core.fdid(fd)
  local send = send_chunk
  if not host.send and cqueues_socket(sock) then
    send = send_chunk_cqueues
  elseif host ~= BLOCKING and not host.send and sock.settimeout then
    sock:settimeout(0) -- these hosts need it non-blocking; they wait for us
  end
  local function fail(msg, name)
    c:fail(name)
    return nil, msg, name, c:sent()
  end
  while c:remaining() ~= 0 do
    if not c:seekable() and host ~= BLOCKING then
      local ok, err, name = wait_fd(host, c:ownfd(), "r", timeout) -- a pipe: don't block the host in read()
      if not ok then
        return fail(err, name)
      end
    end
    if core.fdid(fd) ~= id then
      return fail(EBADF_CLOSED, "EBADF")
    end
    local data, err, name
    if host ~= BLOCKING and c:seekable() then
      -- from the page cache only: a chunk that is not there is read in by a
      -- prefetch thread while the host waits its way (never on its thread)
      data, err, name = c:read(M.TLS_CHUNK, true)
      if name == "EAGAIN" then
        local ok, werr, wname = wait_chunk(host, c, timeout)
        if not ok then
          return fail(werr, wname)
        end
        data = nil
      end
    end
    if not data and name ~= "ETRUNCATED" then
      data, err, name = c:read(M.TLS_CHUNK) -- ETRUNCATED: the file shrank
    end
    if not data then
      return fail(err, name)
    end
    if #data == 0 then
      break
    end
    local ok, serr, sname, partial = send(host, sock, fd, id, data, timeout)
    c:wrote(ok and #data or partial or 0)
    if not ok then
      return fail(serr, sname)
    end
  end
  c:finish()
  return c:sent()
end

local function send_tls(host, sock, fd, ffd, offset, count, timeout)
  local c, err, name, sent = core.chunks(ffd, offset, count)
  if not c then
    return nil, err, name, sent
  end
  local res = { pcall(send_chunks, host, sock, fd, c, timeout) }
  c:close()
  if not res[1] then
    error(res[2], 0)
  end
  return res[2], res[3], res[4], res[5]
end

-- opts.timeout: seconds, positive
local function timeout_of(opts, n, fname)
  if opts == nil then
    return M.TIMEOUT
  end
  local t = opts
  if type(opts) == "table" then
    t = opts.timeout
    if t == nil then
      return M.TIMEOUT
    end
  end
  if type(t) ~= "number" or not (t > 0) then
    argerror(n, fname, "timeout must be a positive number of seconds", 4)
  end
  return t
end

--- zcsend.sendfile(sock, file [, offset [, count [, opts]]]) -> sent | nil, msg, name, sent
-- sock: integer fd, luasocket TCP/Unix object, cqueues socket, nginx cosocket,
-- Tarantool socket, luv TCP/pipe handle, any object with getfd(), or a TLS
-- object (through its own send()). file: io handle or fd. count defaults to
-- the rest of the file (of a pipe: to its end). opts.timeout: seconds without
-- progress before the transfer ends with ETIMEDOUT (default zcsend.TIMEOUT).
function M.sendfile(sock, file, offset, count, opts)
  local ffd = filefd(file, "sendfile") -- before sockfd, whose flush may yield
  check_range(offset, count, "sendfile")
  local timeout = timeout_of(opts, 5, "sendfile")
  local fd, tls, ename, owner, own = sockfd(sock, "sendfile", false, ffd)
  if not fd then
    return nil, tls, ename, 0
  end
  local host = current_host()
  if tls then -- (never flushed: no own)
    return send_tls(host, sock, fd, ffd, offset or 0, count, timeout)
  end
  -- its own dups; a small cached file goes at once, unless the socket's owner has
  -- output of its own to send first (prepare: luv's write queue)
  local t, err, name, sent = core.transfer(fd, own and own:fd() or ffd, offset, count,
                                           not (owner and owner.prepare))
  if own then
    own:close()
  end
  if not t then
    return nil, err, name, sent
  end
  local r = { pcall(drive, t, host, sock, timeout, owner) }
  t:close()
  if not r[1] then
    error(r[2], 0)
  end
  return r[2], r[3], r[4], r[5]
end

--- zcsend.wait(sock_or_fd, "r"|"w"|"rw" [, timeout]) -> true | nil, msg, name:
-- waits until the socket is readable or writable the way sendfile would here,
-- so a host can read requests and write headers the same way. EBADF: another
-- coroutine closed the socket; ETIMEDOUT: timeout seconds (default
-- zcsend.TIMEOUT) passed.
function M.wait(sock, events, timeout)
  local fd, err, ename = sockfd(sock, "wait", nil, nil, true)
  if not fd then
    return nil, err, ename
  end
  if events ~= "r" and events ~= "w" and events ~= "rw" then
    argerror(2, "wait", '"r", "w" or "rw" expected', 3)
  end
  return wait_fd(current_host(), fd, events, timeout_of(timeout, 3, "wait"))
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
  local fd, serr, sname = sockfd(sock, "sendfile", true) -- sendfile flushes, and says if that failed
  local ffd = filefd(file, "sendfile")
  check_range(offset, count, "sendfile")
  if not fd then -- refused (a TLS object it can't send on): said from run(), as every outcome is
    return self:wait(ffd, "r", function() callback(nil, serr, sname, 0) end, 0.001)
  end
  -- what the file's number names now: the caller may close it (and the number
  -- be reused by another file) before the socket turns writable
  local fid = core.fdid(ffd)
  self:wait(fd, "w", function(ok, msg, name)
    if not ok then
      return callback(nil, msg, name, 0)
    elseif core.fdid(ffd) ~= fid then
      return callback(nil, "EBADF: file closed before the socket turned writable", "EBADF", 0)
    end
    self:wrap(function() -- (sendfile dups it before anything can yield)
      callback(M.sendfile(sock, ffd, offset, count))
    end)
  end)
end

-- adapters may rely on it: sendfile calls the prepare(sock, timeout) of the
-- adapter whose sockfd() claimed sock, once the transfer holds its dups
M._prepare = true

M.stats = core.stats
M.backend = core.backend
M._VERSION = core.version

return M
