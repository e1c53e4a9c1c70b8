-- A peer in its own process: reader.lua PORT OUT N DELAY CLOSE_AFTER CAFILE|-
-- Opens N connections to 127.0.0.1:PORT, reads each to EOF into OUT.<i>
-- (all at once, with select), then prints "done".
local socket = require "socket"
local port, out, n, delay, close_after, cafile = tonumber(arg[1]), arg[2], tonumber(arg[3]),
  tonumber(arg[4]), tonumber(arg[5]), arg[6]
local ssl = cafile ~= "-" and require "ssl"
local conns, files, got = {}, {}, {}
for i = 1, n do
  local c = assert(socket.connect("127.0.0.1", port))
  if ssl then
    c = assert(ssl.wrap(c, { mode = "client", protocol = "any", verify = "peer", cafile = cafile }))
    assert(c:dohandshake())
  end
  c:settimeout(0)
  conns[i] = c
  files[c] = assert(io.open(out .. "." .. i, "wb"))
  got[c] = 0
end
local open = n
while open > 0 do
  local list = {}
  for _, c in ipairs(conns) do
    if files[c] then
      list[#list + 1] = c
    end
  end
  -- TLS may hold decrypted bytes: don't wait on the fd when it has some
  local ready = list
  if not ssl then
    ready = socket.select(list, nil, 5)
  end
  for _, c in ipairs(ready) do
    local data, err, partial = c:receive(65536)
    data = data or partial
    if data and #data > 0 then
      files[c]:write(data)
      got[c] = got[c] + #data
    end
    -- "closed", or (TLS) a record cut short by a peer that went away mid-write
    local ended = err and err ~= "timeout" and err ~= "wantread" and err ~= "wantwrite"
    if ended or (close_after > 0 and got[c] >= close_after) then
      files[c]:close()
      files[c] = nil
      c:close()
      open = open - 1
    elseif ssl and err == "wantread" then
      socket.select({ c }, nil, 0.01)
    end
  end
  if delay > 0 then
    socket.sleep(delay)
  end
end
print("done")
