-- A small coroutine file server on zcsend.loop():
--   lua5.4 lua/examples/fileserver.lua ROOT [PORT]      (PORT 0: any free port)
-- GET /path answers the file under ROOT with zero-copy sendfile; HTTP/1.1
-- keep-alive (until the client says "Connection: close" or speaks HTTP/1.0),
-- one coroutine per connection, all on one libev loop.
package.path = "./lua/?.lua;./?.lua;" .. package.path
package.cpath = (os.getenv("ZCSEND_CPATH") or "") .. ";./lua/?.so;./?.so;" .. package.cpath
local zcsend = require "zcsend"
local socket = require "socket"

local root, port = assert(arg[1], "usage: fileserver.lua ROOT [PORT]"), tonumber(arg[2] or 8080)

local function send_all(c, data)
  local i = 1
  while i <= #data do
    local last, err, partial = c:send(data, i)
    if last then
      i = last + 1
    elseif err == "timeout" then
      i = (partial or i - 1) + 1
      zcsend.wait(c, "w")
    else
      return nil, err
    end
  end
  return true
end

-- The next request head from c; buf holds bytes already read past the last
-- one. Returns head, rest (or nil at EOF/error).
local function read_head(c, buf)
  while true do
    local stop = buf:find("\r\n\r\n", 1, true)
    if stop then
      return buf:sub(1, stop + 3), buf:sub(stop + 4)
    elseif #buf > 16384 then
      return nil
    end
    local data, err, partial = c:receive(4096) -- non-blocking: what has come so far
    local got = data or partial or ""
    buf = buf .. got
    if #got == 0 then
      if err ~= "timeout" then
        return nil
      end
      zcsend.wait(c, "r")
    end
  end
end

local function reply(c, status, body, keep)
  local conn = keep and "keep-alive" or "close"
  return send_all(c, ("HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n%s"):format(status, #body, conn, body))
end

-- Answers one request; true to keep the connection open.
local function answer(c, head)
  local path, minor = head:match("^GET (/[^ ]*) HTTP/1%.([01])\r\n")
  if not path then
    reply(c, "400 Bad Request", "bad request\n", false)
    return false
  end
  local conn = (head:match("\r\n[Cc]onnection:%s*([^\r]*)") or ""):lower()
  local keep = (minor == "1" and not conn:find("close", 1, true)) or conn:find("keep-alive", 1, true) ~= nil
  if path:find("..", 1, true) then
    return reply(c, "403 Forbidden", "forbidden\n", keep) and keep
  end
  local f = io.open(root .. path, "rb")
  local size = f and f:seek("end")
  if not size or path:sub(-1) == "/" then
    if f then
      f:close()
    end
    return reply(c, "404 Not Found", "not found\n", keep) and keep
  end
  local ok = send_all(c, ("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: %s\r\n\r\n")
    :format(size, keep and "keep-alive" or "close"))
  local sent, err = 0, nil
  if ok and size > 0 then -- an empty file has no bytes to send (and count must be positive)
    sent, err = zcsend.sendfile(c, f, 0, size)
  end
  f:close()
  if ok and not sent then
    io.stderr:write(("%s: %s\n"):format(path, err))
  end
  return keep and sent == size
end

local function handle(c)
  c:settimeout(0)
  c:setoption("tcp-nodelay", true) -- the head and a small body go out as two sends
  local head, rest = read_head(c, "")
  while head and answer(c, head) do
    head, rest = read_head(c, rest)
  end
  c:close()
end

local server = assert(socket.bind("127.0.0.1", port, 1024))
server:settimeout(0)
print(("zcsend: serving %s on http://127.0.0.1:%d/"):format(root, select(2, server:getsockname())))
io.stdout:flush()

local loop = zcsend.loop()
loop:wrap(function()
  while true do
    zcsend.wait(server, "r")
    local c = server:accept()
    if c then
      loop:wrap(handle, c)
    end
  end
end)
loop:run()
