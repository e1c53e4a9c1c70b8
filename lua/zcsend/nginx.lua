--- zcsend.nginx: zcsend's host adapter for nginx with lua-nginx-module
-- (OpenResty, or Debian's libnginx-mod-http-lua), loaded by zcsend itself
-- once the `ngx` global shows up. Never required by hand.
--
-- Sockets: ngx.req.socket(true) (raw request socket: write the response head
-- through it first) and connected ngx.socket.tcp() cosockets are accepted as
-- they are. Their fd comes from sock:getfd() where lua-nginx-module has it
-- (>= 0.10.29), else from the exported ngx_http_lua_ffi_socket_tcp_hack_fd()
-- (called with fd -1: it only reads the fd). ngx.req.socket() (the request
-- body reader) is refused: EOPNOTSUPP.
--
-- TLS: a connection is sent plaintext only when its ngx_connection_t, found
-- and checked through the cosocket (see conn_of), has no ssl and sends with
-- ngx_unix_send; an HTTPS request socket (ngx_http_lua_ffi_get_req_ssl_pointer
-- or $https) and any connection with ssl or ngx_ssl_write go through the
-- cosocket's own send. Anything that can't be established this way is
-- refused before a byte is written: EOPNOTSUPP.
--
-- Waiting never blocks the worker; see wait_transfer.
local core = require "zcsend.core"

local ngx = ngx
local floor, ceil, min, max = math.floor, math.ceil, math.min, math.max

local M = { name = "nginx" }

--- how a transfer on a cosocket waits for a full socket:
-- "probe": a 1-byte cosocket send of the transfer's next byte (nginx's event
--          loop wakes it when the socket is writable); needs zcsend to pass the
--          time left before the idle timeout (wait_transfer's 4th argument),
--          else "sleep" is used
-- "sleep": ngx.sleep backoff (1 ms doubling to 20 ms) between poll(2) checks
M.mode = "probe"

-- the phases where ngx.sleep and cosockets can yield
local YIELDABLE = {
  rewrite = true, server_rewrite = true, access = true, content = true, timer = true,
  ssl_cert = true, ssl_session_fetch = true, ssl_client_hello = true,
}

--- in every phase of a running nginx: a worker must never fall back to a
-- blocking poll(2). Only "init" (the master reading its configuration, no
-- event loop yet) is left to zcsend's plain-script wait.
function M.active()
  return ngx.get_phase() ~= "init"
end

local function yieldable()
  local phase = ngx.get_phase()
  if YIELDABLE[phase] then
    return true
  end
  return nil, ("EOPNOTSUPP: nginx can't wait in its %s phase (only in rewrite, access, " ..
    "content, timer and ssl_* handlers)"):format(phase), "EOPNOTSUPP"
end

-- ---- FFI: the fd, the request, the connection --------------------------------
local ffi_ok, ffi = pcall(require, "ffi")
local C, get_request
local hack_fd, req_ssl, UNIX_SEND, SSL_WRITE
local errbuf, errlen, voidp, voidpp, connp

if ffi_ok then
  C = ffi.C
  -- each on its own: resty.core or ngx.ssl may have declared some already
  local function cdef(s)
    pcall(ffi.cdef, s)
  end
  cdef [[
typedef struct zcsend_ngx_connection_s {
  void *data; void *read; void *write; int fd;
  void *recv; void *send; void *recv_chain; void *send_chain;
  void *listening; int64_t sent; void *log; void *pool; int type;
  void *sockaddr; uint32_t socklen; size_t addr_text_len; void *addr_text_data;
  void *proxy_protocol; void *ssl;
  void *udp; void *local_sockaddr; uint32_t local_socklen; void *buffer; void *queue[2];
  uintptr_t number; uintptr_t start_time; uintptr_t requests;
  unsigned buffered:8; unsigned log_error:3; unsigned timedout:1; unsigned error:1;
} zcsend_ngx_connection_t;]]
  cdef "int ngx_http_lua_ffi_socket_tcp_hack_fd(void *u, int fd, unsigned char *err, size_t *errlen);"
  cdef "void *ngx_http_lua_ffi_get_req_ssl_pointer(void *r);"
  cdef "void ngx_unix_send(void);"
  cdef "void ngx_ssl_write(void);"
  local function sym(name)
    local ok, f = pcall(function() return C[name] end)
    return ok and f or nil
  end
  hack_fd = sym "ngx_http_lua_ffi_socket_tcp_hack_fd"
  req_ssl = sym "ngx_http_lua_ffi_get_req_ssl_pointer"
  voidp, voidpp = ffi.typeof("void *"), ffi.typeof("void **")
  connp = ffi.typeof("zcsend_ngx_connection_t *")
  local s = sym "ngx_unix_send" -- nginx exports its symbols for dynamic modules
  UNIX_SEND = s and ffi.cast(voidp, s)
  s = sym "ngx_ssl_write"
  SSL_WRITE = s and ffi.cast(voidp, s)
  errbuf = ffi.new("unsigned char[?]", 256)
  errlen = ffi.new("size_t[1]")
  local ok, base = pcall(require, "resty.core.base")
  if ok and base.get_request then
    get_request = base.get_request
  else
    get_request = function() return getfenv(0).__ngx_req end
  end
end

-- lua-nginx-module keeps its cosocket metatables in the registry:
-- "__tcp_cosocket_mt" by name, all of them under lightuserdata keys
local registry = debug.getregistry()
local kinds = setmetatable({}, { __mode = "k" }) -- metatable -> "tcp" | "raw" | "body" | false

local function kind_of(sock)
  local mt = getmetatable(sock)
  if type(mt) ~= "table" then
    return nil
  end
  local k = kinds[mt]
  if k == nil then
    k = false
    for key, v in pairs(registry) do
      if v == mt and (key == "__tcp_cosocket_mt" or type(key) == "userdata") then
        if rawget(mt, "connect") then
          k = "tcp" -- ngx.socket.tcp(), ngx.socket.connect()
        elseif rawget(mt, "receiveuntil") then
          k = rawget(mt, "send") and "raw" or "body" -- ngx.req.socket(true) / ngx.req.socket()
        end
        break
      end
    end
    kinds[mt] = k
  end
  return k or nil
end

-- The cosocket's upstream struct (sock[1]) begins with a few pointers, then
-- `request`, then `peer` whose first field is the ngx_connection_t. The count
-- before `request` changed between versions (8 in 0.10.19 to 0.10.29), so
-- it is found: the slot holding the running request, the next one the
-- connection, which must hold the cosocket's fd and be the `data` of both its
-- read and write events. Fails (nil) for a cosocket of another request (nginx
-- refuses to use those too) and for a layout this does not know.
local function conn_of(u, fd)
  local r = get_request()
  if r == nil then
    return nil
  end
  r = ffi.cast(voidp, r)
  local slots = ffi.cast(voidpp, u)
  for i = 4, 12 do
    if slots[i] == r then
      local c = ffi.cast(connp, slots[i + 1])
      if c ~= nil and c.fd == fd and c.read ~= nil and c.write ~= nil
          and ffi.cast(voidpp, c.read)[0] == ffi.cast(voidp, c)
          and ffi.cast(voidpp, c.write)[0] == ffi.cast(voidp, c) then
        return c, r
      end
      return nil
    end
  end
  return nil
end

local UNKNOWN = "EOPNOTSUPP: can't tell whether this nginx connection is TLS "
  .. "(a cosocket of another request, or a lua-nginx-module this zcsend does not know); "
  .. "refusing rather than risking plaintext on TLS"

-- true (TLS), false (plaintext, established), or nil, msg
local function tls_of(kind, u, fd)
  if not ffi_ok then
    return nil, UNKNOWN
  end
  local c, r = conn_of(u, fd)
  local tls = false
  if kind == "raw" and c then
    if ffi.cast(voidpp, r)[1] ~= ffi.cast(voidp, c) then -- r->connection
      return nil, UNKNOWN
    end
    if req_ssl then -- r->connection->ssl->connection
      tls = req_ssl(r) ~= nil
    else
      local ok, https = pcall(function() return ngx.var.https end)
      tls = not ok or https == "on"
    end
  end
  if not c then
    return nil, UNKNOWN
  end
  local send = ffi.cast(voidp, c.send)
  if tls or c.ssl ~= nil or (SSL_WRITE and send == SSL_WRITE) then
    return true
  end
  if UNIX_SEND and send == UNIX_SEND then
    return false
  end
  return nil, UNKNOWN
end

local function raw_fd(sock, u)
  local getfd = sock.getfd -- lua-nginx-module >= 0.10.29
  if type(getfd) == "function" then
    local ok, fd = pcall(getfd, sock) -- fd | nil, err (-1: a faked connection)
    fd = ok and tonumber(fd)
    return fd and fd >= 0 and fd or nil
  end
  if not hack_fd then
    return nil
  end
  errlen[0] = 256
  local fd = hack_fd(u, -1, errbuf, errlen) -- fd < 0: reads the fd, changes nothing
  return fd >= 0 and fd or nil
end

--- fd, tls for nginx's cosockets; nil for other objects; nil, msg, name for
-- closed or unusable cosockets
function M.sockfd(sock)
  if type(sock) ~= "table" then
    return nil
  end
  local kind = kind_of(sock)
  if not kind then
    return nil
  end
  if kind == "body" then
    return nil, "EOPNOTSUPP: ngx.req.socket() reads the request body; send through " ..
      "ngx.req.socket(true)", "EOPNOTSUPP"
  end
  local u = rawget(sock, 1)
  if type(u) ~= "userdata" then
    return nil, "EBADF: cosocket not connected", "EBADF"
  end
  if not (hack_fd or type(sock.getfd) == "function") then
    return nil, "EOPNOTSUPP: this lua-nginx-module gives no cosocket fd (no getfd(), no FFI)",
      "EOPNOTSUPP"
  end
  local fd = raw_fd(sock, u)
  if not fd then
    return nil, "EBADF: cosocket closed", "EBADF"
  end
  local tls, err = tls_of(kind, u, fd)
  if tls == nil then
    return nil, err, "EOPNOTSUPP"
  end
  return fd, tls
end

-- ---- waiting -------------------------------------------------------------------
local SLEEP_MIN, SLEEP_MAX = 0.001, 0.02
-- bytes a transfer may move with no sign of nginx's loop having run (ngx.now()
-- moves once per loop turn) before it yields anyway: nginx's sendfile_max_chunk
local FAIR = 2 * 1024 * 1024

