-- GET /healthz: HTTP alone, with no authentication, no governance and no database. Not a Sluice
-- workload but the machine's ceiling for any HTTP server on loopback, beside wrk and PostgreSQL.
dofile(os.getenv("SLUICE_BENCH_LUA_DIR") .. "/common.lua")

function request()
  return wrk.format("GET", "/healthz")
end
