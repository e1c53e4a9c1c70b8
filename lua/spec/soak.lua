-- A randomized cross-talk soak for zcsend.loop() (issue 10, item 5):
--   lua5.4 lua/spec/soak.lua [SECONDS [SEED]]      (from the repository root, or spec/soak.lua from lua/)
-- Many transfers at once on one loop, with the server's socket closed by
-- another coroutine, transfers cancelled, the server's file closed, and peers
-- closing or resetting, at random; fds are reused at once (new connections
-- and files opened right after each close). Each file's every 8-byte block is
-- its file id and offset, so the peer checks every byte it gets. Invariants:
--   * every byte a peer receives is its own file's, at its own offset;
--   * the byte count a transfer reports is what its peer got (at least what it
--     got, when the peer itself closed early);
--   * a transfer whose socket another coroutine closed ends with EBADF (never a
--     success), a cancelled one with ECANCELED, an undisturbed one with its
--     whole count; nothing hangs, and no fd or active transfer is left over.
-- As a module: require("soak").run{ seconds = 3, seed = 1 } -> report (table).
local here = (debug.getinfo(1, "S").source:match("^@(.*/)") or "./")
package.path = here .. "../?.lua;" .. here .. "?.lua;" .. package.path
package.cpath = (os.getenv("ZCSEND_CPATH") or (here .. "../?.so")) .. ";" .. package.cpath

local zcsend = require "zcsend"
local core = require "zcsend.core"
local socket = require "socket"

local M = {}

local floor = math.floor

-- the 2 low bytes of offsets 0, 8, 16 ... 65528
local LOW = {}
for k = 0, 8191 do
  local o = k * 8
  LOW[k + 1] = string.char(floor(o / 256), o % 256)
end

