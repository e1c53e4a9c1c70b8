-- zcsend in nginx + lua-nginx-module (issue 11): a real nginx (one worker,
-- LuaJIT) runs lua/examples/nginx/nginx.conf and files.lua as shipped, plus
-- a few test locations; curl and luasocket clients check what arrives.
-- Run from lua/ after `make -C lua` and `make -C lua LUA=luajit`:
--   busted --lua=lua5.4 -o utfTerminal hostspec/nginx_spec.lua
package.path = "./hostspec/?.lua;" .. package.path
local H = require "helper"
local C = require "common"
local socket = require "socket"
local zcsend = require "zcsend"

local sh = C.sh
local LUA = C.LUA_DIR
local EXAMPLE = LUA .. "/examples/nginx"
assert(io.open(EXAMPLE .. "/nginx.conf"), "run from lua/: " .. EXAMPLE .. "/nginx.conf not found")

-- all of it under one directory of H.tmp (which teardown removes, as every spec does)
local DIR = H.path("nginx-spec")
local PREFIX, ROOT, OUT = DIR .. "/prefix", DIR .. "/www", DIR .. "/out"
local PORT, TLS_PORT = C.free_port(), C.free_port()
local BIG_SIZE = 64 * H.MiB
local BIG = H.bytes(BIG_SIZE, 7)
local SMALL = H.bytes(1000, 3)

