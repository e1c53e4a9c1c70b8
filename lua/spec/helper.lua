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

function H.fd_count()
  local p = io.popen("ls /proc/" .. H.pid() .. "/fd | wc -l")
  local n = tonumber(p:read("a"))
  p:close()
  return n - 1 -- the ls pipe itself
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
function H.cert()
  local crt, key = H.path("cert.pem"), H.path("key.pem")
  if not io.open(crt) then
    assert(os.execute(("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 " ..
      "-subj /CN=localhost -keyout %s -out %s >/dev/null 2>&1"):format(key, crt)))
  end
  return crt, key
end

function H.cleanup()
  os.execute("rm -rf " .. H.tmp)
end

return H