local function sleep(s)
  ngx.sleep(max(SLEEP_MIN, floor(s * 1000) / 1000)) -- never 0: ngx.sleep(0) warns on stock nginx
end

--- true once fd is ready ("r", "w", "rw"), false after timeout seconds:
-- poll(2) with no wait, between ngx.sleep()s of 1 ms doubling to 20 ms
function M.wait(fd, events, timeout)
  local ok, err, name = yieldable()
  if not ok then
    return nil, err, name
  end
  local deadline = core.now() + timeout
  local delay = SLEEP_MIN
  while true do
    local ready, perr, pname = core.poll(fd, events, 0)
    if ready == nil then
      return nil, perr, pname
    elseif ready then
      return true
    end
    local left = deadline - core.now()
    if left <= 0 then
      return false
    end
    sleep(min(delay, left))
    delay = min(delay * 2, SLEEP_MAX)
  end
end

-- cosocket send errors as zcsend names them
local function send_error(err, timeout)
  if err == "timeout" then
    return ("ETIMEDOUT: no progress for %g s"):format(timeout), "ETIMEDOUT"
  elseif err == "closed" then
    return "EBADF: cosocket closed", "EBADF"
  elseif err == "connection reset by peer" then
    return "ECONNRESET: Connection reset by peer", "ECONNRESET"
  elseif err == "broken pipe" then
    return "EPIPE: Broken pipe", "EPIPE"
  end
  return "EIO: nginx cosocket send: " .. tostring(err), "EIO"
