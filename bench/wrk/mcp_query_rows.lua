-- MCP tools/call of query_rows for the list-20 query, as bench/bench.py set it up: a session's
-- headers (2025-11-25) or the stateless revision's (2026-07-28), one "Name: value" per line in
-- SLUICE_BENCH_MCP_HEADERS. SLUICE_BENCH_MCP_BODY is the JSON-RPC request with __ID__ and
-- __COUNTRY__ left to fill in.
dofile(os.getenv("SLUICE_BENCH_LUA_DIR") .. "/common.lua")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Accept"] = "application/json, text/event-stream"
for name, value in os.getenv("SLUICE_BENCH_MCP_HEADERS"):gmatch("([^:\n]+): ([^\n]*)") do
  wrk.headers[name] = value
end

local mcp_path = os.getenv("SLUICE_BENCH_MCP_PATH")
local body_template = os.getenv("SLUICE_BENCH_MCP_BODY")
local next_id = 0

function request()
  next_id = next_id + 1
  local body = body_template:gsub("__ID__", tostring(next_id)):gsub("__COUNTRY__", random_country())
  return wrk.format("POST", mcp_path, nil, body)
end
