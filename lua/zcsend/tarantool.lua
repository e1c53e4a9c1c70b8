--- zcsend.tarantool: the Tarantool host adapter (zcsend.lua loads it when the
-- _TARANTOOL global is there; verified with Tarantool 2.6, LuaJIT 2.1).
--
-- Sockets: Tarantool's own socket objects (socket(), socket.tcp_connect(),
-- the sockets socket.tcp_server() hands its handler) are accepted as they
-- are, through their public s:fd(). A closed one gives nil, "EBADF: ...",
-- "EBADF". Tarantool 2.6 has no TLS sockets: one that says it is TLS (a
-- zcsend_tls field, a checktls() that answers) is refused with
-- "EPROTONOSUPPORT" before a byte is written.
--
-- Waiting: the fiber yields in socket.iowait(), Tarantool's own wait on the
-- tx thread's libev loop (coio_wait: an ev_io on the fiber's stack, started
-- and stopped inside that call), and every other fiber runs meanwhile. The fd
-- zcsend hands wait() is its own dup of the socket, closed once the transfer
-- ends while the socket itself stays open (keep-alive): registered with
-- libev's epoll directly, that dup would leave a kernel epoll entry behind
-- (libev never deletes an fd it stops watching, and the kernel drops an entry
-- only when the last fd of the socket is closed), and the socket's next event
-- would make libev rebuild its whole epoll set (measured: one rebuild per
-- transfer). So wait() puts the dup into an epoll instance of its own,
-- created for this wait, yields in socket.iowait on that one, and closes it:
-- nothing of the dup is left registered anywhere once wait() returns
-- (hostspec/tarantool_spec.lua reads the process's epoll sets in /proc after
-- 1,000 transfers on reused fds: no stale entry, no rebuild). Where that
-- can't be had (no FFI, no fd to spare), wait() falls back to socket.iowait
-- on the dup itself: still correct, as libev copes with stale entries by
-- rebuilding its set.
--
-- A fiber's wait yields. Where Tarantool forbids or punishes a yield it does
-- so for every socket operation too, and zcsend behaves the same:
--   * inside a box transaction (box.begin() ... box.commit(), an on_replace
--     trigger) a memtx transaction is aborted by the yield (commit then
--     fails: "Transaction has been aborted by a fiber yield"): send files
--     outside transactions;
--   * a cancelled fiber (fiber:cancel()) ends its transfer with nil,
--     "ECANCELED: fiber is cancelled", "ECANCELED", sent, at once;
--   * never from a __gc metamethod (no Lua host can yield there).
-- active() is true in every fiber (Lua code in Tarantool 2.6 runs only in
-- fibers of the tx thread, the main script included).
local fiber = require "fiber"
local socket = require "socket"

local M = { name = "tarantool" }

local COIO_READ, COIO_WRITE = 1, 2 -- EV_READ, EV_WRITE
local EVENTS = { r = COIO_READ, w = COIO_WRITE, rw = COIO_READ + COIO_WRITE }

-- the metatable all of Tarantool's socket objects share, from a probe socket
local socket_mt
do
  local probe = socket("AF_UNIX", "SOCK_STREAM", 0)
  if probe then
    socket_mt = getmetatable(probe)
    probe:close()
  end
end

local ffi_ok, ffi = pcall(require, "ffi")
local function is_gc_socket(v) -- Tarantool's own fd holder (struct gc_socket)
  if not ffi_ok or type(v) ~= "cdata" then
    return false
  end
  local ok, yes = pcall(ffi.istype, "struct gc_socket", v)
  return ok and yes
end

--- true for Tarantool's own socket objects
function M.is_socket(sock)
  if type(sock) ~= "table" then
    return false
  end
  local mt = getmetatable(sock)
  if socket_mt and mt == socket_mt then
    return true
  end
  return is_gc_socket(rawget(sock, "_gc_socket"))
end

-- a socket that says it is TLS (zcsend.istls: a zcsend_tls field, a
-- checktls() that answers), or whose checktls() can't tell or raises: refused
-- all the same
local function claims_tls(sock)
  local ok, tls = pcall(require("zcsend").istls, sock)
  return not ok or tls ~= false
end

function M.active()
  return (pcall(fiber.self)) -- every Lua caller in Tarantool 2.6 is a fiber
