-- wrk script: POST the body in $BENCH_BODY; count responses by status.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
