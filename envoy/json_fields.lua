-- Unknown fields in JSON request bodies, refused at the gateway (scripts/gateway.py inlines this
-- file after generating ROUTES and SCHEMAS from gen/descriptor.binpb in place of the marker
-- line below). The transcoder would drop a field the message does not define and
-- forward the rest, so a misspelled or unsupported field would silently do nothing; this filter,
-- in front of the transcoder, answers 400 INVALID_ARGUMENT naming the field instead
-- (docs/CONVENTIONS.md, "Unknown and output-only fields").
--
-- ROUTES: {verb, Lua pattern of the HTTP path, schema id of the body}.
-- SCHEMAS[id]: {fields = {json or proto name = child schema id (0: not checked further)}}
--           or {map = child schema id of the values (0: not checked)}.
-- Bodies that are not valid JSON are left to the transcoder, which refuses them itself.

-- GENERATED TABLES --

local function skip_space(s, i)
  return string.find(s, "[^ \t\r\n]", i) or (#s + 1)
end

local function read_string(s, i)
  local j = i + 1
  while true do
    local stop = string.find(s, '["\\]', j)
    if stop == nil then error("unterminated string") end
    if string.sub(s, stop, stop) == '"' then return string.sub(s, i + 1, stop - 1), stop + 1 end
    j = stop + 2
  end
end

-- The items of an array or object, from just after its opening bracket: read_item(i) returns
-- the index after one item and, if it found one, the path of an unknown field.
local function items(s, i, closer, read_item)
  i = skip_space(s, i)
  if string.sub(s, i, i) == closer then return i + 1 end
  while true do
    local unknown
    i, unknown = read_item(skip_space(s, i))
    if unknown then return i, unknown end
    i = skip_space(s, i)
    local d = string.sub(s, i, i)
    if d == closer then return i + 1 end
    if d ~= "," then error("expected , or " .. closer) end
    i = i + 1
  end
end

-- Returns the index after the value and, if one is found, the path of the first unknown field.
local walk
walk = function(s, i, schema, path)
  i = skip_space(s, i)
  local c = string.sub(s, i, i)
  if c == '"' then
    local _, after = read_string(s, i)
    return after
  elseif c == "[" then
    return items(s, i + 1, "]", function(j) return walk(s, j, schema, path) end)
  elseif c == "{" then
    return items(s, i + 1, "}", function(j)
      if string.sub(s, j, j) ~= '"' then error("expected a field name") end
      local key
      key, j = read_string(s, j)
      local child = nil
      if schema ~= nil then
        local id = schema.map
        if id == nil then
          id = schema.fields[key]
          if id == nil then return j, path .. key end
        end
        if id ~= 0 then child = SCHEMAS[id] end
      end
      j = skip_space(s, j)
      if string.sub(s, j, j) ~= ":" then error("expected :") end
      return walk(s, j + 1, child, path .. key .. ".")
    end)
  end
  if c == "" then error("unexpected end") end
  return string.find(s, "[,%]} \t\r\n]", i) or (#s + 1)
end

local function body_schema(verb, path)
  for _, route in ipairs(ROUTES) do
    if route[1] == verb and string.find(path, route[2]) then return SCHEMAS[route[3]] end
  end
  return nil
end

local function quote(text)
  return '"' .. string.gsub(text, '[%c"\\]', function(ch)
    return string.format("\\u%04x", string.byte(ch))
  end) .. '"'
end

function envoy_on_request(handle)
  local headers = handle:headers()
  local content_type = headers:get("content-type") or ""
  if string.find(content_type, "^application/grpc") then return end
  local path = string.gsub(headers:get(":path") or "", "%?.*$", "")
  local schema = body_schema(headers:get(":method"), path)
  if schema == nil then return end
  local body = handle:body()
  if body == nil or body:length() == 0 then return end
  local ok, _, unknown = pcall(walk, body:getBytes(0, body:length()), 1, schema, "")
  if not ok or unknown == nil then return end
  local message = "unknown field " .. quote(unknown) .. " in the request body"
  -- The gateway's local-reply mappers leave a reply marked so as it is (scripts/gateway.py).
  handle:streamInfo():dynamicMetadata():set("aimesh.json_fields", "refused", true)
  handle:respond({[":status"] = "400", ["content-type"] = "application/json"},
    '{"code":3,"message":' .. quote(message) .. ',"details":[' ..
    '{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"UNKNOWN_FIELD","domain":"aimesh.dev"},' ..
    '{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":' ..
    quote(unknown) .. ',"description":"no such field; see the API reference for this method"}]}]}')
end
