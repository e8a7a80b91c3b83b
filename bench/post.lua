-- wrk script for bench/load.sh: the guarded SWR request (create_user_repository_auth),
-- sent unchanged to every target so that the numbers compare like with like.
-- The path comes from the URL on wrk's command line; the API key from BENCH_API_KEY,
-- which load.sh sets, so the key is never written to disk.
-- No request()/response() functions by default: calling Lua per request costs wrk CPU.
-- With BENCH_VARY_REPOSITORY=1 (load.sh's VARY_REPOSITORY) request() names a repository
-- of its own in every request, app-<n> from a random start, so that swr-gate has no
-- policy decision to remember; every target gets the same requests.

local key = os.getenv("BENCH_API_KEY")
if key == nil or key == "" then
  error("BENCH_API_KEY is not set: run this through bench/load.sh")
end

wrk.method = "POST"
wrk.body = '[{"user_id":"fb3f175c1fd146ab8cdae3272be6107b","user_name":"user01","auth":7}]'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Api-Key"] = key

if os.getenv("BENCH_VARY_REPOSITORY") == "1" then
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
  local n = math.random(1, 1000000000)
  function request()
    n = n + 1
    local path = wrk.path:gsub("/repos/app/", "/repos/app-" .. n .. "/", 1)
    return wrk.format(nil, path)
  end
end
