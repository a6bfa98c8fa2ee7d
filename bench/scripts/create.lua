-- POST /tests {"name": unique}: the name is the run's prefix (the script's
-- first argument), the wrk thread's number and a per-thread counter, so no
-- two requests of any run share one.
local threads = 0

function setup(thread)
  thread:set("tid", threads)
  threads = threads + 1
end

local prefix, counter = "", 0

function init(args)
  prefix = args[1] or "c"
end

local headers = { ["Content-Type"] = "application/json" }

function request()
  counter = counter + 1
  local body = '{"name":"' .. prefix .. "-" .. tid .. "-" .. counter .. '"}'
  return wrk.format("POST", "/tests", headers, body)
end