end

-- sock:send(data) with its send timeout set to ms, then set back to what the
-- caller had (lua-nginx-module keeps settimeout()'s values at [2], [4], [5];
-- 0 is "lua_socket_*_timeout")
local function send_within(sock, data, ms)
  local ct, st, rt = rawget(sock, 2), rawget(sock, 4), rawget(sock, 5)
  ct = type(ct) == "number" and ct or 0
  st = type(st) == "number" and st or 0
  rt = type(rt) == "number" and rt or 0
  sock:settimeouts(ct, ms, rt)
  local n, err = sock:send(data)
  sock:settimeouts(ct, st, rt)
  return n, err
end

-- fairness: bytes moved for key (a transfer, a TLS cosocket) since nginx's
-- loop last ran (ngx.now() moves once per loop turn, or since our last yield)
local marks = setmetatable({}, { __mode = "k" })

local function moved(key, total)
  local now = ngx.now()
  local st = marks[key]
  if not st then
    st = { at = now, base = total }
    marks[key] = st
  elseif st.at ~= now then
    st.at, st.base = now, total
  end
  return total - st.base
end

local function yield_once(key, total)
  ngx.sleep(SLEEP_MIN)
  local st = marks[key] or {}
  st.at, st.base = ngx.now(), total
  marks[key] = st
  return true
