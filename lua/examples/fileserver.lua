-- A small coroutine file server on zcsend.loop():
--   lua5.4 lua/examples/fileserver.lua ROOT [PORT]      (PORT 0: any free port)
-- GET /path answers the file under ROOT with zero-copy sendfile; one request
-- per connection, one coroutine per connection, all on one libev loop.
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

local function read_head(c)
  local buf = ""
  while true do
    local data, err, partial = c:receive(4096) -- non-blocking: what has come so far
    buf = buf .. (data or partial or "")
    if buf:find("\r\n\r\n", 1, true) then
      return buf
    elseif #buf > 16384 or (err and err ~= "timeout") then
      return nil
    end
    zcsend.wait(c, "r")
  end
end

local function reply(c, status, body)
  send_all(c, ("HTTP/1.1 %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"):format(status, #body, body))
end

local function handle(c)
  c:settimeout(0)
  local head = read_head(c)
  local path = head and head:match("^GET (/[^ ]*) HTTP/1%.[01]\r\n")
  if not path then
    reply(c, "400 Bad Request", "bad request\n")
  elseif path:find("..", 1, true) then
    reply(c, "403 Forbidden", "forbidden\n")
  else
    local f = io.open(root .. path, "rb")
    local size = f and f:seek("end")
    if not size or path:sub(-1) == "/" then
      reply(c, "404 Not Found", "not found\n")
    else
      send_all(c, ("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"):format(size))
      local sent, err = zcsend.sendfile(c, f)
      if not sent then
        io.stderr:write(("%s: %s\n"):format(path, err))
      end
    end
    if f then
      f:close()
    end
  end
  c:close()
end

local server = assert(socket.bind("127.0.0.1", port, 128))
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
