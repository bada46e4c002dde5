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

// Channel history (keys after the prefix): hs:{<channel>} (a STREAM: entry id "<seq>-0", field m = the message's
// JSON without its seq) and hm:{<channel>} (a HASH: e the epoch, o the newest seq, r the run_id of the Redis that
// began the epoch). The hash tag keeps a channel's two keys in one Cluster slot. Each script reads the run_id of the
// Redis it runs on: a meta made under another one (a Redis that restarted, reloaded an older snapshot, or is a
// promoted replica) may be behind what the nodes told their clients, so the stream begins again, with a new epoch.

/**
 * The start of both: `run`, the run_id of the Redis running the script, and the meta in KEYS[2] as `epoch` and `top`,
 * or false and 0 when there is none made under that run_id (with e, o and r set).
 */
const FENCE = `
local run = string.match(redis.call('INFO', 'server'), 'run_id:(%w+)')
local meta = redis.call('HMGET', KEYS[2], 'e', 'o', 'r')
local epoch, top = meta[1], tonumber(meta[2])
if not epoch or not top or meta[3] ~= run then
  epoch, top = false, 0
end
`

/**
 * KEYS: hs:{<channel>}, hm:{<channel>}. ARGV: the pub/sub channel, a new epoch (used when the stream begins), size,
 * ttl ms, metaTtl ms, the message's JSON (without seq), the broadcast's JSON up to its message
 * (`{"type":"channel",…,"message":`).
 * Gives the message the next seq, keeps it (the last `size`), resets both TTLs and publishes
 * `h:<seq>:<epoch>:<broadcast JSON>`, in one step: every node sees a channel's messages in seq order. The seq is
 * written after the XADD, so a script that fails leaves no seq without its message. Returns [seq, epoch].
 */
export const APPEND = FENCE + `
if not epoch then epoch = ARGV[2] end
local seq = string.format('%d', top + 1)
-- A first message: whatever stream is there is another epoch's (memory eviction may have taken the meta alone).
if top == 0 then redis.call('DEL', KEYS[1]) end
redis.call('XADD', KEYS[1], 'MAXLEN', ARGV[3], seq .. '-0', 'm', ARGV[6])
redis.call('HSET', KEYS[2], 'e', epoch, 'o', seq, 'r', run)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
redis.call('PUBLISH', ARGV[1], 'h:' .. seq .. ':' .. epoch .. ':' .. ARGV[7] .. ARGV[6] .. '}')
return { top + 1, epoch }
`

/**
 * KEYS: hs:{<channel>}, hm:{<channel>}. ARGV: a new epoch (used when the stream begins), metaTtl ms, the epoch of
 * `since` ('' for none), the seq to read from (since's + 1), limit.
 * A stream that does not exist (or was made under another run_id) begins here: its meta is written at seq 0, so
 * the next append goes on from the position this one answers. Returns [epoch, top, { id, message JSON, … }]: up to
 * `limit` messages, oldest first, those from the given seq when `since` is of this epoch, else the newest.
 */
export const READ = FENCE + `
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'e', epoch, 'o', 0, 'r', run)
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
end
local limit = tonumber(ARGV[5])
local out = {}
-- COUNT 0 would mean no limit.
if limit == 0 then return { epoch, top, out } end
local entries, first, last, step
if ARGV[3] == epoch then
  entries = redis.call('XRANGE', KEYS[1], ARGV[4], '+', 'COUNT', limit)
  first, last, step = 1, #entries, 1
else
  entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', limit)
  first, last, step = #entries, 1, -1
end
for i = first, last, step do
  table.insert(out, entries[i][1])
  table.insert(out, entries[i][2][2])
end
return { epoch, top, out }
`

// The record of handled client commands (keys after the prefix): cmd:{<scope>}:<id>, a STRING, `p<node>` while the
// first run is under way on that node (expiring after the lease), then `d<answer JSON>` (expiring after the window).

/**
 * KEYS: cmd:{<scope>}:<id>. ARGV: `p<node>`, lease ms.
 * Records the command as pending unless a record is there: nil when it made the record, the record otherwise.
 */
export const CLAIM = `
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return false end
return redis.call('GET', KEYS[1])
`

/**
 * KEYS: cmd:{<scope>}:<id>. ARGV: `p<node>`.
 * Deletes the record only while it is this node's pending one: never an answer, never another node's claim.
 */
export const RELEASE = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`
