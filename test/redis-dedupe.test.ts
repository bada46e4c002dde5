// The Redis broker's record of handled client commands (claimCommand, commandRecord, finishCommand, releaseCommand):
// brokers of two nodes, no app around them, on a redis-server this file spawns on a free port, and kills or freezes.
import t, { type Test } from 'tap'
import { RedisBroker } from '../plugin.js'
import { until } from './helpers/cluster.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'

const LEASE = 60_000
const WINDOW = 120_000
const ANSWER = JSON.stringify({ cmd: 'reply', param: { text: 'héllo ✓ "quoted"', n: 1 } })

/** A RedisBroker started as node `nodeId` with a quiet host, closed after the test. */
async function node (t: Test, redis: RedisProcess, nodeId: string, commandTimeout = 1000): Promise<RedisBroker> {
  const broker = new RedisBroker({ redis: redis.url, commandTimeout })
  await broker.start({
    nodeId,
    deliver () {},
    log: { error () {}, warn () {}, info () {} },
    counts: () => ({ connections: 0, channels: 0, messagesIn: 0, messagesOut: 0 }),
    presence: () => []
  })
  t.after(() => broker.close())
  return broker
}

if (requireRedis(t)) {
  t.test('a claim is pending on every node until it is finished; then every node reads the answer', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis, 'node-a')
    const b = await node(t, redis, 'node-b')
    const admin = redis.client(t)

    t.equal(await a.commandRecord('u:ann', 'k.1'), null, 'no record before the claim')
    t.equal(await a.claimCommand('u:ann', 'k.1', LEASE), null, 'a fresh claim: null, the caller runs the command')
    t.same(await a.claimCommand('u:ann', 'k.1', LEASE), { state: 'pending' }, 'a second claim on the node: pending')
    t.same(await b.claimCommand('u:ann', 'k.1', LEASE), { state: 'pending' }, 'on another node: pending')
    t.same(await b.commandRecord('u:ann', 'k.1'), { state: 'pending' })
    t.equal(await admin.get('forge-socket:cmd:{u:ann}:k.1'), 'pnode-a', 'one string, p<node>')
    const lease = await admin.pttl('forge-socket:cmd:{u:ann}:k.1')
    t.ok(lease > 0 && lease <= LEASE, 'expiring after the lease')

    await a.finishCommand('u:ann', 'k.1', ANSWER, WINDOW)
    for (const broker of [a, b]) {
      t.same(await broker.commandRecord('u:ann', 'k.1'), { state: 'done', answer: ANSWER }, 'done, with the exact answer')
      t.same(await broker.claimCommand('u:ann', 'k.1', LEASE), { state: 'done', answer: ANSWER }, 'a claim answers it too')
    }
    t.equal(await admin.get('forge-socket:cmd:{u:ann}:k.1'), `d${ANSWER}`, 'd<answer>')
    const window = await admin.pttl('forge-socket:cmd:{u:ann}:k.1')
    t.ok(window > LEASE && window <= WINDOW, 'expiring after the window')
  })

  t.test('release deletes this node\'s pending record, never an answer, never another node\'s claim', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis, 'node-a')
    const b = await node(t, redis, 'node-b')

    t.equal(await a.claimCommand('u:ann', 'threw', LEASE), null)
    await a.releaseCommand('u:ann', 'threw')
    t.equal(await b.commandRecord('u:ann', 'threw'), null, 'a released claim is gone')
    t.equal(await b.claimCommand('u:ann', 'threw', LEASE), null, 'so a retry, on any node, runs the command again')

    await a.releaseCommand('u:ann', 'threw')
    t.same(await a.commandRecord('u:ann', 'threw'), { state: 'pending' }, 'another node\'s release leaves my claim')

    t.equal(await a.claimCommand('u:ann', 'answered', LEASE), null)
    await a.finishCommand('u:ann', 'answered', ANSWER, WINDOW)
    await a.releaseCommand('u:ann', 'answered')
    t.same(await b.commandRecord('u:ann', 'answered'), { state: 'done', answer: ANSWER }, 'a release after the finish leaves the answer')

    await a.releaseCommand('u:ann', 'never-claimed')
    t.equal(await a.commandRecord('u:ann', 'never-claimed'), null, 'a release without a record does nothing')
  })

  t.test('a claim is forgotten after its lease, an answer after its window: the id may run again', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis, 'node-a')
    const b = await node(t, redis, 'node-b')

    t.equal(await a.claimCommand('u:ann', 'lease', 200), null)
    await until(async () => await b.commandRecord('u:ann', 'lease') === null)
    t.equal(await b.claimCommand('u:ann', 'lease', LEASE), null, 'past the lease, another node claims it')

    t.equal(await a.claimCommand('u:ann', 'window', LEASE), null)
    await a.finishCommand('u:ann', 'window', ANSWER, 200)
    await until(async () => await b.commandRecord('u:ann', 'window') === null)
    t.equal(await b.claimCommand('u:ann', 'window', LEASE), null, 'past the window, a claim runs it again')
  })

  t.test('scopes keep their records apart, whatever the scope and id hold', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis, 'node-a')
    const admin = redis.client(t)

    t.equal(await a.claimCommand('u:ann', 'same', LEASE), null)
    t.equal(await a.claimCommand('u:bob', 'same', LEASE), null, 'the same id in another scope is another record')
    await a.finishCommand('u:ann', 'same', ANSWER, WINDOW)
    t.same(await a.commandRecord('u:bob', 'same'), { state: 'pending' }, 'finishing one leaves the other')

    // Each pair would make one key if the scope's `}` were left as it is: cmd:{u:x}:y}:z and cmd:{u:x%7D}:y.
    const pairs: Array<[string, string]> = [['u:x', 'y}:z'], ['u:x}:y', 'z'], ['u:x}', 'y'], ['u:x%7D', 'y'], ['u:x%', '7D}:y'],
      ['u:{ü}:✓', '{}:é.1'], ['c:conn:1', ':'], ['u:', '{'], ['u:🙂', '🙂']]
    for (const [scope, id] of pairs) t.equal(await a.claimCommand(scope, id, LEASE), null, `claimed ${scope} ${id}`)
    for (const [i, [scope, id]] of pairs.entries()) await a.finishCommand(scope, id, `{"n":${i}}`, WINDOW)
    for (const [i, [scope, id]] of pairs.entries()) {
      t.same(await a.commandRecord(scope, id), { state: 'done', answer: `{"n":${i}}` }, `${scope} ${id}: its own answer`)
    }
    t.same((await admin.keys('forge-socket:cmd:*')).sort(), ['{u:x}:y}:z', '{u:x%7D:y}:z', '{u:x%7D}:y', '{u:x%257D}:y', '{u:x%25}:7D}:y',
      '{u:{ü%7D:✓}:{}:é.1', '{c:conn:1}::', '{u:}:{', '{u:🙂}:🙂', '{u:ann}:same', '{u:bob}:same'].map((key) => `forge-socket:cmd:${key}`).sort(),
    'the scope is the hash tag, its `%` and `}` escaped')
  })

  t.test('Redis down: every call rejects at once, coded, a claim marked notSent; after a restart they work again', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis, 'node-a', 300)
    t.equal(await a.claimCommand('u:ann', 'before', LEASE), null)
    await redis.kill()
    await until(() => a.health === 'degraded')

    const started = Date.now()
    await t.rejects(a.claimCommand('u:ann', 'down', LEASE), { code: 'FST_SOCKET_BROKER_UNAVAILABLE', notSent: true }, 'claim')
    await t.rejects(Promise.resolve(a.commandRecord('u:ann', 'down')), { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'read')
    await t.rejects(Promise.resolve(a.finishCommand('u:ann', 'down', ANSWER, WINDOW)), { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'finish')
    await t.rejects(Promise.resolve(a.releaseCommand('u:ann', 'down')), { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'release')
    t.ok(Date.now() - started < 300, 'within the command timeout')

    await redis.restart()
    await a.whenReady()
    t.equal(await a.claimCommand('u:ann', 'down', LEASE), null, 'claimed once Redis is back')
    t.equal(await a.commandRecord('u:ann', 'before'), null, 'a Redis restarted empty has lost the records')
  })

  t.test('Redis frozen: a claim rejects after the command timeout, not marked notSent (Redis runs it when it wakes)', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis, 'node-a', 200)
    const b = await node(t, redis, 'node-b', 200)
    redis.freeze()
    const started = Date.now()
    const err = await a.claimCommand('u:ann', 'frozen', LEASE).then(() => null, (e: Error & { code?: string, notSent?: boolean }) => e)
    const took = Date.now() - started
    t.match(err, { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'coded')
    t.equal(err?.notSent, undefined, 'it was sent')
    t.ok(took >= 150 && took < 2000, `after the command timeout (${took} ms)`)
    redis.thaw()
    await Promise.all([a.whenReady(), b.whenReady()])
    t.same(await b.commandRecord('u:ann', 'frozen'), { state: 'pending' }, 'the claim that timed out holds its lease')
  })
}
