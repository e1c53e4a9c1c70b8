-- A small HTTP/1.1 file server in Tarantool, sending files with zcsend:
--
--   tarantool lua/examples/tarantool_fileserver.lua ROOT [PORT [SECONDS]]
--
-- PORT 0 (the default) takes any free port; the server prints "port N" once it
-- listens, and runs for SECONDS (default: until SIGTERM or SIGINT).
-- GET and HEAD of the files under ROOT, a single "Range: bytes=..." answered
-- with 206, HTTP/1.1 keep-alive; one fiber per connection (socket.tcp_server),
-- each file sent zero-copy with zcsend.sendfile(sock, file, offset, count) on
-- the connection's own Tarantool socket. While it waits for the client, the
-- fiber yields: the other connections and every other fiber keep running.
--
-- Environment: ZCSEND_TIMEOUT = seconds a transfer (or a write of a head)
-- may go without progress before it is given up (default 60);
-- FILESERVER_STATS=1 adds GET /stats: JSON with the longest gap between the
-- wakeups of a fiber that sleeps 10 ms in a loop ("max_gap_ms": how long the
-- tx thread was ever kept from running fibers; /stats?reset starts it anew),
-- transfer counts, errors by name and the Lua heap in KiB (/stats?gc: after a
-- full collection).
local fiber = require "fiber"
local socket = require "socket"
local fio = require "fio"
local log = require "log"
local clock = require "clock"
local json = require "json"

-- run from a checkout: zcsend.lua beside this directory, the LuaJIT build of
-- its C part in lua/build-luajit (make -C lua LUA=luajit). Installed with
-- luarocks into Tarantool's paths, none of this is needed.
local here = (debug.getinfo(1, "S").source:match("^@(.*)/[^/]*$") or ".") .. "/"
package.path = here .. "../?.lua;" .. package.path
package.cpath = (os.getenv("ZCSEND_CPATH") or (here .. "../build-luajit/?.so")) .. ";" .. package.cpath
local zcsend = require "zcsend"

local root = arg[1]
if not root then
  io.stderr:write("usage: tarantool tarantool_fileserver.lua ROOT [PORT [SECONDS]]\n")
  os.exit(2)
end
root = root:gsub("/+$", "")
local port = tonumber(arg[2] or 0)
local lifetime = tonumber(arg[3])
local TIMEOUT = tonumber(os.getenv("ZCSEND_TIMEOUT") or "") or zcsend.TIMEOUT
local KEEPALIVE = 30 -- seconds an idle connection may wait for its next request
local MAX_HEAD = 16384

local stats = { transfers = 0, bytes = 0, errors = {}, last_error = nil, max_gap_ms = 0 }

local function count_error(name, msg, sent)
  stats.errors[name] = (stats.errors[name] or 0) + 1
  stats.last_error = { name = name, msg = msg, sent = sent }
end

local REASON = {
  [200] = "OK", [206] = "Partial Content", [400] = "Bad Request", [403] = "Forbidden",
  [404] = "Not Found", [405] = "Method Not Allowed", [416] = "Range Not Satisfiable",
  [431] = "Request Header Fields Too Large",
}

-- the response head; extra: more header lines
local function head_of(status, length, keep, extra)
  return ("HTTP/1.1 %d %s\r\nContent-Length: %d\r\nConnection: %s\r\n%s\r\n"):format(
    status, REASON[status], length, keep and "keep-alive" or "close", extra or "")
end

local function write(s, data)
  return s:write(data, TIMEOUT) == #data
end

