-- wrk script: POST the body in $BENCH_BODY, or the bytes of the file $BENCH_BODY_FILE (binary
-- tensors hold NUL bytes, which an environment variable cannot); $BENCH_HEADER_LENGTH, when
-- set, is sent as Inference-Header-Content-Length (Open Inference Protocol, binary data).
wrk.method = "POST"
local body_file = os.getenv("BENCH_BODY_FILE")
if body_file then
  local file = assert(io.open(body_file, "rb"))
  wrk.body = file:read("*a")
  file:close()
else
  wrk.body = os.getenv("BENCH_BODY")
end
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE") or "application/json"
local header_length = os.getenv("BENCH_HEADER_LENGTH")
if header_length then
  wrk.headers["Inference-Header-Content-Length"] = header_length
end
