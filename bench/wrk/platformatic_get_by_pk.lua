-- get_by_pk through the peer (bench/peers.py): Platformatic refuses a read that asks for a field
-- its rule denies, so the request names the bench role's fields.
dofile(os.getenv("SLUICE_BENCH_LUA_DIR") .. "/common.lua")

function request()
  return wrk.format("GET", base_path .. "/customers/" .. math.random(1, 100000) ..
    "?fields=id,name,country,createdAt,balance")
end
