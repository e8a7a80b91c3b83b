-- wrk script for bench/load.sh: the guarded SWR request (create_user_repository_auth),
-- sent unchanged to every target so that the numbers compare like with like.
-- The path comes from the URL on wrk's command line; the API key from BENCH_API_KEY,
-- which load.sh sets, so the key is never written to disk.
-- No request()/response() functions on purpose: calling Lua per request would make wrk
-- itself the bottleneck.

local key = os.getenv("BENCH_API_KEY")
if key == nil or key == "" then
  error("BENCH_API_KEY is not set: run this through bench/load.sh")
end

wrk.method = "POST"
wrk.body = '[{"user_id":"fb3f175c1fd146ab8cdae3272be6107b","user_name":"user01","auth":7}]'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Api-Key"] = key
