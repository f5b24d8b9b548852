-- POST one order for a random customer (the REST twin of sql/insert_order.sql).
dofile(os.getenv("SLUICE_BENCH_LUA_DIR") .. "/common.lua")
wrk.headers["Content-Type"] = "application/json"

function request()
  local body = string.format('{"customer_id":%d,"amount":12.50,"status":"new"}', math.random(1, 100000))
  return wrk.format("POST", base_path .. "/orders", nil, body)
end
