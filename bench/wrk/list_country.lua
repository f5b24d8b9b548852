-- GET 20 customers of a random country ordered by id (the REST twin of sql/list_country.sql).
dofile(os.getenv("SLUICE_BENCH_LUA_DIR") .. "/common.lua")

function request()
  return wrk.format("GET", base_path .. "/customers?country=eq." .. random_country() .. "&order=id&limit=20")
end
