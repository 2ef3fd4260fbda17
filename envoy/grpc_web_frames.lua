-- gRPC-Web request framing, checked at the gateway (scripts/gateway.py inlines this file).
-- A gRPC-Web request (browsers have no client streams) carries exactly one length-prefixed data
-- frame: flag 0, or flag 1 with a declared grpc-encoding. A truncated frame, a second frame, a
-- client-sent trailer frame (flag 0x80) or a compressed flag without an encoding is refused at
-- once with INVALID_ARGUMENT, instead of reaching a service that waits for the rest of a frame
-- (a 504 after the route timeout) or acts on a message it should not have accepted.
--
-- This filter runs after grpc_web (which has decoded grpc-web-text and set content-type to
-- application/grpc), so it sees binary frames; the marker header below is set by the small
-- filter in front of grpc_web (GRPC_WEB_MARK in scripts/gateway.py; clients cannot send it, the
-- early header mutation strips it). Its replies pass back through grpc_web and cors, so
-- browsers receive a normal gRPC-Web trailers-only status.

local MARK = "x-aimesh-grpc-web"

local function refuse(handle, message)
  handle:respond({
    [":status"] = "200",
    ["content-type"] = "application/grpc",
    ["grpc-status"] = "3",
    ["grpc-message"] = message,
  }, "")
end

-- `encoding` is read before body(): header objects do not survive the wait for the body.
local function frame_problem(handle, encoding)
  local body = handle:body()
  local size = 0
  if body ~= nil then size = body:length() end
  if size == 0 then return "a gRPC-Web request must carry one message frame; the body is empty" end
  if size < 5 then
    return "truncated gRPC-Web frame: " .. size .. " bytes, a frame header alone is 5"
  end
  local flags, b1, b2, b3, b4 = string.byte(body:getBytes(0, 5), 1, 5)
  local length = ((b1 * 256 + b2) * 256 + b3) * 256 + b4
  if flags >= 128 then return "clients may not send trailer frames (flag 0x80)" end
  if flags == 1 then
    if encoding == nil or encoding == "identity" then
      return "the frame is flagged compressed but the request declares no grpc-encoding"
    end
  elseif flags ~= 0 then
    return "unknown gRPC-Web frame flags " .. flags
  end
  if 5 + length > size then
    return "truncated gRPC-Web frame: its header announces " .. length .. " bytes, " .. (size - 5) .. " arrived"
  end
  if 5 + length < size then
    return "a gRPC-Web request carries exactly one message; " .. (size - 5 - length) .. " bytes follow the first frame"
  end
  return nil
end

function envoy_on_request(handle)
  local headers = handle:headers()
  if headers:get(MARK) == nil then return end
  headers:remove(MARK)
  local problem = frame_problem(handle, headers:get("grpc-encoding"))
  if problem ~= nil then refuse(handle, problem) end
end
