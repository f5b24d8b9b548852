-- GET one customer by a random primary key (the REST twin of sql/get_by_pk.sql).
dofile(os.getenv("SLUICE_BENCH_LUA_DIR") .. "/common.lua")

function request()
  return wrk.format("GET", base_path .. "/customers/" .. math.random(1, 100000))
end
