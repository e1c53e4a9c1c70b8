-- A content_by_lua_file handler serving the files under nginx's `root` (or
-- `alias`) with zcsend: GET and HEAD, one Range (bytes=a-b, a-, -n) -> 206,
-- an unsatisfiable one -> 416 (several ranges, or a malformed one: the whole
-- file, 200, as RFC 9110 allows). The response head and the file both go
-- through ngx.req.socket(true): nginx hands the connection over (and closes
-- it after the handler, so every response says "Connection: close").
-- On HTTPS zcsend sends through the socket's own TLS, plaintext never.
--
--   location /files/ {
--     alias /srv/files/;
--     set $zcsend_timeout 30;          # optional: seconds without progress (default 60)
--     content_by_lua_file /path/to/files.lua;
--   }
--
-- The outcome is left in ngx.ctx.zcsend = { sent = n, err = "ENAME", msg = "..." }
-- for log_by_lua; failures are logged (peer-side ones at info level).
local zcsend = require "zcsend"

local method = ngx.req.get_method()
if method ~= "GET" and method ~= "HEAD" then
  ngx.header["Allow"] = "GET, HEAD"
  return ngx.exit(ngx.HTTP_NOT_ALLOWED)
end

local path = ngx.var.request_filename
local f = path and path:sub(-1) ~= "/" and io.open(path, "rb")
if not f then
  return ngx.exit(ngx.HTTP_NOT_FOUND)
end
local size = f:seek("end")
f:seek("set")
local _, rerr = f:read(0) -- a directory opens, but does not read
if rerr or not size then
  f:close()
  return ngx.exit(ngx.HTTP_NOT_FOUND)
end

-- one byte range: first, last (inclusive); false: unsatisfiable; nil: serve it all
local function range(h)
  if type(h) ~= "string" then
    return nil
  end
  local a, b = h:match("^%s*bytes%s*=%s*(%d*)%s*%-%s*(%d*)%s*$")
  if not a or (a == "" and b == "") then
    return nil
  end
  if a == "" then -- the last b bytes
    local n = tonumber(b)
    if n == 0 or size == 0 then
      return false
    end
    return size - math.min(n, size), size - 1
  end
  local first, last = tonumber(a), b ~= "" and tonumber(b) or size - 1
  if b ~= "" and last < first then
    return nil
  elseif first >= size then
    return false
  end
  return first, math.min(last, size - 1)
end

local first, last = range(ngx.var.http_range)
local status, reason, extra = 200, "OK", ""
if first == false then
  status, reason, extra = 416, "Range Not Satisfiable", ("Content-Range: bytes */%d\r\n"):format(size)
elseif first then
  status, reason = 206, "Partial Content"
  extra = ("Content-Range: bytes %d-%d/%d\r\n"):format(first, last, size)
else
  first, last = 0, size - 1
end
local count = status == 416 and 0 or last - first + 1

local sock, err = ngx.req.socket(true)
if not sock then
  f:close()
  ngx.log(ngx.ERR, "files.lua: ngx.req.socket(true): ", err)
  return ngx.exit(ngx.HTTP_INTERNAL_SERVER_ERROR)
end
local head = ("HTTP/1.1 %d %s\r\nServer: nginx+zcsend\r\nDate: %s\r\n" ..
  "Content-Type: application/octet-stream\r\nContent-Length: %d\r\nAccept-Ranges: bytes\r\n" ..
  "%sConnection: close\r\n\r\n"):format(status, reason, ngx.http_time(ngx.time()), count, extra)
local ok
ok, err = sock:send(head)
if not ok or method == "HEAD" or count == 0 then
  f:close()
  ngx.ctx.zcsend = { sent = 0, err = not ok and "EPIPE" or nil, msg = err }
  return
end

local timeout = tonumber(ngx.var.zcsend_timeout)
local sent, msg, name, partial = zcsend.sendfile(sock, f, first, count, { timeout = timeout })
f:close()
ngx.ctx.zcsend = { sent = sent or partial, err = name, msg = msg }
if not sent then
  local peer = name == "ETIMEDOUT" or name == "ECONNRESET" or name == "EPIPE"
  ngx.log(peer and ngx.INFO or ngx.ERR, "files.lua: ", path, ": ", msg, " after ", partial, " bytes")
end