end

--- after t:step() said "write": the transfer's socket is full (t:blocked()),
-- or the step spent its budget. Budget spent (or FAIR bytes moved in one loop
-- turn): ngx.sleep, once. Full: a 1-byte probe, the transfer's next byte sent
-- through the cosocket itself, so nginx's event loop wakes us when the
-- socket takes it (no timers, no polling); its send timeout is the time left
-- before the idle timeout (`left`), as a send timeout kills a cosocket's
-- writing for good. Where the probe can't be used (no `left` from zcsend, the
-- transfer holds bytes of its own, a pipe source, M.mode = "sleep"): poll(2)
-- between ngx.sleep()s.
function M.wait_transfer(t, sock, timeout, left)
  local ok, err, name = yieldable()
  if not ok then
    return nil, err, name
  end
  local sent = t:sent()
  if not t:blocked() or moved(t, sent) >= FAIR then
    return yield_once(t, sent)
  end
  local st = marks[t]
  if M.mode == "probe" and left and not st.timed_out and kind_of(sock) then
    local data = t:peek(1)
    if data == "" then -- nothing left to read (a file that shrank): the step tells
      return true
    elseif data then
      local n, serr = send_within(sock, data, max(1, ceil(left * 1000)))
      if n then
        t:advance(#data)
        return true
      elseif serr == "timeout" then
        -- the idle timeout is up (give or take nginx's cached clock): zcsend
        -- says so. The cosocket can't write any more; should the peer wake
        -- meanwhile, this transfer goes on through its own fd and polls.
        st.timed_out = true
        return false
      end
      return nil, send_error(serr, left)
    end
  end
  return M.wait(t:ownfd(), "w", timeout)
end

-- nginx sends no TLS close_notify on a connection whose own send timed out
-- (c->timedout); a cosocket's timed-out send doesn't say so, and the
-- SSL_shutdown at the request's end then fails on the unfinished record
-- ("[crit] SSL_shutdown() failed ... bad write retry"). This says so for the
-- request's own connection, the layout vouched for by the connection's serial
-- number and request count, which nginx also gives as variables.
local function timed_out(sock)
  local u = ffi_ok and kind_of(sock) == "raw" and rawget(sock, 1)
  local fd = type(u) == "userdata" and raw_fd(sock, u)
  local c = fd and conn_of(u, fd)
  if c and tonumber(c.number) == tonumber(ngx.var.connection)
      and tonumber(c.requests) == tonumber(ngx.var.connection_requests) then
    c.timedout = 1
  end
end

--- TLS: all of data through the cosocket's own send (nginx's SSL_write),
-- its send timeout set to the transfer's idle timeout meanwhile
function M.send(sock, data, timeout)
  local ok, err, name = yieldable()
  if not ok then
    return nil, err, name, 0
  end
  local n, serr = send_within(sock, data, max(1, ceil(timeout * 1000)))
  if not n then
    -- a failed cosocket send doesn't say how much of data went: the count
    -- stays at what is known to have gone, and the message says the rest
    local msg, sname = send_error(serr, timeout)
    if sname == "ETIMEDOUT" then
      timed_out(sock)
    end
    return nil, ("%s (of the last %d bytes, some may have gone out)"):format(msg, #data), sname, 0
  end
  local st = marks[sock]
  local total = (st and st.total or 0) + #data
  if moved(sock, total) >= FAIR then -- a fast peer: let the others run too
    yield_once(sock, total)
  end
  marks[sock].total = total
  return true
end

return M
