// Lua run inside Redis, so each presence change and each node's removal is one atomic step whatever other nodes do.
// Keys (after the prefix): node:<id> (a node's last report, expiring after nodeTtl), nodes (the ids of the nodes
// that reported), node-presence:<id> (hash "<channel> <user>" → that node's connections),
// presence:<channel> (hash user → connections on every node), reaped:<id> (a node was removed while it may live).

/**
 * KEYS: node-presence:<node>, presence:<channel>. ARGV: "<channel> <user>", user, connections.
 * Returns [1 when the user is now in the channel on some node and was on none, -1 for the reverse, else 0; the
 * users in the channel on every node now].
 */
export const SET_PRESENCE = `
local old = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
local new = tonumber(ARGV[3])
if new == old then return {0, redis.call('HLEN', KEYS[2])} end
if new > 0 then redis.call('HSET', KEYS[1], ARGV[1], new) else redis.call('HDEL', KEYS[1], ARGV[1]) end
local after = redis.call('HINCRBY', KEYS[2], ARGV[2], new - old)
local before = after - (new - old)
if after <= 0 then redis.call('HDEL', KEYS[2], ARGV[2]) end
local users = redis.call('HLEN', KEYS[2])
if before <= 0 and after > 0 then return {1, users} end
if before > 0 and after <= 0 then return {-1, users} end
return {0, users}
`

/**
 * KEYS: node:<id>, nodes, reaped:<id>. ARGV: id, report (JSON), nodeTtl ms.
 * Returns [1 when the node was not listed (first report, Redis lost its data, or it was removed), 1 when it was removed].
 */
export const HEARTBEAT = `
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
local added = redis.call('SADD', KEYS[2], ARGV[1])
local reaped = redis.call('DEL', KEYS[3])
return { added, reaped }
`

/**
 * KEYS: nodes. ARGV: prefix, ms a removal is remembered.
 * Removes every listed node whose report expired, with its presence; returns [node, channel, user, …] for each user
 * that is now in the channel on no node.
 */
export const REAP = `
local out = {}
for _, node in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  if redis.call('EXISTS', ARGV[1] .. 'node:' .. node) == 0 then
    redis.call('SREM', KEYS[1], node)
    redis.call('SET', ARGV[1] .. 'reaped:' .. node, '1', 'PX', ARGV[2])
    local held = ARGV[1] .. 'node-presence:' .. node
    local fields = redis.call('HGETALL', held)
    for i = 1, #fields, 2 do
      local field = fields[i]
      local space = string.find(field, ' ', 1, true)
      local channel, user = string.sub(field, 1, space - 1), string.sub(field, space + 1)
      local key = ARGV[1] .. 'presence:' .. channel
      if redis.call('HINCRBY', key, user, -tonumber(fields[i + 1])) <= 0 then
        redis.call('HDEL', key, user)
        table.insert(out, node)
        table.insert(out, channel)
        table.insert(out, user)
      end
    end
    redis.call('DEL', held)
  end
end
return out
`
