-- What the host specs (luv_spec, tarantool_spec, nginx_spec) share: the
-- shell, the files they serve, the scripts and processes they start, curl,
-- raw clients, and what they read in /proc. Run from lua/, with spec/ (for
-- helper.lua) and hostspec/ on package.path:
--   package.path = "./spec/?.lua;./hostspec/?.lua;" .. package.path
--   local C = require "common"
local H = require "helper"
local socket = require "socket"
local luassert = require "luassert" -- busted's assert, as the specs have it

local C = {}

function C.sh(cmd) -- stdout of cmd
  local p = assert(io.popen(cmd, "r"))
  local out = p:read("a")
  p:close()
  return out
end

C.LUA_DIR = C.sh("pwd"):match("^[^\n]*") -- lua/: every spec runs from there

function C.exists(path)
  local f = io.open(path)
  if f then
    f:close()
  end
  return f ~= nil
end

-- writes files (name = data) into dir, made first; returns dir
function C.write_files(dir, files)
  assert(os.execute("mkdir -p " .. dir))
  for name, data in pairs(files) do
    local f = assert(io.open(dir .. "/" .. name, "wb"))
    assert(f:write(data))
    f:close()
  end
  return dir
end

-- ---- a cold file (issue 13 §4) ------------------------------------------------------
-- A file not in the page cache must be read in by a prefetch thread of the core
-- while the host's loop runs on; these make one for a host to serve.
-- C.cold_file(name, size, seed): a file of H.bytes(size, seed) in a directory of
-- its own under /var/tmp (H.tmp may be a tmpfs, which keeps every page in memory:
-- nothing to evict), made by the shell's mkdir (mktemp aborts under the ASan
-- preload), C.COLD_DIR, readable by a worker of another user (nginx's);
-- returns its path, its bytes and a function that removes the directory
C.COLD_DIR = "/var/tmp/zcs-hostcold-" .. H.pid()
function C.cold_file(name, size, seed)
  local dir = C.COLD_DIR
  assert(os.execute(("mkdir -p %s && chmod 755 %s"):format(dir, dir)))
  local data = H.bytes(size, seed)
  local path = C.write_files(dir, { [name] = data }) .. "/" .. name
  assert(os.execute("chmod 644 " .. path))
  return path, data, function() os.execute("rm -rf " .. dir) end
end

-- evicts path from the page cache (written back by sync, then dropped by dd's
-- nocache) and tells whether it is out; false where the core can't tell what
-- is in the page cache (no cachestat(2): an older kernel, or valgrind, which
-- doesn't know the call): there zcsend steps as it always did, and a test has
-- nothing to see: it says pending(C.NO_CACHESTAT), it never passes blind
function C.evicted(path)
  H.evict(path)
  return not H.cached(path)
end
C.NO_CACHESTAT = "the core sees the file in the page cache right after its eviction: it can't tell here " ..
  "(no cachestat(2): an older kernel, or valgrind)"

-- ---- scripts in a host process -------------------------------------------------
-- R(key, ...) for a script's prelude: prints "key=v1|v2|..." (tostring of every
-- value), which run_script hands back by key for the spec to compare exactly
C.R = [==[
local function R(k, ...)
  local t = {}
  for i = 1, select("#", ...) do
    t[i] = tostring((select(i, ...)))
  end
  io.stdout:write(k, "=", table.concat(t, "|"), "\n")
  io.stdout:flush()
end
]==]

-- writes text (which ends with R('end', 'ok')) to path and runs cmd (format
-- with %s for path and for the file stderr goes to); asserts the script got to
-- its end and returns its R() results by key
function C.run_script(path, text, cmd)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
  local errfile = path .. ".err"
  local out = C.sh(cmd:format(path, errfile))
  local res = {}
  for k, v in out:gmatch("([%w_]+)=([^\n]*)") do
    res[k] = v
  end
  luassert.are.equal("ok", res["end"], "the script did not finish:\n" .. out .. "\n" .. H.read_file(errfile))
  return res
end

-- ---- processes ---------------------------------------------------------------------
-- starts cmd (a shell command line) in the background; its pid
function C.background(cmd)
  return assert(tonumber(C.sh(cmd .. " & echo $!"):match("(%d+)")))
end

-- runs cmd (exec'd: the pid is its own) with its stdout on a pipe: the pid and
-- the pipe, whose close waits for it
function C.spawn(cmd)
  local p = assert(io.popen("echo $$; exec " .. cmd, "r"))
  return tonumber(p:read("l")), p
end

-- a process's state letter (R, S, Z, ...), nil once it is gone
function C.proc_state(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then
    return nil
  end
  local s = f:read("a")
  f:close()
  return s:match("^%d+ %b() (%a)")
end

function C.gone(pid) -- no process, or a zombie
  local st = C.proc_state(pid)
  return st == nil or st == "Z"
end

-- waits (up to seconds, 5 if nil) until pred() gives a true value: that
-- value, or pred()'s last answer
function C.wait_for(pred, seconds)
  local deadline = socket.gettime() + (seconds or 5)
  while socket.gettime() < deadline do
    local v = pred()
    if v then
      return v
    end
    socket.sleep(0.05)
  end
  return pred()
end

-- sends pid sig (TERM if nil), waits up to seconds for it to go, and then
-- KILLs it; true if it went by itself
function C.stop(pid, sig, seconds)
  os.execute(("kill -%s %d 2>/dev/null"):format(sig or "TERM", pid))
  if C.wait_for(function() return C.gone(pid) end, seconds) then
    return true
  end
  os.execute("kill -KILL " .. pid .. " 2>/dev/null")
  return false
end

function C.fd_count(pid)
  return tonumber(C.sh("ls /proc/" .. pid .. "/fd | wc -l"))
end

function C.rss_kb(pid)
  return tonumber(H.read_file("/proc/" .. pid .. "/status"):match("VmRSS:%s*(%d+)"))
end

-- a port nothing listens on now
function C.free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return H.int(tonumber(port))
end

-- ---- clients -----------------------------------------------------------------------
-- curl args: its stdout
function C.curl(args)
  return C.sh("curl -s --max-time 30 " .. args)
end

-- curl args, the body dropped: the status ("404"), and the body's size with
-- size ("200 65541")
function C.status(args, size)
  return C.curl("-o /dev/null -w '%{http_code}" .. (size and " %{size_download}" or "") .. "' " .. args)
end

-- a luasocket client that asked for path (GET, HTTP/1.1) and reads nothing yet
function C.raw_get(port, path)
  local c = assert(socket.connect("127.0.0.1", port))
  assert(c:send(("GET %s HTTP/1.1\r\nHost: x\r\n\r\n"):format(path)))
  return c
end

-- closes a luasocket connection with an RST (SO_LINGER 0)
function C.reset(c)
  assert(c:setoption("linger", { on = true, timeout = 0 }))
  c:close()
end

return C
