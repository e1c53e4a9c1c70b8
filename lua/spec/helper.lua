-- Shared by the specs: paths, files, reader processes, TLS material.
package.path = "./?.lua;./spec/?.lua;" .. package.path
package.cpath = (os.getenv("ZCSEND_CPATH") or "./?.so") .. ";" .. package.cpath

-- ZCSEND_GC_STRESS=1: the collector runs all the time (as luv's CI does)
if os.getenv("ZCSEND_GC_STRESS") == "1" then
  if _VERSION == "Lua 5.4" then
    collectgarbage("incremental", 1, 1000) -- pause 1%: a new cycle at once; step multiplier high
  else -- LuaJIT
    collectgarbage("setpause", 1)
    collectgarbage("setstepmul", 1000)
  end
end


local socket = require "socket"

local H = {}
H.MiB = 1024 * 1024
H.int = require("zcsend")._integer -- math.tointeger where there is one
H.LUA = os.getenv("ZCSEND_LUA") or "lua5.4"
H.tmp = os.tmpname()
os.remove(H.tmp)
assert(os.execute("mkdir -p " .. H.tmp))

function H.path(name)
  return H.tmp .. "/" .. name
end

-- pseudo-random bytes, reproducible from seed
function H.bytes(n, seed)
  local parts, x = {}, seed * 2654435761 % 4294967296 + 1
  local chunk = {}
  for i = 1, 4096 do
    x = (x * 1103515245 + 12345) % 2147483648
    chunk[i] = string.char(x % 256)
  end
  local block = table.concat(chunk)
  local reps = math.floor(n / #block)
  local s = string.rep(block .. string.char(seed % 256), reps)
  return (s .. block):sub(1, n)
end

function H.file(name, data)
  local p = H.path(name)
  local f = assert(io.open(p, "wb"))
  assert(f:write(data))
  f:close()
  return p
end

-- fds open here, but for the listing's own pipe (both of its ends: popen may
-- not have closed the child's end yet when ls looks)
-- The fds this process has open (but the listing's own pipe), and their
-- targets, for a message. Takes no garbage out: a count after a transfer must
-- not lean on the collector.
function H.fd_count()
  local p = io.popen("ls -l /proc/" .. H.pid() .. "/fd")
  local mine = tostring(require("zcsend.core").fileno(p))
  local links, own = {}, nil
  for line in p:lines() do
    local fd, target = line:match("(%d+) %-> (.*)$")
    if fd then
      links[#links + 1] = target
      if fd == mine then
        own = target
      end
    end
  end
  p:close()
  local n, kept = 0, {}
  for _, target in ipairs(links) do
    if target ~= own then
      n = n + 1
      kept[#kept + 1] = target
    end
  end
  return n, table.concat(kept, " ")
end

-- H.fd_count as a baseline: earlier tests' garbage (loops, pipes, cqueues)
-- is collected first, or the collector may close it mid-test
function H.fd_baseline()
  collectgarbage("collect") -- finalizers run, then their memory goes
  collectgarbage("collect")
  return H.fd_count()
end

function H.pid()
  local f = io.open("/proc/self/stat") -- read by this very process
  local pid = f:read("a"):match("^(%d+)")
  f:close()
  return pid
end

-- a listening luasocket server on 127.0.0.1
function H.listen(backlog)
  local srv = assert(socket.bind("127.0.0.1", 0, backlog or 32))
  local _, port = srv:getsockname()
  return srv, port
end

-- A reader in another process: connects n times to port, reads each connection
-- to EOF into out.<i>, then prints "done". opts: delay (s between reads),
-- close_after (bytes, then close), tls (cafile).
function H.reader(port, out, n, opts)
  opts = opts or {}
  local cmd = ("%s spec/reader.lua %d %s %d %s %s %s"):format(H.LUA, port, out, n or 1,
    opts.delay or 0, opts.close_after or 0, opts.tls or "-")
  return io.popen(cmd, "r")
end

function H.reader_wait(p)
  local line = p:read("l")
  p:close()
  return line
end

function H.read_file(p)
  local f = assert(io.open(p, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- a self-signed certificate for 127.0.0.1 (openssl CLI)
-- luaossl contexts for a real handshake on cqueues sockets: the server's with
-- H.cert()'s pair, the client's verifying nothing
function H.cqueues_tls_contexts()
  local context = require "openssl.ssl.context"
  local crt, key = H.cert()
  local server = context.new("TLS", true)
  assert(server:setCertificate(require("openssl.x509").new(H.read_file(crt))))
  assert(server:setPrivateKey(require("openssl.pkey").new(H.read_file(key))))
  return server, context.new("TLS", false)
end

-- an object zcsend treats as TLS (zcsend_tls) over luasocket s: its send() is
-- luasec's (the last index sent), plaintext to the peer here
function H.tls_like(s)
  return {
    zcsend_tls = true,
    getfd = function() return s:getfd() end,
    send = function(_, data, i) return s:send(data, i) end,
  }
end

function H.cert()
  local crt, key = H.path("cert.pem"), H.path("key.pem")
  if not io.open(crt) then
    assert(os.execute(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 " ..
      "-subj /CN=localhost -keyout %s -out %s >/dev/null 2>&1"):format(key, crt)))
  end
  return crt, key
end

-- the open file status flags of fd (/proc/self/fdinfo), and two of them
H.O_APPEND, H.O_NONBLOCK = 1024, 2048 -- Linux x86/arm: 02000, 04000
function H.fdflags(fd)
  local f = assert(io.open("/proc/self/fdinfo/" .. fd))
  local flags = f:read("a"):match("flags:%s*(%d+)")
  f:close()
  return tonumber(flags, 8)
end

function H.has(flags, bit)
  return flags % (2 * bit) >= bit
end

-- Calls open() until what it returns has fd n (what fd(obj) says), closes the
-- others, returns it: a new owner for a number just closed.
function H.take_fd(n, open, fd, close)
  local extra = {}
  for _ = 1, 64 do
    local obj = assert(open())
    if fd(obj) == n then
      for _, o in ipairs(extra) do
        close(o)
      end
      return obj
    end
    extra[#extra + 1] = obj
  end
  error("fd " .. n .. " was not reused")
end

-- Stops loop once `seconds` have passed, so a spec that would hang fails
-- instead: g.expired tells. It ticks on every loop turn until g.done().
function H.guard(loop, seconds)
  local g = { expired = false }
  local u = socket.udp()
  assert(u:setsockname("127.0.0.1", 0))
  local fd = H.int(u:getfd())
  local deadline = socket.gettime() + seconds
  local function tick()
    if g.finished then
      u:close()
    elseif socket.gettime() > deadline then
      g.expired = true
      u:close()
      loop:stop()
    else
      loop:wait(fd, "w", tick)
    end
  end
  loop:wait(fd, "w", tick)
  function g.done()
    g.finished = true
  end
  return g
end

-- reads a non-blocking luasocket peer until EOF (or until `limit` seconds
-- pass), yielding with zcsend.wait; returns what came
function H.drain(c, limit)
  local zcsend = require "zcsend"
  local parts, deadline = {}, socket.gettime() + (limit or 30)
  c:settimeout(0)
  while socket.gettime() < deadline do
    local data, err, partial = c:receive(65536)
    data = data or partial
    if data and #data > 0 then
      parts[#parts + 1] = data
    end
    if err == "closed" then
      break
    elseif err == "timeout" then
      zcsend.wait(c, "r")
    end
  end
  return table.concat(parts)
end

-- drops path's pages from the page cache: written back (sync), then dropped
-- (dd's nocache)
function H.evict(path)
  assert(os.execute(("sync %s && dd if=%s iflag=nocache count=0 status=none"):format(path, path)))
end

-- a zcsend.core transfer of path to a connected socket, to ask it things (it
-- is never stepped here); and the function that closes it all
function H.file_transfer(path)
  local core = require "zcsend.core"
  local srv, port = H.listen()
  local c = assert(require("socket").connect("127.0.0.1", port))
  local s = assert(srv:accept())
  srv:close()
  s:settimeout(0)
  local f = assert(io.open(path, "rb"))
  local t = assert(core.transfer(s:getfd(), core.fileno(f), 0, -1))
  return t, function()
    t:close()
    f:close()
    s:close()
    c:close()
  end
end

-- whether the first MiB of path is in the page cache, as zcsend.core sees it
-- (t:cached; nothing is sent)
function H.cached(path)
  local t, close = H.file_transfer(path)
  local yes = t:cached(1048576)
  close()
  return yes
end

function H.cleanup()
  os.execute("rm -rf " .. H.tmp)
end

return H
