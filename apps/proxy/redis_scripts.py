"""The proxy's Redis scripts and key names: spend and rate limits, atomic, global across replicas,
two round trips a request.

Reserve (one Lua call, before upstream) checks and takes, all or nothing: the company's
available funds, the token's total/weekly/monthly spend, the department's monthly budget, RPM
and TPM (sliding window over two one-minute buckets). It also records the reservation in the
``js:reservations`` sorted set with an expiry. Settle (one Lua call, after upstream) swaps the
reservation for the actual cost, removes it and appends the usage event to the
``js:usage`` stream — in one atomic step, so money counted is never without its record.

Company funds never live only in Redis: the hash ``js:co:<id>`` keeps the ledger's posted
credits/debits (merged with max(): both only grow, so a stale writer can never roll them
back), ``lim`` (credit limit less open ledger holds) and ``out`` (reserved + settled spend the
meter writer has not yet committed to the ledger). available = cr + lim − db − out. The writer
lowers ``out`` and raises ``db`` in one script after each commit, so spend is always counted
exactly once or (briefly) twice, never zero times.

Reserve also takes a *hold* — what in-flight reservations hold, amount and count, per token
(``js:tk:<id>:held``), department (``js:dp:<id>:held``) and company (``ha``/``hn`` in ``js:co:<id>``)
— which settle (or the sweeper) releases, so a refusal can say what is spent and what is only held
without scanning the reservations (``pipeline/refusals.py``).

A worker that dies between reserve and settle leaves its reservation; the sweeper (``SWEEP``)
releases expired reservations and records the request as failed, atomically. A live request's
reservation never expires: its worker keeps pushing the expiry (the member's score, Unix seconds)
ahead while the request runs (``SpendCounters.extend_reservations``).
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

STREAM_KEY = "js:usage"
RESERVATIONS_KEY = "js:reservations"
WINDOW_TTL = 40 * 24 * 3600  # week/month counters outlive their window, then expire

_COMMON = """
local function num(v) if v == false or v == nil then return 0 end return tonumber(v) end
local function fmt(v) return string.format('%d', v) end
-- Merge the ledger's posted sums into a company hash: cr and db only grow, so a stale reader can
-- never roll them back (max); lim (credit limit less open ledger holds) is taken as read.
local function merge_funds(key, cr, db, lim)
  local cur_cr, cur_db = redis.call('HGET', key, 'cr'), redis.call('HGET', key, 'db')
  if cur_cr == false or tonumber(cur_cr) < tonumber(cr) then redis.call('HSET', key, 'cr', cr) end
  if cur_db == false or tonumber(cur_db) < tonumber(db) then redis.call('HSET', key, 'db', db) end
  redis.call('HSET', key, 'lim', lim)
end
-- What in-flight reservations hold, kept beside the counters so a refusal can say it in O(1): the
-- company hash's `ha`/`hn` (amount, count), the token's `js:tk:<id>:held` and the department's
-- `js:dp:<id>:held` hashes (`a`, `n`); ``dp`` false: no department.
local function hold(co, tk, dp, amount, n)
  redis.call('HINCRBY', co, 'ha', fmt(amount)) redis.call('HINCRBY', co, 'hn', fmt(n))
  redis.call('HINCRBY', tk, 'a', fmt(amount)) redis.call('HINCRBY', tk, 'n', fmt(n))
  if dp then redis.call('HINCRBY', dp, 'a', fmt(amount)) redis.call('HINCRBY', dp, 'n', fmt(n)) end
