-- GET 20 customers of a random country with their orders embedded (the REST twin of
-- sql/embed_orders.sql).
dofile(os.getenv("SLUICE_BENCH_LUA_DIR") .. "/common.lua")

function request()
  return wrk.format("GET", base_path .. "/customers?select=id,name,country,balance,orders(id,amount,status)"
    .. "&country=eq." .. random_country() .. "&order=id&limit=20")
end
