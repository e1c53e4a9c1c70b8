-- A luv file server sending files zero-copy with zcsend:
--   lua5.4 lua/examples/luv_fileserver.lua ROOT [PORT [SECONDS]]
-- (PORT 0: any free port, printed on the first line; SECONDS: exit after that
-- long). GET and HEAD of the files under ROOT, HTTP/1.1 keep-alive (until the
-- client says "Connection: close" or speaks HTTP/1.0), all on luv's loop in
-- the callback style: the response head goes out with uv.write, the file
-- with zcsend.luv.sendfile, which waits for the head to leave first.
-- Environment: ZCSEND_TIMEOUT: seconds a transfer may make no progress
-- (default 60); ZCSEND_STATS=1: a 10 ms timer watches the loop and GET
-- /stats answers what it saw (for the tests; /stats?reset starts afresh).
-- With LuaJIT: ZCSEND_CPATH="lua/build-luajit/?.so" luajit lua/examples/luv_fileserver.lua ...
package.path = "./lua/?.lua;./?.lua;" .. package.path
package.cpath = (os.getenv("ZCSEND_CPATH") or "") .. ";./lua/?.so;./?.so;" .. package.cpath
local uv = require "luv"
local zcsend = require "zcsend"
local zluv = require "zcsend.luv"

local root = assert(arg[1], "usage: luv_fileserver.lua ROOT [PORT [SECONDS]]")
local port, lifetime = tonumber(arg[2] or 8080), tonumber(arg[3])
local TIMEOUT = tonumber(os.getenv("ZCSEND_TIMEOUT") or "") or zcsend.TIMEOUT
local STATS = os.getenv("ZCSEND_STATS") == "1"

-- a peer that goes away while libuv writes a head would kill the process
-- with SIGPIPE: every luv server ignores it (zcsend's own writes are safe)
local sigpipe = uv.new_signal()
sigpipe:start("sigpipe", function() end)
sigpipe:unref()

local stats = { transfers = 0, bytes = 0, failures = 0, connections = 0, max_gap_ms = 0 }
local errors = {} -- name -> count
if STATS then
  local last = uv.hrtime()
  local ticker = uv.new_timer()
  ticker:start(10, 10, function()
    local now = uv.hrtime()
    stats.max_gap_ms = math.max(stats.max_gap_ms, (now - last) / 1e6)
    last = now
  end)
  ticker:unref()
end

local function stats_body(reset)
  collectgarbage("collect")
  collectgarbage("collect")
  local lines = {}
  stats.lua_kb = math.floor(collectgarbage("count"))
  for k, v in pairs(stats) do
    lines[#lines + 1] = ("%s=%s"):format(k, type(v) == "number" and ("%.3f"):format(v):gsub("%.?0+$", "") or v)
  end
  for name, n in pairs(errors) do
    lines[#lines + 1] = ("error.%s=%d"):format(name, n)
  end
  table.sort(lines)
  if reset then
    stats.max_gap_ms = 0
  end
  return table.concat(lines, "\n") .. "\n"
end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- Answers one request head; done(keep) once the response has been handed
-- over (keep: the connection stays open for the next one).
local function answer(c, head, done)
  local method, target, minor = head:match("^(%u+) (/[^ ]*) HTTP/1%.([01])\r\n")
  local function reply(status, body, keep, extra)
    uv.write(c, ("HTTP/1.1 %s\r\nContent-Length: %d\r\n%sConnection: %s\r\n\r\n%s")
      :format(status, #body, extra or "", keep and "keep-alive" or "close", method == "HEAD" and "" or body))
    return done(keep)
  end
  if not method then
    return reply("400 Bad Request", "bad request\n", false)
  end
  local conn = (head:match("\r\n[Cc]onnection:%s*([^\r]*)") or ""):lower()
  local keep = (minor == "1" and not conn:find("close", 1, true)) or conn:find("keep-alive", 1, true) ~= nil
  if method ~= "GET" and method ~= "HEAD" then
    return reply("405 Method Not Allowed", "method not allowed\n", keep, "Allow: GET, HEAD\r\n")
  end
  local path, query = target:match("^([^?]*)%??(.*)$")
  path = unescape(path)
  if STATS and path == "/stats" then
    return reply("200 OK", stats_body(query == "reset"), keep)
  end
  if path:find("..", 1, true) or path:find("\0", 1, true) then
    return reply("403 Forbidden", "forbidden\n", keep)
  end
  local st = uv.fs_stat(root .. path) -- synchronous, as io.open is: quick on a local disk
  local f = st and st.type == "file" and io.open(root .. path, "rb")
  if not f then
    return reply("404 Not Found", "not found\n", keep)
  end
  local size = f:seek("end")
  uv.write(c, ("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %d\r\n" ..
    "Connection: %s\r\n\r\n"):format(size, keep and "keep-alive" or "close"))
  if method == "HEAD" or size == 0 then -- no bytes to send (and count must be positive)
    f:close()
    return done(keep)
  end
  -- the head may still be queued (a slow reader): zcsend.luv waits for it
  zluv.sendfile(c, f, 0, size, { timeout = TIMEOUT }, function(sent, msg, name, partial)
    f:close()
    stats.transfers = stats.transfers + 1
    stats.bytes = stats.bytes + (sent or partial)
    if not sent then
      stats.failures = stats.failures + 1
      errors[name] = (errors[name] or 0) + 1
      print(("sendfile %s: %s (sent %d of %d)"):format(path, msg, partial, size))
      io.stdout:flush()
    end
    done(sent ~= nil and keep) -- a response cut short ends its connection
  end)
end

local function serve(c)
  stats.connections = stats.connections + 1
  local buf, busy, eof, ending, closed = "", false, false, false, false
  local function close()
    if not closed then
      closed = true
      stats.connections = stats.connections - 1
      c:close()
    end
  end
  local function next_request()
    while not busy and not ending do
      local stop = buf:find("\r\n\r\n", 1, true)
      if not stop then
        if eof or #buf > 16384 then
          ending = true
          close()
        end
        return
      end
      local head = buf:sub(1, stop + 3)
      buf = buf:sub(stop + 4)
      busy = true
      local now = true -- done() may come at once (a small reply) or later
      answer(c, head, function(keep)
        busy = false
        if not keep then
          ending = true
          -- close once the reply has left (a plain close could lose it)
          if closed or not uv.shutdown(c, close) then
            close()
          end
        elseif not now then
          next_request()
        end
      end)
      now = false
    end
  end
  c:read_start(function(err, data)
    if err or not data then
      -- EOF, or an error (a reset): a transfer under way ends on its own and
      -- says so (ECONNRESET, EPIPE); answer what came, then close
      c:read_stop()
      eof = true
    else
      buf = buf .. data
      if #buf > 1024 * 1024 then -- pipelining beyond reason
        ending = true
        return close()
      end
    end
    next_request()
  end)
end

local server = uv.new_tcp()
assert(server:bind("127.0.0.1", port))
assert(server:listen(128, function(err)
  if err then
    return
  end
  local c = uv.new_tcp()
  if server:accept(c) then
    serve(c)
  else
    c:close()
  end
end))
print(server:getsockname().port)
io.stdout:flush()

if lifetime then
  local t = uv.new_timer()
  t:start(math.floor(lifetime * 1000), 0, function()
    io.stdout:flush()
    os.exit(0) -- without closing the Lua state: luv 1.44 may crash freeing handles still closing
  end)
  t:unref()
end

uv.run()
