-- Run as its own process, without luasocket (which ignores SIGPIPE for the
-- whole process when loaded): the peer of a pipe goes away mid-transfer.
package.path = "./?.lua;" .. package.path
package.cpath = (os.getenv("ZCSEND_CPATH") or "./?.so") .. ";" .. package.cpath
local zcsend = require "zcsend"
local core = require "zcsend.core"
local function sig(field)
  for line in io.lines("/proc/self/status") do
    local v = line:match("^" .. field .. ":%s*(%x+)")
    if v then return v end
  end
end
local ign0, blk0 = sig("SigIgn"), sig("SigBlk")
local big = arg[1]
local f = assert(io.open(big, "rb"))
local p = assert(io.popen("head -c 100000 >/dev/null", "w")) -- reads a little, then exits
local n, msg, name, sent = zcsend.sendfile(core.fileno(p), f)
pcall(p.close, p)
print(n, name, sent, sig("SigIgn") == ign0 and sig("SigBlk") == blk0)
