-- list_country through the peer (bench/peers.py), in Platformatic's query language.
dofile(os.getenv("SLUICE_BENCH_LUA_DIR") .. "/common.lua")

function request()
  return wrk.format("GET", base_path .. "/customers?fields=id,name,country,createdAt,balance&where.country.eq=" ..
    random_country() .. "&orderBy.id=asc&limit=20")
end
