-- One admission, atomically: the client IP's requests per second, the token's
-- and the project's requests per minute (GCRA, as the in-process limiters) and
-- the token's lifetime quota, all taken together or none. Times are Redis's own clock (TIME), in microseconds, so the
-- instances' clocks never matter.
--
-- KEYS[1] token rpm key, KEYS[2] project rpm key (each holds the bucket's
--         theoretical arrival time; its name carries the rate, so a changed
--         limit starts a new, full bucket), KEYS[3] quota key (requests used),
-- KEYS[4] client IP key (a bucket too; its name carries rate and burst).
-- ARGV[1] token rpm, ARGV[2] project rpm (0 = no limit),
-- ARGV[3] max_requests (-1 = no quota), ARGV[4] the count this instance knows,
--         used only when the quota key is absent (first use, or Redis lost it),
-- ARGV[5] per-IP requests per second (0 = no limit), ARGV[6] its burst (>= 1).
--
-- Reply: {0, token_remaining, token_reset_us, project_remaining, project_reset_us, used}
--        (remaining -1 = no such limit, used -1 = no quota)
--      | {1, retry_after_us, reset_us}  token limit spent
--      | {2, retry_after_us, reset_us}  project limit spent
--      | {3, used}                      quota used up
--      | {4, retry_after_us}            client IP limit spent
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000 + tonumber(time[2])

-- GCRA (governor's arithmetic): `rate` cells per `period_us`, `burst` at once;
-- emission interval t, tolerance tau = t * (burst - 1).
local function gcra(key, period_us, rate, burst)
  local t = math.floor(period_us / rate)
  local tau = t * (burst - 1)
  local tat = tonumber(redis.call('GET', key)) or now
  local earliest = tat - tau
  if now < earliest then
    local wait = earliest - now
    return false, wait, 0, wait + t * (burst - 1)
  end
  local nxt = math.max(tat, now) + t
  local remaining = math.floor(math.min(now + tau + t - nxt, tau + t) / t)
  return true, nxt, remaining, t * (burst - remaining)
end

local max = tonumber(ARGV[3])
local reply, taken = {0}, {}

-- The client IP first (the edge's limiter, fleet-wide): a client over its
-- share is refused without touching its token's buckets or quota.
local rps = tonumber(ARGV[5])
if rps > 0 then
  local ok, a = gcra(KEYS[4], 1000000, rps, tonumber(ARGV[6]))
  if not ok then return {4, a} end
  table.insert(taken, {KEYS[4], a})
end

-- Token, then project, each with a burst of one minute's allowance: the first
-- spent one refuses, and nothing is taken.
for i, code in ipairs({1, 2}) do
  local rpm = tonumber(ARGV[i])
  local rem, reset
  if rpm > 0 then
    local ok, a
    ok, a, rem, reset = gcra(KEYS[i], 60000000, rpm, rpm)
    if not ok then return {code, a, reset} end
    table.insert(taken, {KEYS[i], a})
  else
    rem, reset = -1, 0
  end
  table.insert(reply, rem)
  table.insert(reply, reset)
end
local used = -1
if max >= 0 then
  used = tonumber(redis.call('GET', KEYS[3]))
  if not used then
    used = tonumber(ARGV[4])
    redis.call('SET', KEYS[3], ARGV[4], 'NX')
  end
  if used >= max then return {3, used} end
  used = redis.call('INCR', KEYS[3])
end
-- Everything passed: take from the buckets. A bucket is full again once its
-- arrival time has passed, so its key expires then (plus a second's margin);
-- quota keys never expire.
for _, t in ipairs(taken) do
  redis.call('SET', t[1], string.format('%.0f', t[2]), 'PX', math.floor((t[2] - now) / 1000) + 1000)
end
table.insert(reply, used)
return reply