end

--- fd, false for a Tarantool socket; nil, msg, "EBADF" once it is closed;
-- nil for anything else
function M.sockfd(sock)
  if not M.is_socket(sock) then
    return nil
  end
  local ok, fd = pcall(sock.fd, sock) -- raises "attempt to use closed socket"
  if not ok or type(fd) ~= "number" or fd < 0 then
    return nil, "EBADF: Tarantool socket is closed", "EBADF"
  end
  if claims_tls(sock) then
    return nil, "EPROTONOSUPPORT: TLS on a Tarantool socket is not supported " ..
      "(Tarantool 2.6 has no TLS sockets); nothing was sent", "EPROTONOSUPPORT"
  end
  return fd, false
end

local CANCELED = "ECANCELED: fiber is cancelled"

-- epoll(7) through LuaJIT's FFI: a private epoll instance per wait
local EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLLIN, EPOLLOUT = 0x80000, 1, 0x001, 0x004
local EPOLL_MASK = { [COIO_READ] = EPOLLIN, [COIO_WRITE] = EPOLLOUT, [COIO_READ + COIO_WRITE] = EPOLLIN + EPOLLOUT }
local EPERM = 1
local epoll = nil
if ffi_ok and jit and jit.os == "Linux" then
  for _, decl in ipairs({ "int epoll_create1(int flags);",
                          "int epoll_ctl(int epfd, int op, int fd, void *event);" }) do
    pcall(ffi.cdef, decl) -- already declared by someone else: fine
  end
  local ok = pcall(function() return ffi.C.epoll_create1 and ffi.C.epoll_ctl end)
  if ok then
    -- struct epoll_event is {uint32_t events; uint64_t data} (packed on
    -- x86-64): events first either way, data unused (zero)
    epoll = { C = ffi.C, event = ffi.new("uint32_t[4]") }
  end
end
M._epoll = epoll ~= nil -- for the tests

local core = require "zcsend.core"

-- yields until fd is ready through a private epoll instance: true | false
-- (timeout) | nil, msg, name | "fallback" (no epoll instance to be had)
local function wait_private(fd, ev, timeout)
  local C = epoll.C
  local ep = C.epoll_create1(EPOLL_CLOEXEC)
  if ep < 0 then
    return "fallback"
  end
  epoll.event[0], epoll.event[1], epoll.event[2], epoll.event[3] = EPOLL_MASK[ev], 0, 0, 0
  if C.epoll_ctl(ep, EPOLL_CTL_ADD, fd, epoll.event) ~= 0 then
    local e = ffi.errno()
    core.close(ep)
    if e == EPERM then -- a regular file: always ready
      return true
    end
    return "fallback"
  end
  local ok, got = pcall(socket.iowait, ep, COIO_READ, timeout)
  core.close(ep) -- its only fd: the kernel forgets it, and the dup's entry in it
  if not ok then
    return nil, "EIO: socket.iowait: " .. tostring(got), "EIO"
  end
  return got ~= 0
end

--- yields this fiber until fd is ready (true) or timeout seconds passed
-- (false); nil, msg, name for a cancelled fiber or an unusable fd
function M.wait(fd, events, timeout)
  local ev = EVENTS[events]
  if not ev then
    return nil, "EIO: bad events " .. tostring(events), "EIO"
  end
  if type(fd) ~= "number" or fd < 0 then
    return nil, "EBADF: no fd to wait on", "EBADF"
  end
  if not pcall(fiber.testcancel) then -- iowait would return 0 at once, for ever
    return nil, CANCELED, "ECANCELED"
  end
  local ready, msg, name = "fallback", nil, nil
  if epoll and not M._no_epoll then
    ready, msg, name = wait_private(fd, ev, timeout)
  end
  if ready == "fallback" then
    local ok, got = pcall(socket.iowait, fd, ev, timeout)
    if not ok then
      return nil, "EIO: socket.iowait: " .. tostring(got), "EIO"
    end
    ready = got ~= 0
  end
  if ready == nil then
    return nil, msg, name
  end
  if not ready and not pcall(fiber.testcancel) then
    return nil, CANCELED, "ECANCELED"
  end
  return ready -- false: the timeout, or a fiber.wakeup() of this fiber; zcsend steps again
end

return M
