-- wrk script for bench/sim.sh: every request POSTs the same ~13.7 KB execute body (a 10 KB
-- random file) with its own Idempotency-Key, so that each one is a new record, as in real use.
-- Reads SIM_BODY (path of the body) and SIM_TOKEN (a bearer token) from the environment.

local next_id = 0

-- Runs in wrk's main state, once per thread: gives each thread a distinct id.
function setup(thread)
  next_id = next_id + 1
  thread:set("thread_id", next_id)
end

-- Runs in each thread's own state.
function init(args)
  local f = assert(io.open(os.getenv("SIM_BODY"), "rb"))
  body = f:read("*a")
  f:close()
  headers = {
    ["Authorization"] = "Bearer " .. os.getenv("SIM_TOKEN"),
    ["Content-Type"] = "application/json",
  }
  sent = 0
end

function request()
  sent = sent + 1
  headers["Idempotency-Key"] = "bench-" .. thread_id .. "-" .. sent
  return wrk.format("POST", "/api/v2/data-actions/bench/execute", headers, body)
end
