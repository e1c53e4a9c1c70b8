-- lua5.4 benchmarks/lua_server.lua FILE: one transfer through the Lua module on
-- zcsend.loop(); prints the port, then "secs cpu_secs" (os.clock: user+sys).
package.path = "./lua/?.lua;" .. package.path
package.cpath = "./lua/?.so;" .. package.cpath
local zcsend = require "zcsend"
local socket = require "socket"
local srv = assert(socket.bind("127.0.0.1", 0))
print((select(2, srv:getsockname())))
io.stdout:flush()
local c = assert(srv:accept())
assert(c:receive(1))
local f = assert(io.open(arg[1], "rb"))
local t0, c0 = socket.gettime(), os.clock()
local loop = zcsend.loop()
loop:sendfile(c, f, 0, nil, function(sent, err) assert(sent, err) end)
loop:run()
c:close()
print(("%f %f"):format(socket.gettime() - t0, os.clock() - c0))
