// The Redis broker against a real redis-server that each test spawns on a free port (and kills, freezes, restarts).
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { RedisBroker } from '../plugin.js'
import { flush, until } from './helpers/cluster.js'
import { serve, sign, connect, type Client } from './helpers/server.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'
import { buildDemo } from '../examples/app.js'
import { demoLogin, freePort, startDemo } from './helpers/demo-process.js'

if (requireRedis(t)) {
  /** One node: an app whose broker is a RedisBroker on `redis`, with a room route, listening. */
  async function node (t: Test, redis: RedisProcess, commandTimeout = 1000, nodeTtl = 3000): Promise<{ app: FastifyInstance, base: string, broker: RedisBroker }> {
    const broker = new RedisBroker({ redis: redis.url, commandTimeout, nodeTtl })
    const { app, base } = await serve(t, { broker }, (app) => {
      app.socket.command('say', { handler: (param, { channel }) => { app.socket.broadcast(channel, { cmd: 'said', param }) } })
    })
    return { app, base, broker }
  }


  async function join (base: string, room: string, user: string): Promise<{ client: Client, id: string }> {
    const { client, connected } = await connect(`${base}/ws/${room}`, sign({ sub: user }))
    // Answered after the connection's join, including its Redis subscription.
    await client.request(`room-${room}`, 'ping', null)
    return { client, id: (connected.param as { connectionId: string }).connectionId }
  }

  t.test('Redis killed: local delivery goes on, publishes fail fast and coded, health is degraded; after a restart delivery resumes', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const b = await node(t, redis)
    const ann = await join(a.base, 'lobby', 'ann')
    const carl = await join(a.base, 'lobby', 'carl')
    const bob = await join(b.base, 'lobby', 'bob')
    t.equal(a.app.socket.status().broker, 'ok')
    // Bob's join reaches node A through Redis: heard before the kill, or it could land after the messages are cleared.
    await ann.client.next((m) => m.cmd === 'user-joined' && (m.param as { user: string }).user === 'bob')

    await redis.kill()
    for (const c of [ann, carl, bob]) c.client.messages.length = 0
    await t.rejects(a.broker.publish({ type: 'channel', origin: 'test', channel: 'x', message: { channel: 'x', cmd: 'y', param: null } }),
      { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'a publish fails at once with a code')
    // Each client notices the lost connection on its own; health follows.
    await until(() => a.app.socket.status().broker === 'degraded' && b.app.socket.status().broker === 'degraded')
    t.pass('both nodes say degraded')
    t.equal(a.app.socket.broadcast('room-lobby', { cmd: 'local', param: 1 }), 2, 'both local members get it')
    await Promise.all([ann.client.next('local'), carl.client.next('local')])
    const dan = await join(a.base, 'other', 'dan')
    t.pass('a new connection opens during the outage')

    await redis.restart()
    await Promise.all([a.broker.whenReady(), b.broker.whenReady()])
    t.equal(a.app.socket.status().broker, 'ok')
    a.app.socket.broadcast('room-lobby', { cmd: 'after', param: 2 })
    t.match(await bob.client.next('after'), { param: 2 }, 'cross-node delivery resumed')
    b.app.socket.broadcast('room-other', { cmd: 'to-dan' })
    t.match(await dan.client.next('to-dan'), { channel: 'room-other' }, 'and the subscription made during the outage is in place')
    const users = (await b.app.socket.presence('room-lobby')).map((p) => p.user).sort()
    t.same(users, ['ann', 'bob', 'carl'], 'the restarted Redis knows every node\'s presence again')
    t.same((await b.app.socket.presence('room-other')).map((p) => p.user), ['dan'], 'including joins made during the outage')
    await flush(b.app, 'room-lobby', ann.client, bob.client)
    t.notOk([...ann.client.messages, ...bob.client.messages].some((m) => m.cmd === 'user-joined'), 'and announces no one anew')
    for (const c of [ann, carl, bob, dan]) c.client.close()
  })

  t.test('Redis frozen: publishes fail within the command timeout, the event loop stays free, and it recovers', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis, 200)
    const b = await node(t, redis, 200)
    const ann = await join(a.base, 'lobby', 'ann')
    const carl = await join(a.base, 'lobby', 'carl')
    const bob = await join(b.base, 'lobby', 'bob')
    await ann.client.next((m) => m.cmd === 'user-joined' && (m.param as { user: string }).user === 'bob')
    redis.freeze()
    let ticks = 0
    const ticker = setInterval(() => { ticks++ }, 10)
    await t.rejects(a.broker.publish({ type: 'channel', origin: 'test', channel: 'x', message: { channel: 'x', cmd: 'y', param: null } }),
      { code: 'FST_SOCKET_BROKER_UNAVAILABLE' })
    clearInterval(ticker)
    t.ok(ticks > 0, 'timers kept running while the publish waited')
    t.equal(a.app.socket.broadcast('room-lobby', { cmd: 'local' }), 2)
    await ann.client.next('local')
    carl.client.close()
    t.same((await ann.client.next('user-left')).param, { user: 'carl', connectionId: carl.id }, 'a leave during the freeze is announced on its node')
    redis.thaw()
    await Promise.all([a.broker.whenReady(), b.broker.whenReady()])
    a.app.socket.broadcast('room-lobby', { cmd: 'after' })
    await bob.client.next('after')
    t.pass('cross-node delivery works again')
    // The commands that timed out were sent: Redis runs them when it wakes (the outcome of a timed-out command is
    // unknown). Either they did, or A's next report finds its presence stale and announces the difference.
    t.match((await bob.client.next('user-left')).param, { user: 'carl' }, 'and, once Redis answers, to the other nodes')
    t.same((await a.app.socket.presence('room-lobby')).map((p) => p.user).sort(), ['ann', 'bob'], 'presence in Redis is right again')
    await a.broker.whenReady()
    await flush(a.app, 'room-lobby', ann.client, bob.client)
    t.equal([...ann.client.messages, ...bob.client.messages].filter((m) => m.cmd === 'user-left').length, 0, 'no one is told twice')
    ann.client.close()
    bob.client.close()
  })

  t.test('1,000 join/leave cycles leave the Redis channels at their baseline', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const admin = redis.client(t)
    const ann = await join(a.base, 'lobby', 'ann')
    const baseline = (await admin.pubsub('CHANNELS', 'forge-socket:*') as string[]).sort()
    t.same(baseline, ['forge-socket:ch:room-lobby', 'forge-socket:control'])
    const id = a.app.socket.nodeId
    const keys = ['forge-socket:nodes', `forge-socket:node:${id}`, `forge-socket:node-presence:${id}`, 'forge-socket:presence:room-lobby']
    t.same((await admin.keys('forge-socket:*')).sort(), keys.sort(), 'the keys: node list, node report, presence')
    for (let i = 0; i < 1000; i++) {
      await a.app.socket.join(ann.id, `cycle-${i % 10}`)
      await a.app.socket.leave(ann.id, `cycle-${i % 10}`)
    }
    t.same((await admin.pubsub('CHANNELS', 'forge-socket:*') as string[]).sort(), baseline)
    t.same((await admin.keys('forge-socket:*')).sort(), keys.sort(), 'no key left behind')
    t.same(await admin.hgetall(`forge-socket:node-presence:${id}`), { 'room-lobby ann': '1' })
    ann.client.close()
  })

  t.test('a node whose entry is gone from the node list writes its presence back, clearing what it no longer has', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const admin = redis.client(t)
    const ann = await join(a.base, 'lobby', 'ann')
    const id = a.app.socket.nodeId
    // What a presence change that ran after the node gave up on it would leave: a user the node no longer has.
    await admin.hset(`forge-socket:node-presence:${id}`, 'room-lobby zed', '1')
    await admin.hset('forge-socket:presence:room-lobby', 'zed', '1')
    await admin.srem('forge-socket:nodes', id)
    t.same((await a.app.socket.presence('room-lobby')).map((p) => p.user).sort(), ['ann', 'zed'])
    await a.broker.whenReady()
    t.same(await a.app.socket.presence('room-lobby'), [{ user: 'ann', connections: 1 }], 'zed is gone, ann is still there')
    t.same(await admin.hgetall(`forge-socket:node-presence:${id}`), { 'room-lobby ann': '1' })
    ann.client.close()
  })

  t.test('the broker option takes a URL, ioredis options or a client (and closes only what it created)', async (t) => {
    const redis = await RedisProcess.start(t)
    const own = redis.client(t)
    for (const broker of [redis.url, { host: '127.0.0.1', port: redis.port }, own]) {
      const { app, base } = await serve(t, { broker })
      const ann = await join(base, 'lobby', 'ann')
      t.equal(app.socket.status().broker, 'ok')
      ann.client.close()
      await app.close()
    }
    t.equal(own.status, 'ready', 'the app\'s own client is left open')
  })

  const SECRET = 'cluster-test-secret-that-is-long-enough'
  const NODE_TTL = 600

  /**
   * Node A is the demo in this process; node B is the demo in a process of its own (so it can really die or
   * freeze). Both on `redis`, reporting every NODE_TTL / 3. Ann is on A, bob and carl on B, all in the lobby.
   */
  async function twoDemoNodes (t: Test, redis: RedisProcess) {
    const a = await buildDemo({ redisUrl: redis.url, nodeTtl: NODE_TTL, secret: SECRET })
    t.after(() => a.close())
    const aUrl = await a.listen({ port: 0, host: '127.0.0.1' })
    const b = await startDemo({ port: await freePort(), secret: SECRET, env: { REDIS_URL: redis.url, NODE_TTL: String(NODE_TTL) } })
    t.after(() => b.kill())
    const enter = async (base: string, name: string): Promise<Client> => {
      const { client } = await connect(`${base.replace(/^http/, 'ws')}/ws/chat/lobby`, await demoLogin(base, name))
      await client.request('chat-room-lobby', 'ping', null)
      return client
    }
    const ann = await enter(aUrl, 'ann')
    const bob = await enter(b.url, 'bob')
    const carl = await enter(b.url, 'carl')
    await ann.next((m) => m.cmd === 'user-joined' && (m.param as { user: string }).user === 'carl')
    // Everyone has heard of everyone (B published bob's arrival before carl's): the tests start from a clean slate.
    for (const client of [ann, bob, carl]) client.messages.length = 0
    const bNode = (await a.socket.clusterStatus()).nodes.find((n) => n.node !== a.socket.nodeId)?.node
    return { a, b, ann, bob, carl, bNode }
  }

  /** The users of the user-left (or user-joined) messages a client has, in order. */
  async function nextUsers (client: Client, cmd: string, count: number): Promise<Array<{ user: string, node?: string }>> {
    const got: Array<{ user: string, node?: string }> = []
    for (let i = 0; i < count; i++) got.push((await client.next(cmd)).param as { user: string, node?: string })
    return got.sort((x, y) => x.user.localeCompare(y.user))
  }

  t.test('a node that dies: within 4/3 of nodeTtl its users leave presence and the other nodes tell their members', async (t) => {
    const redis = await RedisProcess.start(t)
    const { a, b, ann, bNode } = await twoDemoNodes(t, redis)
    await until(async () => (await a.socket.clusterStatus()).connections === 3)
    t.pass('clusterStatus counts both nodes\' connections')
    const died = Date.now()
    await b.kill('SIGKILL')
    t.same(await nextUsers(ann, 'user-left', 2), [{ user: 'bob', node: bNode }, { user: 'carl', node: bNode }], 'ann is told who left with B')
    const elapsed = Date.now() - died
    t.ok(elapsed < NODE_TTL * 4 / 3 + 1000, `removed ${elapsed} ms after the kill (bound: 4/3 × nodeTtl = ${NODE_TTL * 4 / 3} ms, and the time to tell)`)
    t.same(await a.socket.presence('chat-room-lobby'), [{ user: 'ann', connections: 1 }], 'presence lists A\'s user only')
    t.same((await a.socket.clusterStatus()).nodes.map((n) => n.node), [a.socket.nodeId], 'and the cluster is A alone')
    ann.close()
  })

  t.test('a node frozen past nodeTtl is taken for dead; when it wakes, its users are announced again', async (t) => {
    const redis = await RedisProcess.start(t)
    const { a, b, ann, bob, carl, bNode } = await twoDemoNodes(t, redis)
    process.kill(b.pid, 'SIGSTOP')
    t.same(await nextUsers(ann, 'user-left', 2), [{ user: 'bob', node: bNode }, { user: 'carl', node: bNode }], 'taken for dead')
    // Told to B's subscriber before this (A published both), so B has seen its own removal by the time it delivers it.
    a.socket.broadcast('chat-room-lobby', { cmd: 'while-frozen' })
    process.kill(b.pid, 'SIGCONT')
    t.same(await nextUsers(ann, 'user-joined', 2), [{ user: 'bob', node: bNode }, { user: 'carl', node: bNode }], 'back')
    t.same((await a.socket.presence('chat-room-lobby')).map((p) => p.user).sort(), ['ann', 'bob', 'carl'])
    await Promise.all([bob.next('while-frozen'), carl.next('while-frozen')])
    await flush(a, 'chat-room-lobby', bob, carl)
    // Each other: that A's users come and go for them is no error (a loaded machine can stall A past its 600 ms too).
    const aboutB = (m: { cmd: string, param: unknown }): boolean => (m.cmd === 'user-left' || m.cmd === 'user-joined') &&
      ['bob', 'carl'].includes((m.param as { user?: string }).user ?? '')
    t.notOk([...bob.messages, ...carl.messages].some(aboutB), 'B\'s own members never saw each other go')
    for (const c of [ann, bob, carl]) c.close()
  })

}