-- a whole response; a HEAD request gets its head only
local function reply(s, status, body, keep, extra, head_only)
  return write(s, head_of(status, #body, keep, extra) .. (head_only and "" or body)) and keep
end

-- "/a%20b" -> "/a b"; nil for what may not name a file under root
local function file_path(target)
  local path = target:match("^[^?#]*")
  path = path:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)
  if path:sub(1, 1) ~= "/" or path:find("\0", 1, true) then
    return nil
  end
  for part in path:gmatch("[^/]+") do
    if part == ".." then
      return nil
    end
  end
  return root .. path
end

-- one "bytes=a-b" range of a file of size bytes -> offset, count; false:
-- unsatisfiable; nil: none (or several, answered with the whole file)
local function byte_range(spec, size)
  if not spec then
    return nil
  end
  local a, b = spec:match("^%s*bytes=(%d*)-(%d*)%s*$")
  if not a or (a == "" and b == "") then
    return nil
  end
  if size == 0 then
    return false
  end
  local first, last
  if a == "" then -- the last b bytes
    local n = tonumber(b)
    if n == 0 then
      return false
    end
    first, last = math.max(0, size - n), size - 1
  else
    first = tonumber(a)
    if b ~= "" and tonumber(b) < first then
      return nil -- not a valid range: ignored
    end
    if first >= size then
      return false
    end
    last = b == "" and size - 1 or math.min(tonumber(b), size - 1)
  end
  return first, last - first + 1
end

local function send_stats(s, target, keep, head_only)
  if target:find("[?&]gc") then -- a full collection first: the heap that stays
    collectgarbage()
    collectgarbage()
  end
  local body = json.encode({
    max_gap_ms = stats.max_gap_ms, transfers = stats.transfers, bytes = stats.bytes,
    errors = stats.errors, last_error = stats.last_error, lua_kb = collectgarbage("count"),
  }) .. "\n"
  if target:find("[?&]reset") then
    stats.max_gap_ms = 0
  end
  return reply(s, 200, body, keep, "Content-Type: application/json\r\n", head_only)
end

-- answers one request; true: keep the connection for the next one
local function answer(s, head)
  local method, target, minor = head:match("^(%u+) (%S+) HTTP/1%.([01])\r\n")
  if not method then
    return reply(s, 400, "bad request\n", false)
  end
  local lower = head:lower() -- header names are case-insensitive
  local function header(name)
    return lower:match("\r\n" .. name .. ":[ \t]*([^\r]*)")
  end
  local conn = header("connection") or ""
  local keep = (minor == "1" and not conn:find("close", 1, true)) or conn:find("keep-alive", 1, true) ~= nil
  if header("transfer%-encoding") or tonumber(header("content%-length") or "0") ~= 0 then
    return reply(s, 400, "no request bodies here\n", false)
  end
  if method ~= "GET" and method ~= "HEAD" then
    return reply(s, 405, "GET or HEAD\n", keep, "Allow: GET, HEAD\r\n")
  end
  local head_only = method == "HEAD"
  if stats.enabled and target:match("^/stats") then
    return send_stats(s, target, keep, head_only)
  end
  local path = file_path(target)
  if not path then
    return reply(s, 403, "forbidden\n", keep, nil, head_only)
  end
  local st = fio.stat(path) -- in Tarantool's thread pool: the fiber yields
  local f = st and st:is_reg() and io.open(path, "rb")
  if not f then
    return reply(s, 404, "not found\n", keep, nil, head_only)
  end
  local size = f:seek("end")
  local offset, count = byte_range(header("range"), size)
  local status, extra = 200, "Accept-Ranges: bytes\r\n"
  if offset == false then
    f:close()
    return reply(s, 416, "", keep, ("Content-Range: bytes */%d\r\n"):format(size))
  elseif offset then
    status = 206
    extra = extra .. ("Content-Range: bytes %d-%d/%d\r\n"):format(offset, offset + count - 1, size)
  else
    offset, count = 0, size
  end
  if not write(s, head_of(status, count, keep, extra)) then
    f:close()
    return false
  end
  if head_only or count == 0 then -- count must be positive: an empty file has no body
    f:close()
    return keep
  end
  local sent, msg, name, partial = zcsend.sendfile(s, f, offset, count, { timeout = TIMEOUT })
  f:close()
  if sent ~= count then
    count_error(name or "ESHORT", msg or "short transfer", partial or sent)
    log.warn("%s: %s (%d of %d bytes sent)", path, tostring(msg), partial or sent or 0, count)
    return false
  end
  stats.transfers, stats.bytes = stats.transfers + 1, stats.bytes + sent
  return keep
end

local function handle(s)
  pcall(s.setsockopt, s, "IPPROTO_TCP", "TCP_NODELAY", true) -- head and a small body: two sends
  while true do
    local head = s:read({ delimiter = "\r\n\r\n", chunk = MAX_HEAD }, KEEPALIVE)
    if not head or head == "" then
      return -- EOF, the idle timeout or an error: tcp_server closes s
    end
    if head:sub(-4) ~= "\r\n\r\n" then
      if #head >= MAX_HEAD then
        reply(s, 431, "request head too large\n", false)
      end
      return
    end
    if not answer(s, head) then
      return
    end
  end
end

if os.getenv("FILESERVER_STATS") == "1" then
  stats.enabled = true
  fiber.create(function()
    fiber.name("gap-monitor")
    local last = clock.monotonic()
    while true do
      fiber.sleep(0.01)
      local now = clock.monotonic()
      stats.max_gap_ms = math.max(stats.max_gap_ms, (now - last) * 1000)
      last = now
    end
  end)
end

local server = socket.tcp_server("127.0.0.1", port, { name = "fileserver", handler = handle })
if not server then
  io.stderr:write(("tarantool_fileserver: can't listen on port %d: %s\n"):format(port, require("errno").strerror()))
  os.exit(1)
end
print(("port %d"):format(server:name().port))
io.stdout:flush()

if lifetime then
  fiber.sleep(lifetime)
  os.exit(0)
end
