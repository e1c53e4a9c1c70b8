-- The cross-talk soak (spec/soak.lua), short: ZCSEND_SOAK_SECONDS to lengthen it.
local H = require "helper" -- paths, and ZCSEND_GC_STRESS
local soak = require "soak"

teardown(H.cleanup)

describe("soak (issue 10)", function()
  it("many transfers on one loop, sockets and files closed, cancelled and reset at random, fds reused at once: " ..
    "every byte is its peer's own, every count right, nothing hangs or leaks", function()
    local seconds = tonumber(os.getenv("ZCSEND_SOAK_SECONDS") or "") or 3
    local r = soak.run({ seconds = seconds, seed = tonumber(os.getenv("ZCSEND_SOAK_SEED") or ""),
      maxsize = 512 * 1024 })
    local summary = soak.summary(r)
    assert.are.same({}, r.violations, summary)
    assert.is_true(r.sessions >= 20, summary)
    assert.is_true((r.outcomes.EBADF or 0) > 0, summary) -- sockets were closed mid-transfer
  end)
end)
