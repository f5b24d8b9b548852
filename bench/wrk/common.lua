-- Shared by every case script: the API key header, a per-thread random seed, and one
-- machine-readable summary line that bench/bench.py parses. Each wrk thread loads the case
-- script into its own Lua state, so this file runs once per thread and once in the main state.
base_path = os.getenv("SLUICE_BENCH_BASE_PATH")
countries = { "US", "DE", "FR", "GB", "JP", "BR", "IN", "CA", "AU", "NL" }
wrk.headers[os.getenv("SLUICE_BENCH_KEY_HEADER")] = os.getenv("SLUICE_BENCH_KEY")

local threads_started = 0

function setup(thread)
  threads_started = threads_started + 1
  thread:set("thread_number", threads_started)
end

function init(args)
  -- Distinct seeds per thread, so threads do not request the same ids in the same order.
  math.randomseed(os.time() * 1000 + thread_number)
end

function random_country()
  return countries[math.random(1, #countries)]
end

function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'SLUICE_BENCH {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,' ..
    '"write_errors":%d,"status_errors":%d,"timeouts":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.status,
    errors.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