end
"""

RESERVE = _COMMON + """
-- KEYS: co, total, week, month, dept, rpm_cur, rpm_prev, tpm_cur, tpm_prev, reservations, token held, dept held
-- ARGV: amount, lim_total, lim_week, lim_month, lim_dept, rpm, tpm, tpm_est, frac, expiry, reservation_member, ttl, has_dept
-- Returns {0, rpm_left, tpm_left} when taken; {1, missing counters...} when counters need seeding;
-- a refusal (only this path reads more than the counters):
--   {2, 'rpm'|'tpm', limit, used, wait seconds, never (1: this request alone exceeds the limit)}
--   {2, scope, limit, counter, held, held_requests, never} for scope balance|total|weekly|monthly|department:
--   the counter includes what in-flight reservations hold (for balance: limit = credits + credit limit
--   - posted debits, counter = `out`); never = 1 when the request exceeds the limit even once they settle.
local amount = tonumber(ARGV[1])
local has_dept = ARGV[13] == '1'
local missing = {}
if redis.call('HEXISTS', KEYS[1], 'cr') == 0 then missing[#missing+1] = 'co' end
if redis.call('EXISTS', KEYS[2]) == 0 then missing[#missing+1] = 'total' end
if redis.call('EXISTS', KEYS[3]) == 0 then missing[#missing+1] = 'week' end
if redis.call('EXISTS', KEYS[4]) == 0 then missing[#missing+1] = 'month' end
if has_dept and redis.call('EXISTS', KEYS[5]) == 0 then missing[#missing+1] = 'dept' end
if #missing > 0 then table.insert(missing, 1, 1) return missing end

-- Seconds until a sliding window (this minute's bucket `cur`, the previous one's `prev` weighted by
-- the part of it still in the window) has room for `need` more under `limit`, if nothing new comes.
local function slide_wait(limit, need, cur, prev, frac)
  local room = limit - need
  if cur <= room then
    if prev <= 0 then return 1 end
    return math.max(1, math.ceil(60 * ((1 - (room - cur) / prev) - frac)))
  end
  return math.max(1, math.ceil(60 * (1 - frac) + 60 * (1 - room / cur)))
end
local frac = tonumber(ARGV[9])
local rpm_left, tpm_left = -1, -1
if ARGV[6] ~= '' then
  local limit = tonumber(ARGV[6])
  local cur, prev = num(redis.call('GET', KEYS[6])), num(redis.call('GET', KEYS[7]))
  local used = prev * (1 - frac) + cur
  if used + 1 > limit then
    if limit < 1 then return {2, 'rpm', fmt(limit), fmt(math.floor(used)), '0', 1} end
    return {2, 'rpm', fmt(limit), fmt(math.floor(used)), fmt(slide_wait(limit, 1, cur, prev, frac)), 0}
  end
  rpm_left = math.floor(limit - used - 1)
end
if ARGV[7] ~= '' then
  local limit, est = tonumber(ARGV[7]), tonumber(ARGV[8])
  local cur, prev = num(redis.call('GET', KEYS[8])), num(redis.call('GET', KEYS[9]))
  local used = prev * (1 - frac) + cur
  if used + est > limit then
    if est > limit then return {2, 'tpm', fmt(limit), fmt(math.floor(used)), '0', 1} end
    return {2, 'tpm', fmt(limit), fmt(math.floor(used)), fmt(slide_wait(limit, est, cur, prev, frac)), 0}
  end
  tpm_left = math.floor(limit - used - est)
end

local co = redis.call('HMGET', KEYS[1], 'cr', 'db', 'lim', 'out')
local funds, out = num(co[1]) + num(co[3]) - num(co[2]), num(co[4])
local spent = {num(redis.call('GET', KEYS[2])), num(redis.call('GET', KEYS[3])), num(redis.call('GET', KEYS[4])), 0}
if has_dept then spent[4] = num(redis.call('GET', KEYS[5])) end
local function breaks(limit, counter) return limit ~= '' and counter + amount > tonumber(limit) end
if amount > funds - out or breaks(ARGV[2], spent[1]) or breaks(ARGV[3], spent[2]) or breaks(ARGV[4], spent[3])
   or (has_dept and breaks(ARGV[5], spent[4])) then
  -- Every spend limit this request breaks: {scope, limit, counter, key}.
  local over = {}
  if amount > funds - out then over[#over+1] = {'balance', funds, out, KEYS[1]} end
  local scopes = {'total', 'weekly', 'monthly', 'department'}
  for i = 1, (has_dept and 4 or 3) do
    if breaks(ARGV[i + 1], spent[i]) then over[#over+1] = {scopes[i], tonumber(ARGV[i + 1]), spent[i], KEYS[i + 1]} end
  end
  -- The refusal path only: what in-flight reservations hold on each broken limit (``hold``). The
  -- token's and department's holds span windows: one reserved before a week or month turned is in
  -- the old window's counter, so a hold is capped at the counter it is read against.
  local held, count = {}, {}
  local tk = redis.call('HMGET', KEYS[11], 'a', 'n')
  local dp = redis.call('HMGET', KEYS[12], 'a', 'n')
  local cof = redis.call('HMGET', KEYS[1], 'ha', 'hn')
  for _, o in ipairs(over) do
    local h = tk
    if o[1] == 'balance' then h = cof elseif o[1] == 'department' then h = dp end
    held[o[4]], count[o[4]] = math.max(0, math.min(num(h[1]), o[3])), math.max(0, num(h[2]))
  end
  local chosen, never = over[1], 0
  for _, o in ipairs(over) do
    if amount > o[2] - (o[3] - held[o[4]]) then chosen, never = o, 1 break end
  end
  return {2, chosen[1], fmt(chosen[2]), fmt(chosen[3]), fmt(held[chosen[4]]), fmt(count[chosen[4]]), never}
end
if amount > 0 then
  redis.call('HINCRBY', KEYS[1], 'out', fmt(amount))
  redis.call('INCRBY', KEYS[2], fmt(amount))
  redis.call('INCRBY', KEYS[3], fmt(amount))
  redis.call('INCRBY', KEYS[4], fmt(amount))
  if has_dept then redis.call('INCRBY', KEYS[5], fmt(amount)) end
end
hold(KEYS[1], KEYS[11], has_dept and KEYS[12], amount, 1)
if ARGV[6] ~= '' then redis.call('INCR', KEYS[6]) redis.call('EXPIRE', KEYS[6], 130) end
if ARGV[7] ~= '' then redis.call('INCRBY', KEYS[8], ARGV[8]) redis.call('EXPIRE', KEYS[8], 130) end
redis.call('ZADD', KEYS[10], ARGV[10], ARGV[11])
return {0, fmt(rpm_left), fmt(tpm_left)}
"""

SETTLE = _COMMON + """
-- KEYS: co, total, week, month, dept, tpm_cur, reservations, stream, token held, dept held
-- ARGV: reserved, actual, tpm_delta, reservation_member, event, has_dept
local removed = redis.call('ZREM', KEYS[7], ARGV[4])
local reserved, actual = tonumber(ARGV[1]), tonumber(ARGV[2])
-- A reservation the sweeper already released must not be released twice: count the actual only.
local delta = actual
if removed == 1 then
  delta = actual - reserved
  -- Only a reservation that took a hold releases one (members made before holds existed do not).
  if string.sub(ARGV[4], 1, 6) == '{"h":1' then hold(KEYS[1], KEYS[9], ARGV[6] == '1' and KEYS[10], -reserved, -1) end
end
if delta ~= 0 then
  redis.call('HINCRBY', KEYS[1], 'out', fmt(delta))
  redis.call('INCRBY', KEYS[2], fmt(delta))
  redis.call('INCRBY', KEYS[3], fmt(delta))
  redis.call('INCRBY', KEYS[4], fmt(delta))
  if ARGV[6] == '1' then redis.call('INCRBY', KEYS[5], fmt(delta)) end
end
local tpm_delta = tonumber(ARGV[3])
if tpm_delta ~= 0 and redis.call('EXISTS', KEYS[6]) == 1 then redis.call('INCRBY', KEYS[6], fmt(tpm_delta)) end
redis.call('XADD', KEYS[8], '*', 'e', ARGV[5])
return removed
"""

INIT = _COMMON + """
-- KEYS: co, total, week, month, dept ; ARGV: cr, db, lim, total, week, month, dept, has_dept, ttl
merge_funds(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
redis.call('HSETNX', KEYS[1], 'out', '0')
redis.call('SET', KEYS[2], ARGV[4], 'NX')
redis.call('SET', KEYS[3], ARGV[5], 'NX', 'EX', ARGV[9])
redis.call('SET', KEYS[4], ARGV[6], 'NX', 'EX', ARGV[9])
if ARGV[8] == '1' then redis.call('SET', KEYS[5], ARGV[7], 'NX', 'EX', ARGV[9]) end
return 1
"""

# After the meter writer commits a batch: merge the ledger sums it read after the commit, and
# for each entry lower `out` by its charge only if this call is the one that acknowledges it —
# so an entry two writers both processed (one reclaimed it) is subtracted exactly once.
ACK = _COMMON + """
-- KEYS: stream, co_1..co_n ; ARGV: group, n, (cr, db, lim)*n, (company index | 0, charge, entry id)*
local n = tonumber(ARGV[2])
for i = 1, n do
  local base = 2 + (i - 1) * 3
  if redis.call('HEXISTS', KEYS[1 + i], 'cr') == 1 then merge_funds(KEYS[1 + i], ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]) end
end
local acked = 0
for i = 3 + n * 3, #ARGV, 3 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i + 2]) == 1 then
    acked = acked + 1
    local company = tonumber(ARGV[i])
    if company > 0 and tonumber(ARGV[i + 1]) ~= 0 and redis.call('HEXISTS', KEYS[1 + company], 'cr') == 1 then
      redis.call('HINCRBY', KEYS[1 + company], 'out', '-' .. ARGV[i + 1])
    end
  end
end
return acked
"""

# Ledger sums changed outside usage (top-up, correction, credit limit): merge them in.
SYNC_FUNDS = _COMMON + """
-- KEYS: co ; ARGV: cr, db, lim
if redis.call('HEXISTS', KEYS[1], 'cr') == 0 then return 0 end
merge_funds(KEYS[1], ARGV[1], ARGV[2], ARGV[3])
return 1
"""

SWEEP = _COMMON + """
-- KEYS: reservations, stream ; ARGV: now, max
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local released = 0
for _, member in ipairs(expired) do
  if redis.call('ZREM', KEYS[1], member) == 1 then
    local reservation = cjson.decode(member)
    local amount = tonumber(reservation.amount)
    if amount > 0 then
      redis.call('HINCRBY', reservation.keys[1], 'out', fmt(-amount))
      for i = 2, #reservation.keys do redis.call('INCRBY', reservation.keys[i], fmt(-amount)) end
    end
    if reservation.h == 1 then
      local dept = reservation.keys[5] and (string.gsub(reservation.keys[5], ':m:[^:]*$', ':held'))
      hold(reservation.keys[1], (string.gsub(reservation.keys[2], ':total$', ':held')), dept, -amount, -1)
    end
    redis.call('XADD', KEYS[2], '*', 'e', reservation.event)
    released = released + 1
  end
end
return released
"""


KEY_HEALTH = """
-- One supplier key's shared health record (apps/providers/key_health.py has its fields).
-- KEYS: health hash, health version, status queue, the key's probe lease
-- ARGV: op, key id, now (Unix seconds), then per op —
--   ok:   successes that close a half-open breaker
--   fail: failures that open the breaker, cool-off seconds, code, http, error
--   cool: seconds (a 429's wait), code, http, error
--   park: state (invalid | exhausted), code, http, error — also queued for the database
-- Returns the record's JSON after the call ('' for a key with no record).
local id, now, op = ARGV[2], tonumber(ARGV[3]), ARGV[1]
local raw = redis.call('HGET', KEYS[1], id)
local r = {}
if raw then
  local decoded, value = pcall(cjson.decode, raw)
  if decoded and type(value) == 'table' then r = value end
end
local s, f, ok = r.s or 'closed', tonumber(r.f or 0), tonumber(r.ok or 0)
local parked = s == 'invalid' or s == 'exhausted'
local probing = s == 'half_open' or (s == 'open' and now >= tonumber(r.ou or 0))
local function note(code, http, err) r.at = now; r.c = code; r.h = tonumber(http); r.e = err end
if op == 'ok' then
  redis.call('DEL', KEYS[4])
  if probing then
    ok = ok + 1
    if ok >= tonumber(ARGV[4]) then s, f, ok = 'closed', 0, 0 else s = 'half_open' end
  elseif s == 'closed' and f > 0 then
    f = 0
  else
    return raw or ''
  end
elseif op == 'fail' then
  redis.call('DEL', KEYS[4])
  note(ARGV[6], ARGV[7], ARGV[8])
  if not parked then
    f = f + 1
    if probing or (s == 'closed' and f >= tonumber(ARGV[4])) then
      s, ok, r.ou = 'open', 0, now + tonumber(ARGV[5])
    end
  end
elseif op == 'cool' then
  r.cu = math.max(tonumber(r.cu or 0), now + tonumber(ARGV[4]))
  note(ARGV[5], ARGV[6], ARGV[7])
elseif op == 'park' then
  redis.call('DEL', KEYS[4])
  s = ARGV[4]
  note(ARGV[5], ARGV[6], ARGV[7])
  redis.call('RPUSH', KEYS[3], cjson.encode({id = tonumber(id), status = s, reason = ARGV[7], at = now}))
else
  return redis.error_reply('unknown op ' .. op)
end
r.s, r.f, r.ok = s, f, ok
local encoded = cjson.encode(r)
redis.call('HSET', KEYS[1], id, encoded)
redis.call('INCR', KEYS[2])
return encoded
"""


def company_key(company_id: int) -> str:
    """The hash of a company's funds: cr, db, lim, out (micro-RUB)."""
    return f"js:co:{company_id}"


def total_key(token_id: int) -> str:
    """The string key of a token's all-time spend (micro-RUB)."""
    return f"js:tk:{token_id}:total"


def week_key(token_id: int, week: str) -> str:
    """The string key of a token's spend in the calendar week ``week`` ("2026-W48"), micro-RUB;
    it expires ``WINDOW_TTL`` seconds after INIT creates it."""
    return f"js:tk:{token_id}:w:{week}"


def month_key(token_id: int, month: str) -> str:
    """The string key of a token's spend in the calendar month ``month`` ("2026-11"), micro-RUB;
    it expires ``WINDOW_TTL`` seconds after INIT creates it."""
    return f"js:tk:{token_id}:m:{month}"


def held_key(token_id: int) -> str:
    """The hash of what a token's in-flight reservations hold: ``a`` (micro-RUB), ``n`` (count)."""
    return f"js:tk:{token_id}:held"


def dept_held_key(department_id: int | None) -> str:
    """The hash of what a department's in-flight reservations hold: ``a`` (micro-RUB), ``n`` (count)."""
    return f"js:dp:{department_id or 0}:held"


def dept_key(department_id: int | None, month: str) -> str:
    """The string key of a department's spend in ``month`` (micro-RUB). A token without a department
    gets ``js:dp:0:…``, which the scripts neither create, check nor charge (``has_dept`` False)."""
    return f"js:dp:{department_id or 0}:m:{month}"


@dataclass(slots=True)
class SpendKeys:
    """The Redis keys of one token's spend counters: company funds hash, the token's total, ISO-week
    and month spend, and its department's month spend (``has_dept`` False: no department); ``held`` and
    ``dept_held`` the token's and department's holds (what in-flight reservations hold)."""

    co: str
    total: str
    week: str
    month: str
    dept: str
    has_dept: bool
    held: str = ""
    dept_held: str = ""

    @classmethod
    def for_token(cls, *, token_id: int, company_id: int, department_id: int | None, week: str, month: str) -> SpendKeys:
        """The keys for a token in the calendar windows ``week`` ("2026-W48") and ``month`` ("2026-11")."""
        return cls(company_key(company_id), total_key(token_id), week_key(token_id, week), month_key(token_id, month),
                   dept_key(department_id, month), department_id is not None, held_key(token_id), dept_held_key(department_id))

    def as_list(self) -> list[str]:
        """[co, total, week, month, dept]: KEYS[1..5] of RESERVE, SETTLE and INIT (``dept`` is passed
        even without a department; ``has_dept`` tells the scripts to ignore it)."""
        return [self.co, self.total, self.week, self.month, self.dept]

    def charged_keys(self) -> list[str]:
        """The keys a reservation is charged to: the company hash first (its ``out`` field), then the
        token's total, week and month and, with a department, ``dept``. SWEEP releases from these."""
        keys = [self.co, self.total, self.week, self.month]
        if self.has_dept:
            keys.append(self.dept)
        return keys


def rate_keys(token_id: int, now: float) -> tuple[str, str, str, str, str]:
    """(RPM key this minute, RPM key last minute, TPM this minute, TPM last minute, fraction of this
    minute elapsed as a 4-decimal string) for the sliding-window rate limits."""
    minute = int(now // 60)
    frac = f"{(now % 60) / 60:.4f}"
    return (f"js:rl:{token_id}:r:{minute}", f"js:rl:{token_id}:r:{minute - 1}",
            f"js:rl:{token_id}:t:{minute}", f"js:rl:{token_id}:t:{minute - 1}", frac)


def reservation_member(*, request_id: str, keys: SpendKeys, amount: int, failure_event: bytes) -> bytes:
    """The reservations-set entry for a call: what the sweeper releases (``amount`` micro-RUB from
    each counter, and the hold — ``"h": 1``), and the usage event it records if the call never settles."""
    # "h" first: SETTLE tells a member whose reservation took a hold (``hold`` in the scripts) by its prefix.
    return orjson.dumps({"h": 1, "rid": request_id, "amount": amount, "keys": keys.charged_keys(), "event": failure_event.decode()})

