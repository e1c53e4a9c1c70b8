-- The README's example: a coroutine file server on zcsend.loop(), with curl.
local H = require "helper"

describe("examples/fileserver.lua", function()
  it("serves files to curl, byte for byte, several at once", function()
    local data = H.bytes(3 * 1024 * 1024 + 5, 17)
    H.file("site.bin", data)
    local srv = io.popen(("echo $$; exec %s examples/fileserver.lua %s 0"):format(H.LUA, H.tmp), "r")
    local pid = srv:read("l")
    local line = srv:read("l")
    local port = assert(line:match(":(%d+)/$"), line)
    -- curl is the peer, not the code under test: no sanitizer preload for it
    local cmd = "env -u LD_PRELOAD curl -s -S --max-time 30 -o %s -w '%%{http_code}' http://127.0.0.1:%s/%s"
    local procs = {}
    for i = 1, 8 do
      procs[i] = io.popen(cmd:format(H.path("got" .. i), port, "site.bin"))
    end
    for i = 1, 8 do
      assert.are.equal("200", procs[i]:read("a"))
      procs[i]:close()
      assert.is_true(H.read_file(H.path("got" .. i)) == data)
    end
    local p = io.popen(cmd:format(H.path("none"), port, "missing"))
    assert.are.equal("404", p:read("a"))
    p:close()
    H.file("empty.bin", "") -- no bytes to send: the head alone, and the server lives on
    p = io.popen(cmd:format(H.path("got-empty"), port, "empty.bin"))
    assert.are.equal("200", p:read("a"))
    p:close()
    assert.are.equal("", H.read_file(H.path("got-empty")))
    p = io.popen(cmd:format(H.path("got9"), port, "site.bin"))
    assert.are.equal("200", p:read("a"))
    p:close()
    assert.is_true(H.read_file(H.path("got9")) == data)
    p = io.popen(cmd:format(H.path("none"), port, "..%2f..%2fetc/passwd") .. " --path-as-is")
    assert.is_truthy(({ ["403"] = true, ["404"] = true })[p:read("a")])
    p:close()
    os.execute("kill " .. pid) -- the shell's builtin: no helper binary under a sanitizer preload
    srv:close()
  end)
end)