-- test locations, beside the example's own; the outcome of a transfer (left
-- by files.lua in ngx.ctx.zcsend) goes to a shared dict under ?id=
-- (lingering_close off: else the log phase waits out nginx's lingering close)
local SERVER_EXTRA = [[

    location = /pid { content_by_lua_block { ngx.say(ngx.worker.pid()) } }
    location = /gc { content_by_lua_block { collectgarbage("collect") ngx.say("ok") } }
    location = /host { content_by_lua_block { ngx.say(require("zcsend").host()) } }
    location = /stats { content_by_lua_block { local s = require("zcsend").stats() ngx.say(s.bytes_zero_copy, " ", s.bytes_fallback) } }
    location = /result { content_by_lua_block { ngx.say(ngx.shared.zcsend_spec:get(ngx.var.arg_id) or "none") } }
    location /t/ {
      alias @ROOT@/;
      lingering_close off;
      content_by_lua_file @HANDLER@/files.lua;
      log_by_lua_block { require("nginx_spec_host").record() }
    }
    location /t2/ {
      alias @ROOT@/;
      set $zcsend_timeout 2;
      lingering_close off;
      content_by_lua_file @HANDLER@/files.lua;
      log_by_lua_block { require("nginx_spec_host").record() }
    }
    location = /drive {
      lingering_close off;
      content_by_lua_block { require("nginx_spec_host").drive() }
      log_by_lua_block { require("nginx_spec_host").record() }
    }
    location = /sink {
      client_max_body_size 0;
      content_by_lua_block { require("nginx_spec_host").sink() }
    }
    location /cold/ {
      alias @COLD@/;
      lingering_close off;
      access_by_lua_block { require("nginx_spec_host").cold_start() }
      content_by_lua_file @HANDLER@/files.lua;
      log_by_lua_block { require("nginx_spec_host").cold_record() }
    }
    location = /engine { content_by_lua_block { local s = require("zcsend.core").engine_stats() ngx.say(s.prefetches, " ", s.prefetching) } }
    location = /cos { content_by_lua_block { require("nginx_spec_host").cos() } }
    location = /bad { content_by_lua_block { require("nginx_spec_host").bad() } }
    location = /nonyield {
      content_by_lua_block { ngx.say("ok") }
      log_by_lua_block { require("nginx_spec_host").nonyield() }
    }
]]
local HTTP_EXTRA = [[

  lua_shared_dict zcsend_spec 1m;
  init_by_lua_block { package.path = "@PREFIX@/?.lua;" .. package.path }
]]

-- the worker's side of the test locations
local HOST_MODULE = [=[
local zcsend = require "zcsend"
local adapter = require "zcsend.nginx"
local core = require "zcsend.core"
local dict = ngx.shared.zcsend_spec
local ROOT, PORT, TLS_PORT = "@ROOT@", @PORT@, @TLS_PORT@
local M = {}

local function join(...)
  local out = {}
  for i = 1, select("#", ...) do
    out[i] = tostring((select(i, ...)))
  end
  return table.concat(out, "|")
end

function M.record()
  local id, r = ngx.var.arg_id, ngx.ctx.zcsend
  if id and r then
    dict:set(id, join(r.sent, r.err, ("%.2f"):format(ngx.now() - ngx.req.start_time()), ngx.ctx.probes, r.msg))
  end
end

-- a transfer on the raw request socket driven here with the adapter's
-- wait_transfer(t, sock, slice, left) in mode ?mode=, idle timeout ?timeout=
function M.drive()
  local f = assert(io.open(ROOT .. "/" .. ngx.var.arg_file, "rb"))
  local size = f:seek("end")
  local sock = assert(ngx.req.socket(true))
  assert(sock:send(("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"):format(size)))
  local timeout = tonumber(ngx.var.arg_timeout)
  local saved = adapter.mode
  adapter.mode = ngx.var.arg_mode
  local probes0 = zcsend.stats().bytes_fallback -- each probe's byte counts there
  local t = assert(zcsend.transfer(sock, f, 0, size))
  local seen, since, msg, name = 0, core.now(), nil, nil
  while true do
    local r, m, n = t:step()
    if r == "done" or r == nil then
      msg, name = m, n
      break
    end
    if t:sent() ~= seen then
      seen, since = t:sent(), core.now()
    end
    local left = since + timeout - core.now()
    if left <= 0 then
      msg, name = "ETIMEDOUT: here", "ETIMEDOUT"
      break
    end
    local ok, wm, wn = adapter.wait_transfer(t, sock, math.min(left, 0.1), left)
    if ok == nil then
      msg, name = wm, wn
      break
    end
  end
  adapter.mode = saved
  ngx.ctx.zcsend = { sent = t:sent(), err = name, msg = msg }
  ngx.ctx.probes = zcsend.stats().bytes_fallback - probes0
  t:close()
  f:close()
end

-- /cold/ (issue 13 §4): files.lua sends a file not in the page cache. From the
-- access phase on, a timer ticks every 2 ms in this worker; nothing yields
-- between here and files.lua's zcsend.sendfile, nor after it until the log
-- phase, so the ticks seen there are the ticks during the transfer (an event
-- count, no timing). Recorded under ?id=: sent, err, ticks, the core's
-- prefetch counter before and after, msg.
function M.cold_start()
  local st = { ticks = 0, prefetches = core.engine_stats().prefetches }
  ngx.ctx.cold = st
  assert(ngx.timer.at(0, function(premature)
    while not st.done and not premature do
      ngx.sleep(0.002)
      st.ticks = st.ticks + 1
    end
  end))
end

function M.cold_record()
  local st, r = ngx.ctx.cold, ngx.ctx.zcsend or {}
  st.done = true
  dict:set(ngx.var.arg_id, join(r.sent, r.err, st.ticks, st.prefetches, core.engine_stats().prefetches, r.msg))
end

function M.sink()
  ngx.req.read_body()
  local data = ngx.req.get_body_data()
  if not data then
    local f = assert(io.open(ngx.req.get_body_file(), "rb"))
    data = f:read("*a")
    f:close()
  end
  local answer = #data .. " " .. ngx.md5(data)
  ngx.header["Content-Length"] = #answer
  ngx.print(answer)
end

-- an ngx.socket.tcp() cosocket to our own /sink, TLS after sslhandshake with ?tls=1
function M.cos()
  local tls = ngx.var.arg_tls == "1"
  local s = ngx.socket.tcp()
  s:settimeout(10000)
  assert(s:connect("127.0.0.1", tls and TLS_PORT or PORT))
  if tls then
    assert(s:sslhandshake(nil, "localhost", false))
  end
  local _, istls = adapter.sockfd(s)
  local off, count = 12345, 4 * 1024 * 1024 + 7
  assert(s:send(("PUT /sink HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\nConnection: close\r\n\r\n"):format(count)))
  local f = assert(io.open(ROOT .. "/big.bin", "rb"))
  local sent, msg, name = zcsend.sendfile(s, f, off, count)
  f:seek("set", off)
  local want = count .. " " .. ngx.md5(f:read(count))
  f:close()
  local answer
  repeat
    local line = s:receive("*l")
    answer = line
  until not line or line == ""
  answer = s:receive("*a")
  s:close()
  ngx.say(join(istls, sent, name, msg, answer == want, answer))
end

-- bad input: every line is case=results
function M.bad()
  local out = {}
  local function rec(case, ...)
    out[#out + 1] = case .. "=" .. join(...)
  end
  local sinkport = tonumber(ngx.var.arg_sink)
  local f = assert(io.open(ROOT .. "/small.bin", "rb"))
  rec("table", pcall(zcsend.sendfile, {}, f))
  rec("unconnected", zcsend.sendfile(ngx.socket.tcp(), f))
  local s = ngx.socket.tcp()
  assert(s:connect("127.0.0.1", sinkport))
  s:close()
  rec("closed", zcsend.sendfile(s, f))
  local s2 = ngx.socket.tcp()
  assert(s2:connect("127.0.0.1", sinkport))
  local g = assert(io.open(ROOT .. "/small.bin", "rb"))
  g:close()
  rec("closedfile", pcall(zcsend.sendfile, s2, g))
  rec("negoffset", pcall(zcsend.sendfile, s2, f, -1))
  rec("pasteof", zcsend.sendfile(s2, f, 0, 1000 + 24))
  rec("udp", pcall(zcsend.sendfile, ngx.socket.udp(), f))
  rec("body", zcsend.sendfile(ngx.req.socket(), f))
  -- a cosocket of another request (a timer's): nginx won't use it here, nor will zcsend
  local holder = {}
  assert(ngx.timer.at(0, function()
    local t = ngx.socket.tcp()
    assert(t:connect("127.0.0.1", sinkport))
    holder.s = t
    ngx.sleep(0.3)
    t:close()
  end))
  while not holder.s do
    ngx.sleep(0.01)
  end
  rec("foreign", zcsend.sendfile(holder.s, f))
  s2:close()
  f:close()
  rec("host", zcsend.host())
  ngx.say(table.concat(out, "\n"))
end

-- the log phase can't yield: a wait must fail at once, not block the worker
function M.nonyield()
  local ffi = require "ffi"
  pcall(ffi.cdef, "int pipe(int fds[2]); int close(int fd);")
  local fds = ffi.new("int[2]")
  assert(ffi.C.pipe(fds) == 0)
  local t0 = core.now()
  local ok, msg, name = zcsend.wait(fds[0], "r", 1)
  local took = core.now() - t0
  ffi.C.close(fds[0])
  ffi.C.close(fds[1])
  dict:set("nonyield", join(ok, name, ("%.3f"):format(took), zcsend.host(), msg))
end

return M
]=]

local master, timeout_pid

local function render(text, vars)
  return (text:gsub("@([%u_]+)@", function(k) return vars[k] end))
end

local function start_nginx()
  assert(os.execute("make -s -C " .. LUA .. " LUA=luajit"))
  assert(os.execute(("mkdir -p %s %s %s && chmod 755 %s %s %s %s"):format(PREFIX, ROOT, OUT, H.tmp, DIR, PREFIX, ROOT)))
  local crt, key = H.cert()
  C.write_files(ROOT, { ["big.bin"] = BIG, ["small.bin"] = SMALL, ["mid.bin"] = BIG:sub(1, 16 * H.MiB) })
  local vars = {
    PREFIX = PREFIX, PORT = PORT, TLS_PORT = TLS_PORT, CERT = crt, KEY = key, ROOT = ROOT,
    LUA = LUA, HANDLER = EXAMPLE, COLD = C.COLD_DIR,
  }
  vars.SERVER = render(SERVER_EXTRA, vars)
  vars.HTTP = render(HTTP_EXTRA, vars)
  local conf = render(H.read_file(EXAMPLE .. "/nginx.conf"), vars)
  assert(conf:find("content_by_lua_file " .. EXAMPLE .. "/files.lua", 1, true))
  local f = assert(io.open(PREFIX .. "/nginx.conf", "w"))
  f:write(conf)
  f:close()
  f = assert(io.open(PREFIX .. "/nginx_spec_host.lua", "w"))
  f:write(render(HOST_MODULE, vars))
  f:close()
  -- `timeout`: it ends by itself should this spec die
  timeout_pid = C.background(("timeout -s TERM 300 nginx -p %s -c %s/nginx.conf -e %s/error.log " ..
    ">%s/out.log 2>&1"):format(PREFIX, PREFIX, PREFIX, PREFIX))
  local deadline = socket.gettime() + 15
  while true do
    local c = socket.connect("127.0.0.1", PORT)
    if c then
      c:close()
      break
    end
    assert(socket.gettime() < deadline, "nginx did not start: " .. sh("cat " .. PREFIX .. "/*.log"))
    socket.sleep(0.05)
  end
  master = H.read_file(PREFIX .. "/nginx.pid"):match("%d+")
end

local function stop_nginx()
  if timeout_pid then
    os.execute("kill -TERM " .. timeout_pid .. " 2>/dev/null")
  end
  if master and not C.wait_for(function() return C.gone(master) end, 5) then
    os.execute("kill -KILL " .. master .. " 2>/dev/null")
  end
end

-- GET (or method) on a fresh connection: status, headers (lower-case names), body
local function http(path, opts)
  opts = opts or {}
  local c = assert(socket.connect("127.0.0.1", opts.port or PORT))
  c:settimeout(opts.timeout or 20)
  local body = opts.body or ""
  local extra = opts.body and ("Content-Length: %d\r\n"):format(#body) or ""
  assert(c:send(("%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\n%s%sConnection: close\r\n\r\n%s"):format(
    opts.method or "GET", path, opts.headers or "", extra, body)))
  local data, err, partial = c:receive("*a")
  c:close()
  data = data or partial
  assert(data and #data > 0, "no answer to " .. path .. ": " .. tostring(err))
  local head, rest = data:match("^(.-\r\n)\r\n(.*)$")
  local headers = {}
  for k, v in head:gmatch("\r\n([^:\r\n]+):%s*([^\r\n]*)") do
    headers[k:lower()] = v
  end
  if headers["transfer-encoding"] == "chunked" then -- what ngx.say sends
    local parts, i = {}, 1
    while true do
      local size, at = rest:match("^(%x+)[^\r\n]*\r\n()", i)
      size = tonumber(size, 16)
      if not size or size == 0 then
        break
      end
      parts[#parts + 1] = rest:sub(at, at + size - 1)
      i = at + size + 2
    end
    rest = table.concat(parts)
  end
  return H.int(tonumber(head:match("^HTTP/1%.%d (%d+)"))), headers, rest
end

local function text(path, opts)
  local status, _, body = http(path, opts)
  assert.are.equal(200, status, path)
  return (body:gsub("\n$", ""))
end

local function split(s)
  local out = {}
  for part in (s .. "|"):gmatch("(.-)|") do
    out[#out + 1] = part
  end
  return out
end

-- the result a transfer recorded under id, once it is there
local function result(id, within)
  local deadline = socket.gettime() + (within or 10)
  while true do
    local r = text("/result?id=" .. id)
    if r ~= "none" then
      return split(r)
    end
    assert(socket.gettime() < deadline, "no result for " .. id)
    socket.sleep(0.05)
  end
end

-- curl: "code size" (the body goes to out)
local function curl(url, out, extra)
  return sh(("curl -sk %s -o %s -w '%%{http_code} %%{size_download}' '%s'"):format(extra or "", out, url))
end

-- a background curl: its pid, and the handle whose read waits for it
local function curl_bg(url, out, extra)
  return C.spawn(("curl -s %s -o %s -w '%%{http_code} %%{size_download}' '%s'"):format(extra or "", out, url))
end

local function worker_pid()
  return text("/pid")
end

describe("zcsend in nginx (lua-nginx-module, LuaJIT)", function()
  local wpid

  setup(function()
    start_nginx()
    wpid = worker_pid()
  end)

  teardown(function()
    stop_nginx()
    H.cleanup() -- DIR with it
  end)

  after_each(function()
    -- one worker all along: it never crashed
    assert.are.equal(wpid, worker_pid())
  end)

  it("waits through the nginx adapter", function()
    assert.are.equal("nginx", text("/host"))
  end)

  local function stats()
    local zc, copied = text("/stats"):match("^(%d+) (%d+)$")
    return H.int(tonumber(zc)), H.int(tonumber(copied))
  end

  it("sends 64 MiB byte-exact over HTTP, zero-copy", function()
    local zc0, copied0 = stats()
    local out = OUT .. "/plain"
    assert.are.equal("200 " .. BIG_SIZE, curl(("http://127.0.0.1:%d/big.bin"):format(PORT), out))
    assert.is_true(H.read_file(out) == BIG)
    local zc1, copied1 = stats()
    -- all by sendfile, but for the 1-byte probes that waited for a full socket
    assert.are.equal(BIG_SIZE, (zc1 - zc0) + (copied1 - copied0))
    assert.is_true(copied1 - copied0 < 4096, copied1 - copied0 .. " bytes copied")
  end)

  it("sends 64 MiB byte-exact over HTTPS through nginx's TLS, never a plaintext byte", function()
    local zc0 = text("/stats"):match("^%d+")
    local out = OUT .. "/tls"
    -- plaintext in the TLS stream would end curl's download with an error
    assert.are.equal("200 " .. BIG_SIZE, curl(("https://127.0.0.1:%d/big.bin"):format(TLS_PORT), out))
    assert.is_true(H.read_file(out) == BIG)
    assert.are.equal(zc0, text("/stats"):match("^%d+")) -- not a byte through sendfile
    -- and a range, which starts mid-file
    assert.are.equal("206 1000001", curl(("https://127.0.0.1:%d/big.bin"):format(TLS_PORT), out,
      "-r 5000000-6000000"))
    assert.is_true(H.read_file(out) == BIG:sub(5000001, 6000001))
  end)

  it("answers HEAD with the head alone", function()
    local status, h, body = http("/big.bin", { method = "HEAD" })
    assert.are.equal(200, status)
    assert.are.equal(tostring(BIG_SIZE), h["content-length"])
    assert.are.equal("bytes", h["accept-ranges"])
    assert.are.equal("", body)
  end)

  it("answers a single Range with 206 and exactly those bytes", function()
    local cases = {
      { "bytes=10-19", 10, 19 },
      { "bytes=990-", 990, 999 },
      { "bytes=-7", 993, 999 },
      { "bytes=0-0", 0, 0 },
      { "bytes=500-5000", 500, 999 }, -- the end past EOF: up to the last byte
      { "bytes=-5000", 0, 999 },
    }
    for _, c in ipairs(cases) do
      local status, h, body = http("/small.bin", { headers = "Range: " .. c[1] .. "\r\n" })
      assert.are.equal(206, status, c[1])
      assert.are.equal(("bytes %d-%d/1000"):format(c[2], c[3]), h["content-range"], c[1])
      assert.are.equal(tostring(c[3] - c[2] + 1), h["content-length"], c[1])
      assert.is_true(body == SMALL:sub(c[2] + 1, c[3] + 1), c[1])
    end
    -- several ranges, or a malformed one: the whole file
    for _, r in ipairs({ "bytes=0-1,5-6", "bytes=9-3", "items=1-2" }) do
      local status, _, body = http("/small.bin", { headers = "Range: " .. r .. "\r\n" })
      assert.are.equal(200, status, r)
      assert.is_true(body == SMALL, r)
    end
  end)

  it("answers an unsatisfiable Range with 416", function()
    for _, r in ipairs({ "bytes=1000-", "bytes=5000-6000", "bytes=-0" }) do
      local status, h, body = http("/small.bin", { headers = "Range: " .. r .. "\r\n" })
      assert.are.equal(416, status, r)
      assert.are.equal("bytes */1000", h["content-range"], r)
      assert.are.equal("0", h["content-length"], r)
      assert.are.equal("", body, r)
    end
    assert.are.equal(404, (http("/missing.bin")))
    assert.are.equal(405, (http("/small.bin", { method = "POST", body = "x" })))
  end)

  it("answers a small request at once while two slow downloads wait in the same worker", function()
    local outs, curls = {}, {}
    for i = 1, 2 do
      outs[i] = OUT .. "/slow" .. i
      local pid, p = curl_bg(("http://127.0.0.1:%d/t/big.bin?id=slow%d"):format(PORT, i), outs[i],
        "--limit-rate 1M --max-time 30")
      curls[i] = { pid = pid, p = p }
    end
    socket.sleep(1.0) -- their sockets are full by now: both transfers wait
    local worst = 0
    for _ = 1, 10 do
      local t0 = socket.gettime()
      local status, _, body = http("/small.bin")
      worst = math.max(worst, socket.gettime() - t0)
      assert.are.equal(200, status)
      assert.is_true(body == SMALL)
      socket.sleep(0.1)
    end
    print(("\n  nginx: small request during two slow downloads: worst %.1f ms of 10"):format(worst * 1000))
    assert.is_true(worst < 0.5, ("%.3f s"):format(worst))
    for i = 1, 2 do -- still downloading: the worker waited for them all along
      assert.are.equal("none", text("/result?id=slow" .. i))
      os.execute("kill " .. curls[i].pid)
      curls[i].p:close()
    end
    for i = 1, 2 do
      local r = result("slow" .. i)
      assert.is_true(r[2] == "EPIPE" or r[2] == "ECONNRESET", r[2])
      local got = H.read_file(outs[i])
      assert.is_true(#got > 0 and #got < BIG_SIZE)
      assert.is_true(got == BIG:sub(1, #got), "slow download " .. i .. " is not a prefix of the file")
    end
  end)

  -- a client that sends its request and never reads
  local function never_reads(path)
    return C.raw_get(PORT, path)
  end

  it("over TLS, a client that stops reading: ETIMEDOUT, saying the last chunk may have partly gone", function()
    local out = OUT .. "/tlsslow"
    local pid, p = curl_bg(("https://127.0.0.1:%d/t2/big.bin?id=tlsslow"):format(TLS_PORT), out,
      "-k --limit-rate 1 --max-time 20")
    local r = result("tlsslow", 15)
    os.execute("kill " .. pid)
    p:close()
    assert.are.equal("ETIMEDOUT", r[2])
    -- a cosocket's failed send doesn't say how much of its chunk went
    assert.are.equal("ETIMEDOUT: no progress for 2 s (of the last 131072 bytes, some may have gone out)", r[5])
    local sent = H.int(tonumber(r[1]))
    assert.is_true(sent >= 0 and sent < BIG_SIZE and sent % 131072 == 0, tostring(sent))
  end)

  it("ends a transfer to a client that never reads with ETIMEDOUT, and keeps serving", function()
    local c = never_reads("/t2/big.bin?id=noread")
    local t0 = socket.gettime()
    while socket.gettime() - t0 < 1.5 do -- the worker serves others meanwhile
      local status, _, body = http("/small.bin", { timeout = 1 })
      assert.are.equal(200, status)
      assert.is_true(body == SMALL)
      socket.sleep(0.2)
    end
    local r = result("noread")
    c:close()
    assert.are.equal("ETIMEDOUT", r[2])
    assert.are.equal("ETIMEDOUT: no progress for 2 s", r[5])
    local sent, took = H.int(tonumber(r[1])), tonumber(r[3])
    assert.is_true(sent > 0 and sent < BIG_SIZE)
    -- never before 2 s; up to one timeout later when the peer's kernel took a
    -- few more bytes without waking a waiting probe (see zcsend/nginx.lua)
    assert.is_true(took >= 1.9 and took < 5, "ended after " .. took .. " s")
  end)

  it("ends a transfer whose peer resets with ECONNRESET or EPIPE; the worker survives", function()
    local c = never_reads("/t/big.bin?id=reset")
    local got = assert(c:receive(256 * 1024))
    local body = got:sub(#got:match("^(.-\r\n\r\n)") + 1)
    assert.is_true(#body > 0 and body == BIG:sub(1, #body))
    C.reset(c) -- RST
    local r = result("reset")
    assert.is_true(r[2] == "ECONNRESET" or r[2] == "EPIPE", r[2])
    assert.is_true(r[5]:sub(1, #r[2] + 1) == r[2] .. ":", r[5])
    local sent = H.int(tonumber(r[1]))
    assert.is_true(sent >= 256 * 1024 and sent < BIG_SIZE)
    assert.are.equal(200, (http("/small.bin")))
  end)

  it("sends through ngx.socket.tcp() cosockets: plaintext zero-copy, TLS after sslhandshake", function()
    local count = 4 * 1024 * 1024 + 7
    for _, tls in ipairs({ "0", "1" }) do
      local r = split(text("/cos?tls=" .. tls))
      assert.are.equal(tls == "1" and "true" or "false", r[1])
      assert.are.equal(tostring(count), r[2], r[4])
      assert.are.equal("true", r[5], "sink got: " .. r[6])
    end
  end)

  it("turns bad input into nil, msg, name or an argument error, sending nothing", function()
    local sink = assert(socket.bind("127.0.0.1", 0, 16))
    local _, sinkport = sink:getsockname()
    local lines = text("/bad?sink=" .. sinkport, { method = "POST", body = "some request body" })
    local got = {}
    for line in lines:gmatch("[^\n]+") do
      local case, rest = line:match("^(%w+)=(.*)$")
      got[case] = rest
    end
    -- what zcsend does with the same call on a plain socket pair (lua5.4 here)
    local a = assert(socket.bind("127.0.0.1", 0))
    local _, aport = a:getsockname()
    local b = assert(socket.connect("127.0.0.1", aport))
    local s = a:accept()
    local f = assert(io.open(ROOT .. "/small.bin", "rb"))
    local here = { zcsend.sendfile(s, f, 0, 1000 + 24) }
    f:close()
    s:close()
    b:close()
    a:close()
    assert.are.equal(here[1] == nil and "ETRUNCATED" or "1000", here[1] == nil and here[3] or tostring(here[1]))
    local want = {
      table = "false|bad argument #1 to 'sendfile' (socket, fd or object with getfd() expected, got table)",
      unconnected = "nil|EBADF: cosocket not connected|EBADF|0",
      closed = "nil|EBADF: cosocket closed|EBADF|0",
      closedfile = "false|bad argument #2 to 'sendfile' (attempt to use a closed file)",
      negoffset = "false|bad argument #3 to 'sendfile' (offset must be non-negative)",
      pasteof = ("%s|%s|%s|%s"):format(tostring(here[1]), tostring(here[2]), tostring(here[3]), tostring(here[4])),
      udp = "false|bad argument #1 to 'sendfile' (socket, fd or object with getfd() expected, got table)",
      body = "nil|EOPNOTSUPP: ngx.req.socket() reads the request body; send through ngx.req.socket(true)" ..
        "|EOPNOTSUPP|0",
      foreign = "nil|EOPNOTSUPP: can't tell whether this nginx connection is TLS (a cosocket of another " ..
        "request, or a lua-nginx-module this zcsend does not know); refusing rather than risking " ..
        "plaintext on TLS|EOPNOTSUPP|0",
      host = "nginx",
    }
    for case, w in pairs(want) do
      assert.are.equal(w, got[case], case)
    end
    -- not a byte reached the peers of the refused calls
    sink:settimeout(0.2)
    local accepted = 0
    while true do
      local c = sink:accept()
      if not c then
        break
      end
      accepted = accepted + 1
      c:settimeout(0.5)
      local data, err, partial = c:receive("*a")
      assert.are.equal("", data or partial, err)
      c:close()
    end
    sink:close()
    assert.are.equal(3, accepted)
  end)

  it("fails a wait in a phase that can't yield at once, never blocking the worker", function()
    assert.are.equal("ok", text("/nonyield"))
    local r = result("nonyield")
    assert.are.same({ "nil", "EOPNOTSUPP", r[3], "nginx",
      "EOPNOTSUPP: nginx can't wait in its log phase (only in rewrite, access, content, timer and ssl_* handlers)" }, r)
    assert.is_true(tonumber(r[3]) < 0.05, r[3])
  end)

  -- issue 13 §4: a range not in the page cache is never stepped on the
  -- worker's thread; a prefetch thread reads it in while the worker waits on
  -- its eventfd (ngx.sleep between polls) and serves its other events
  it("a cold file: read in by a prefetch thread while the nginx loop runs on, then sent byte-exact", function()
    local path, data, remove = C.cold_file("cold.bin", 8 * H.MiB + 3, 12)
    finally(remove)
    -- root's file, the worker nobody: cachestat(2) refuses it (EPERM), and the
    -- core's probes must tell instead (it once took "can't tell" as cached)
    local uid = H.read_file("/proc/" .. wpid .. "/status"):match("\nUid:%s*(%d+)")
    assert.are_not.equal("0", uid, "the worker runs as root: the case above is not shown")
    local function engine() -- the worker's core: prefetches started, in flight
      local n, busy = text("/engine"):match("^(%d+) (%d+)$")
      return H.int(tonumber(n)), H.int(tonumber(busy))
    end
    text("/gc") -- settled as "gives back its fds" does: the count before
    socket.sleep(0.2)
    local fds0 = C.fd_count(wpid)
    if not C.evicted(path) then -- right before the request: nothing reads the file meanwhile
      return pending(C.NO_CACHESTAT)
    end
    local out = OUT .. "/cold"
    assert.are.equal("200 " .. #data, curl(("http://127.0.0.1:%d/cold/cold.bin?id=cold"):format(PORT), out,
      "--max-time 30"))
    assert.is_true(H.read_file(out) == data, "the cold file arrived altered")
    local r = result("cold")
    assert.are.same({ tostring(#data), "nil" }, { r[1], r[2] }, r[6])
    print(("\n  nginx: a cold 8 MiB file: %d prefetches, %s timer ticks during the transfer")
      :format(H.int(tonumber(r[5])) - H.int(tonumber(r[4])), r[3]))
    assert.is_true(H.int(tonumber(r[5])) > H.int(tonumber(r[4])),
      ("no prefetch in the worker: %s before, %s after"):format(r[4], r[5]))
    assert.is_true(H.int(tonumber(r[3])) > 0, "the worker's timer never ticked during the transfer")
    -- the prefetch thread lets go of its dups just after its eventfd says done
    assert.is_true(C.wait_for(function() return select(2, engine()) == 0 end, 5), "a prefetch still in flight")
    assert.is_true(C.wait_for(function() return C.fd_count(wpid) == fds0 end, 5),
      ("worker fds: %d before, %d after"):format(fds0, C.fd_count(wpid)))
  end)

  describe("the adapter's two waits for a full socket", function()
    -- (one at a time: the mode is the module's)
    it("probe and sleep both deliver byte-exact to a slow reader; only the probe writes a byte itself", function()
      for _, mode in ipairs({ "probe", "sleep" }) do
        local out = OUT .. "/drive." .. mode
        assert.are.equal("200 " .. 16 * H.MiB, curl(("http://127.0.0.1:%d/drive?mode=%s&file=mid.bin&timeout=10&id=drive%s"):format(
          PORT, mode, mode), out, "--limit-rate 16M --max-time 30"))
        assert.is_true(H.read_file(out) == BIG:sub(1, 16 * H.MiB), mode)
        local r = result("drive" .. mode)
        assert.are.same({ tostring(16 * H.MiB), "nil" }, { r[1], r[2] })
        local probes = H.int(tonumber(r[4]))
        if mode == "probe" then
          assert.is_true(probes > 0, "no probe was sent")
        else
          assert.are.equal(0, probes)
        end
      end
    end)

    it("the probe ends a client that never reads with ETIMEDOUT after the idle timeout", function()
      local c = never_reads("/drive?mode=probe&file=big.bin&timeout=2&id=driveto")
      local r = result("driveto")
      c:close()
      assert.are.equal("ETIMEDOUT", r[2])
      local took = tonumber(r[3])
      assert.is_true(took >= 1.9 and took < 5, "ended after " .. took .. " s")
      assert.are.equal(200, (http("/small.bin")))
    end)
  end)

  it("leaves no Lua error, crash or alert in nginx's error log", function()
    local log = H.read_file(PREFIX .. "/error.log")
    for _, bad in ipairs({ "runtime error", "entry thread aborted", "[alert]", "[crit]", "[emerg]",
      "signal", "exited on" }) do
      assert.is_nil(log:find(bad, 1, true), bad .. " in nginx's error log:\n" .. log)
    end
  end)

  it("gives back its fds and memory after 1,000 transfers", function()
    local function one(i)
      local status, _, body
      if i % 10 == 0 then
        status, _, body = http("/small.bin", { headers = "Range: bytes=100-199\r\n" })
        assert.are.equal(206, status)
        assert.is_true(body == SMALL:sub(101, 200))
      else
        status, _, body = http("/small.bin")
        assert.are.equal(200, status)
        assert.is_true(body == SMALL)
      end
    end
    for i = 1, 1000 do -- warm up: LuaJIT's traces and machine code, pools, the collector's pace
      one(i)
    end
    local function settle()
      text("/gc")
      socket.sleep(0.2)
      return C.fd_count(wpid), C.rss_kb(wpid)
    end
    local fds0, rss0 = settle()
    for i = 1, 1000 do
      one(i)
    end
    local fds1, rss1 = settle()
    print(("\n  nginx worker after 1,000 transfers: fds %d -> %d, VmRSS %d -> %d KiB"):format(fds0, fds1,
      rss0, rss1))
    assert.are.equal(fds0, fds1)
    assert.is_true(rss1 - rss0 < 1024, ("VmRSS grew %d KiB"):format(rss1 - rss0))
  end)
end)
