-- wrk script: a JSON-RPC tools/call POST with a bearer token (the full MCP path).
-- Environment (set by loadtest/run, see ltlib.mcp_wrk_spec):
--   LT_BODY     file with the request body (1 KiB tools/call)
--   LT_TOKENS   file with bearer tokens, one per line (absent: no Authorization header)
--   LT_PATH     request path (default /mcp)
--   LT_DYNAMIC  "1": build every request in request(), rotating through the tokens
--               (each request a different token when the file has many); "0" with one
--               token: one static request, as get.lua/post.lua
-- Prints one machine-readable LOADTEST line.
local function slurp(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("*a")
  f:close()
  return s
end

local body = slurp(assert(os.getenv("LT_BODY"), "LT_BODY not set"))
local tokens = {}
local tokfile = os.getenv("LT_TOKENS")
if tokfile and tokfile ~= "" then
  for line in io.lines(tokfile) do
    if #line > 0 then tokens[#tokens + 1] = line end
  end
end

wrk.method = "POST"
wrk.path = os.getenv("LT_PATH") or "/mcp"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"

if os.getenv("LT_DYNAMIC") == "1" and #tokens > 0 then
  local pre, post
  local n, i = #tokens, 0
  function init(args)
    local h = {}
    for k, v in pairs(wrk.headers) do h[k] = v end
    h["Authorization"] = "Bearer @@TOKEN@@"
    local req = wrk.format(nil, nil, h)
    local s, e = string.find(req, "@@TOKEN@@", 1, true)
    pre, post = string.sub(req, 1, s - 1), string.sub(req, e + 1)
  end
  function request()
    i = i + 1
    if i > n then i = 1 end
    return pre .. tokens[i] .. post
  end
elseif #tokens > 0 then
  wrk.headers["Authorization"] = "Bearer " .. tokens[1]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'LOADTEST {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,' ..
    '"err_write":%d,"err_status":%d,"err_timeout":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,' ..
    '"p999_us":%d,"max_us":%d,"mean_us":%.1f,"tokens":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean, #tokens))
end
