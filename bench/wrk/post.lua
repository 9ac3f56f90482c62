-- wrk script for every cell: POST one fixed JSON body, optionally with an Authorization header.
-- wrk counts one whole HTTP response per request, so a streaming cell reads the full SSE body.
-- BENCH_BODY_FILE: the request body; BENCH_AUTHORIZATION: the header value ("" = none);
-- BENCH_HEADERS: more headers, one "Name: value" per line (the Anthropic dialect's x-api-key and
-- anthropic-version; "" = none).
-- done() prints one machine-readable line that bench/runner.py parses (latencies in microseconds).

local body_file = os.getenv("BENCH_BODY_FILE")
if body_file == nil or body_file == "" then
  error("BENCH_BODY_FILE is not set")
end
local fh = assert(io.open(body_file, "rb"))
wrk.method = "POST"
wrk.body = fh:read("*a")
fh:close()
wrk.headers["Content-Type"] = "application/json"
local authorization = os.getenv("BENCH_AUTHORIZATION")
if authorization ~= nil and authorization ~= "" then
  wrk.headers["Authorization"] = authorization
end
local extra = os.getenv("BENCH_HEADERS")
if extra ~= nil and extra ~= "" then
  for line in string.gmatch(extra, "[^\n]+") do
    local name, value = string.match(line, "^%s*([^:]+):%s*(.-)%s*$")
    if name == nil then
      error("BENCH_HEADERS: not a 'Name: value' line: " .. line)
    end
    wrk.headers[name] = value
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH_RESULT {\"requests\": %d, \"duration_us\": %d, \"bytes\": %d, " ..
    "\"connect_errors\": %d, \"read_errors\": %d, \"write_errors\": %d, " ..
    "\"status_errors\": %d, \"timeouts\": %d, " ..
    "\"p50_us\": %d, \"p90_us\": %d, \"p99_us\": %d, \"max_us\": %d, \"mean_us\": %.1f}\n",
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50.0), latency:percentile(90.0), latency:percentile(99.0),
    latency.max, latency.mean))
end