-- file id's content: block j (offset 8j) = id (2 bytes) .. offset (6 bytes, big-endian)
local function content(id, size)
  local parts = {}
  for seg = 0, floor((size - 1) / 65536) do
    local hi = seg -- offset bits 16..47
    local prefix = string.char(floor(id / 256) % 256, id % 256, floor(hi / 16777216) % 256,
      floor(hi / 65536) % 256, floor(hi / 256) % 256, hi % 256)
    parts[#parts + 1] = prefix .. table.concat(LOW, prefix)
  end
  return table.concat(parts):sub(1, size)
end
M.content = content

-- the fds open here (number -> what it names), but for the listing's own pipe
-- (popen may not have closed the child's end yet when ls looks)
local function fds()
  local st = assert(io.open("/proc/self/stat"))
  local pid = st:read("a"):match("^(%d+)")
  st:close()
  local p = io.popen("ls -l /proc/" .. pid .. "/fd")
  local mine = tostring(core.fileno(p))
  local links, own = {}, nil
  for line in p:lines() do
    local fd, target = line:match("(%d+) %-> (.*)$")
    if fd then
      links[fd] = target
      own = fd == mine and target or own
    end
  end
  p:close()
  for fd, target in pairs(links) do
    if target == own then
      links[fd] = nil
    end
  end
  return links
end

local CHAOS = { "none", "none", "close", "close", "cancel", "file_close", "peer_close", "peer_reset" }
local API = { "sendfile", "loop_sendfile", "drive" }

function M.run(opts)
  opts = opts or {}
  local seconds = opts.seconds or 3
  local seed = opts.seed or os.time()
  local conc = opts.concurrency or 24
  local maxsize = opts.maxsize or 1024 * 1024
  local log = opts.log or function() end
  math.randomseed(seed)
  local rnd = math.random

  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. dir))
  local files = {}
  for id = 1, opts.files or 6 do
    local size = rnd(1, maxsize)
    local data = content(id, size)
    local path = ("%s/f%d"):format(dir, id)
    local fh = assert(io.open(path, "wb"))
    fh:write(data)
    fh:close()
    files[id] = { path = path, data = data, size = size }
  end

  collectgarbage("collect")
  collectgarbage("collect")
  local fds0, active0 = fds(), zcsend.stats().active
  local srv = assert(socket.bind("127.0.0.1", 0, 512))
  srv:settimeout(1)
  local _, port = srv:getsockname()
  local loop = zcsend.loop()
  local u = socket.udp()
  assert(u:setsockname("127.0.0.1", 0))
  local ufd = zcsend._integer(u:getfd())

  local report = {
    seed = seed, sessions = 0, bytes = 0, violations = {}, outcomes = {}, chaos = {}, apis = {},
    reused = 0, hung = 0,
  }
  local function violation(s, msg)
    local v = ("session %d (%s, %s, file %d, offset %d, count %s): %s"):format(s.n, s.chaos, s.api, s.id,
      s.offset, tostring(s.count), msg)
    report.violations[#report.violations + 1] = v
    log("VIOLATION " .. v)
  end

  local live, nlive, serial = {}, 0, 0
  local sleepers = {}
  local recently_closed = {} -- fd numbers chaos closed, to count their reuse
  local t_start = socket.gettime()
  local t_stop = t_start + seconds
  local stopping = false

  local function sleep(sec)
    sleepers[#sleepers + 1] = { at = socket.gettime() + sec, co = coroutine.running() }
    coroutine.yield()
  end

  local function fdof(o)
    return zcsend._integer(o:getfd())
  end

  local function note_reuse(fd)
    if recently_closed[fd] then
      report.reused = report.reused + 1
      recently_closed[fd] = nil
    end
  end

  local function finish(s)
    if not (s.server_done and s.client_done) or s.finished then
      return
    end
    s.finished = true
    live[s] = nil
    nlive = nlive - 1
    local r = s.result
    local name = r[1] and "ok" or r[3]
    report.outcomes[name] = (report.outcomes[name] or 0) + 1
    local reported = r[1] or r[4]
    local want = s.count and math.min(s.count, files[s.id].size - s.offset) or files[s.id].size - s.offset
    if type(reported) ~= "number" then
      return violation(s, "no byte count reported: " .. tostring(r[2]))
    end
    if s.peer_closed then
      if s.got > reported then
        violation(s, ("peer got %d bytes, %d reported"):format(s.got, reported))
      end
    elseif s.got ~= reported then
      violation(s, ("peer got %d bytes, %d reported (%s)"):format(s.got, reported, tostring(r[2])))
    end
    if s.closed_running then
      if r[1] ~= nil or r[3] ~= "EBADF" then
        violation(s, "socket closed mid-transfer, yet: " .. tostring(r[1] or r[2]))
      end
    elseif s.cancelled_running then
      if r[3] ~= "ECANCELED" then
        violation(s, "cancelled mid-transfer, yet: " .. tostring(r[1] or r[2]))
      end
    elseif not s.peer_closed then
      if r[1] ~= want then
        violation(s, ("undisturbed, yet %s (want %d)"):format(tostring(r[1] or r[2]), want))
      end
    elseif r[1] == nil and r[3] ~= "EPIPE" and r[3] ~= "ECONNRESET" then
      violation(s, "peer went away, yet " .. tostring(r[2]))
    end
  end

  local function server_end(s, ...)
    s.running = false
    s.result = { ... }
    if not s.server_closed then
      s.server_closed = true
      s.srv_sock:close()
    end
    if io.type(s.file) == "file" then
      s.file:close()
    end
    s.server_done = true
    finish(s)
  end

  -- the peer: reads to EOF, checking every byte; may stall, close, reset
  local function client(s)
    local c = s.client
    local data_all = files[s.id].data
    while true do
      if s.stall_at and s.got >= s.stall_at then
        s.stall_at = nil
        sleep(s.stall_for)
      end
      if s.close_at and s.got >= s.close_at then
        if s.chaos == "peer_reset" then
          c:setoption("linger", { on = true, timeout = 0 })
        end
        s.peer_closed = true
        c:close()
        break
      end
      local data, err, partial = c:receive(65536)
      data = data or partial
      if data and #data > 0 then
        local from = s.offset + s.got
        if data ~= data_all:sub(from + 1, from + #data) then
          local bad = data:sub(1, 8)
          local id, off = 0, 0
          for k = 1, #bad do
            if k <= 2 then id = id * 256 + bad:byte(k) else off = off * 256 + bad:byte(k) end
          end
          violation(s, ("foreign bytes at +%d (first block says file %d, offset ~%d)"):format(s.got, id, off))
          s.peer_closed = true
          c:close()
          break
        end
        s.got = s.got + #data
        report.bytes = report.bytes + #data
      end
      if err == "closed" then
        c:close()
        break
      elseif err == "timeout" then
        local ok, msg = zcsend.wait(c, "r")
        if not ok and msg then
          violation(s, "the peer's own wait failed: " .. tostring(msg))
          break
        end
      elseif err then
        s.peer_closed = true -- reset by... nobody should reset a client
        violation(s, "peer read error: " .. tostring(err))
        c:close()
        break
      end
    end
    s.client_done = true
    finish(s)
  end

  local function chaos_now(s)
    if s.chaos == "close" and not s.server_closed then
      s.closed_running = s.running
      s.server_closed = true
      local fd = fdof(s.srv_sock)
      s.srv_sock:close()
      recently_closed[fd] = true
    elseif s.chaos == "cancel" and s.transfer and s.running then
      s.cancelled_running = not s.transfer:done()
      s.transfer:cancel()
    elseif s.chaos == "file_close" and io.type(s.file) == "file" then
      recently_closed[core.fileno(s.file)] = true
      s.file:close()
    end
  end

  local start_session
  start_session = function()
    serial = serial + 1
    local s = {
      n = serial, id = rnd(1, #files), chaos = CHAOS[rnd(1, #CHAOS)], api = API[rnd(1, #API)], got = 0,
    }
    if s.chaos == "cancel" then
      s.api = "drive"
    elseif s.chaos == "file_close" and s.api == "loop_sendfile" then
      s.api = "sendfile" -- a file closed before loop:sendfile starts is a bad argument
    end
    local f = files[s.id]
    s.offset = rnd(0, f.size - 1)
    if rnd() < 0.5 then
      s.count = rnd(1, f.size - s.offset) -- past the end is ETRUNCATED at once (sendfile_spec)
    end
    -- small buffers (the peer's set before it connects: shrinking a window
    -- mid-connection stalls TCP): a transfer takes many steps, so chaos finds
    -- it running
    local c = socket.tcp4()
    assert(c:setoption("recv-buffer-size", rnd(8, 64) * 1024))
    assert(c:connect("127.0.0.1", port))
    local sv = assert(srv:accept())
    c:settimeout(0)
    sv:settimeout(0)
    sv:setoption("send-buffer-size", rnd(8, 64) * 1024)
    s.client, s.srv_sock = c, sv
    s.file = assert(io.open(f.path, "rb"))
    note_reuse(fdof(c))
    note_reuse(fdof(sv))
    note_reuse(core.fileno(s.file))
    local want = s.count and math.min(s.count, f.size - s.offset) or f.size - s.offset
    if rnd() < 0.4 then -- the peer stops reading for a while: the transfer waits
      s.stall_at = rnd(0, want)
      s.stall_for = rnd() * 0.2
    end
    if s.chaos == "peer_close" or s.chaos == "peer_reset" then
      s.close_at = rnd(0, want)
    elseif s.chaos ~= "none" then -- once the peer has had this much (often while it stalls there)
      s.chaos_after = s.stall_at and rnd() < 0.5 and s.stall_at or rnd(0, want)
    end
    report.sessions = report.sessions + 1
    report.chaos[s.chaos] = (report.chaos[s.chaos] or 0) + 1
    report.apis[s.api] = (report.apis[s.api] or 0) + 1
    live[s] = true
    nlive = nlive + 1
    s.running = true
    if s.api == "sendfile" then
      loop:wrap(function()
        server_end(s, zcsend.sendfile(sv, s.file, s.offset, s.count))
      end)
    elseif s.api == "loop_sendfile" then
      loop:sendfile(sv, s.file, s.offset, s.count, function(...) server_end(s, ...) end)
    else
      local t, msg, name, sent = zcsend.transfer(sv, s.file, s.offset, s.count)
      if not t then
        server_end(s, nil, msg, name, sent)
      else
        s.transfer = t
        loop:drive(t, function()
          s.transfer = nil
          local ok, m2, n2, sent2 = t:result()
          t:close()
          if ok then
            server_end(s, t:sent())
          else
            server_end(s, nil, m2, n2, sent2)
          end
        end)
      end
    end
    loop:wrap(client, s)
  end

  local grace_until
  local function tick(ok, msg)
    assert(ok or not msg, msg)
    local now = socket.gettime()
    -- sleepers due
    local i = 1
    while i <= #sleepers do
      if sleepers[i].at <= now then
        local co = table.remove(sleepers, i).co
        local okr, err = coroutine.resume(co)
        if not okr then
          error(debug.traceback(co, err), 0)
        end
      else
        i = i + 1
      end
    end
    -- chaos due (then at once new sessions: the freed numbers get reused)
    local acted = 0
    for s in pairs(live) do
      if s.chaos_after and s.got >= s.chaos_after then
        s.chaos_after = nil
        chaos_now(s)
        acted = acted + 1
      end
    end
    if not stopping and now >= t_stop then
      stopping = true
      grace_until = now + 20
    end
    if not stopping then
      for _ = 1, acted do
        start_session()
      end
      while nlive < conc do
        start_session()
      end
    end
    if stopping and nlive == 0 then
      return -- done: the loop runs out of work
    end
    if stopping and now > grace_until then
      for s in pairs(live) do
        report.hung = report.hung + 1
        local t = s.transfer
        violation(s, ("hung: server done %s, peer done %s, peer got %d, %s, peer readable %s"):format(
          tostring(s.server_done), tostring(s.client_done), s.got, t and tostring(t) or "-",
          tostring(not s.client_done and core.poll(fdof(s.client), "r", 0))))
        if s.transfer then
          s.transfer:cancel()
        end
      end
      loop:stop()
      return
    end
    loop:wait(ufd, "w", tick)
  end
  loop:wait(ufd, "w", tick)
  local ok, err = pcall(loop.run, loop)
  if not ok then
    report.violations[#report.violations + 1] = "loop:run raised: " .. tostring(err)
  end
  report.seconds = socket.gettime() - t_start
  -- everything closed, collected: nothing may be left over
  for s in pairs(live) do
    pcall(s.client.close, s.client)
    pcall(s.srv_sock.close, s.srv_sock)
    if io.type(s.file) == "file" then
      s.file:close()
    end
  end
  live, sleepers = nil, nil
  u:close()
  srv:close()
  loop = nil -- luacheck: ignore
  collectgarbage("collect")
  collectgarbage("collect")
  report.fds_left = 0 -- opened since the start and still open (earlier garbage may close others)
  for fd, target in pairs(fds()) do
    if fds0[fd] ~= target then
      report.fds_left = report.fds_left + 1
    end
  end
  report.active_left = zcsend.stats().active - active0
  if report.fds_left ~= 0 then
    report.violations[#report.violations + 1] = ("%d fds left open"):format(report.fds_left)
  end
  if report.active_left ~= 0 then
    report.violations[#report.violations + 1] = ("%d transfers left active"):format(report.active_left)
  end
  os.execute("rm -rf " .. dir)
  return report
end

function M.summary(r)
  local function kv(t)
    local keys, out = {}, {}
    for k in pairs(t) do
      keys[#keys + 1] = k
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
      out[#out + 1] = ("%s=%d"):format(k, t[k])
    end
    return table.concat(out, " ")
  end
  return table.concat({
    ("soak: %.1f s, seed %d, backend %s: %d sessions (%.0f/s), %.1f MiB verified (%.1f MiB/s), " ..
      "%d fd numbers reused right after a chaos close"):format(r.seconds, r.seed, zcsend.backend(), r.sessions,
      r.sessions / r.seconds, r.bytes / 1048576, r.bytes / 1048576 / r.seconds, r.reused),
    "  chaos:    " .. kv(r.chaos),
    "  api:      " .. kv(r.apis),
    "  outcomes: " .. kv(r.outcomes),
    ("  violations: %d, hung: %d, fds left: %d, active left: %d"):format(#r.violations, r.hung, r.fds_left,
      r.active_left),
  }, "\n")
end

if ... ~= "soak" then -- run as a script
  local args = { ... }
  local r = M.run({
    seconds = tonumber(args[1]) or 60,
    seed = tonumber(args[2]) or os.time(),
    maxsize = tonumber(os.getenv("ZCSEND_SOAK_MAXSIZE") or "") or 4 * 1024 * 1024,
    concurrency = tonumber(os.getenv("ZCSEND_SOAK_CONCURRENCY") or "") or 48,
    log = function(line) io.stderr:write(line, "\n") end,
  })
  print(M.summary(r))
  for i = 1, math.min(20, #r.violations) do
    print("  " .. r.violations[i])
  end
  os.exit(#r.violations == 0 and 0 or 1)
end

return M
