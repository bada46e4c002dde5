// The Redis broker against a real redis-server that each test spawns on a free port (and kills, freezes, restarts).
import t, { type Test } from 'tap'
import { Redis } from 'ioredis'
import type { FastifyInstance } from 'fastify'
import { RedisBroker } from '../plugin.js'
import { build, listen, sign, connect, type Client } from './helpers/server.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'

if (requireRedis(t)) {
  /** One node: an app whose broker is a RedisBroker on `redis`, with a room route, listening. */
  async function node (t: Test, redis: RedisProcess, commandTimeout = 1000): Promise<{ app: FastifyInstance, base: string, broker: RedisBroker }> {
    const broker = new RedisBroker({ redis: redis.url, commandTimeout })
    const app = await build({ broker }, (app) => {
      app.get('/ws/:room', app.socket.act('room', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`)))
      app.socket.command('say', { handler: (param, { channel }) => { app.socket.broadcast(channel, { cmd: 'said', param }) } })
    })
    t.after(() => app.close())
    return { app, base: await listen(app), broker }
  }

  /** Waits for a condition another node makes true, checking once per event-loop turn (bounded). */
  async function until (condition: () => boolean): Promise<void> {
    for (let turns = 0; !condition(); turns++) {
      if (turns > 100_000) throw new Error('condition never became true')
      await new Promise((resolve) => setImmediate(resolve))
    }
  }

  async function join (base: string, room: string, user: string): Promise<{ client: Client, id: string }> {
    const { client, connected } = await connect(`${base}/ws/${room}`, sign({ sub: user }))
    // Answered after the connection's join, including its Redis subscription.
    await client.request(`room-${room}`, 'ping', null)
    return { client, id: (connected.param as { connectionId: string }).connectionId }
  }

  t.test('two nodes on one Redis: chat, direct messages, joins, leaves and disconnects cross over, exactly once', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const b = await node(t, redis)
    const ann = await join(a.base, 'lobby', 'ann')
    const bob = await join(b.base, 'lobby', 'bob')
    t.same((await ann.client.next('user-joined')).param, { user: 'bob', connectionId: bob.id }, 'presence crosses nodes')

    bob.client.send({ channel: 'room-lobby', cmd: 'say', param: 'hi from B' })
    t.match(await ann.client.next('said'), { channel: 'room-lobby', param: 'hi from B' }, 'a chat message sent on B reaches A')
    t.match(await bob.client.next('said'), { param: 'hi from B' }, 'and B itself')
    a.app.socket.broadcast('room-lobby', { cmd: 'marker' })
    await Promise.all([ann.client.next('marker'), bob.client.next('marker')])
    t.notOk([...ann.client.messages, ...bob.client.messages].some((m) => m.cmd === 'said'), 'no second copy anywhere')

    t.equal(a.app.socket.sendToConnection(bob.id, { cmd: 'direct', param: 1 }), false, 'not local to A')
    t.match(await bob.client.next('direct'), { channel: 'room-lobby', param: 1 })
    t.equal(await a.app.socket.join(bob.id, 'extra'), false)
    // A join by id for another node resolves once it is published; B then joins and subscribes.
    await until(() => b.app.socket.connections('extra').length === 1)
    await b.broker.whenReady()
    a.app.socket.broadcast('extra', { cmd: 'in-extra' })
    t.match(await bob.client.next('in-extra'), { channel: 'extra' }, 'a join by id on A took effect on B')
    await a.app.socket.leave(bob.id, 'extra')
    t.equal(a.app.socket.disconnect(bob.id, 4000, 'bye from A'), false)
    t.same(await bob.client.closed, { code: 4000, reason: 'bye from A' }, 'disconnect by id reaches B')
    ann.client.close()
  })

  t.test('messages one node publishes to a channel arrive in the order published', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const b = await node(t, redis)
    const bob = await join(b.base, 'lobby', 'bob')
    // A has no member in room-lobby: every message reaches bob through Redis.
    for (let i = 0; i < 300; i++) a.app.socket.broadcast('room-lobby', { cmd: 'n', param: i })
    const got: number[] = []
    for (let i = 0; i < 300; i++) got.push((await bob.client.next('n')).param as number)
    t.same(got, Array.from({ length: 300 }, (_, i) => i))
    bob.client.close()
  })

  t.test('Redis killed: local delivery goes on, publishes fail fast and coded, health is degraded; after a restart delivery resumes', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const b = await node(t, redis)
    const ann = await join(a.base, 'lobby', 'ann')
    const carl = await join(a.base, 'lobby', 'carl')
    const bob = await join(b.base, 'lobby', 'bob')
    t.equal(a.app.socket.status().broker, 'ok')

    await redis.kill()
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
    for (const c of [ann, carl, bob, dan]) c.client.close()
  })

  t.test('Redis frozen: publishes fail within the command timeout, the event loop stays free, and it recovers', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis, 200)
    const b = await node(t, redis, 200)
    const ann = await join(a.base, 'lobby', 'ann')
    const bob = await join(b.base, 'lobby', 'bob')
    redis.freeze()
    let ticks = 0
    const ticker = setInterval(() => { ticks++ }, 10)
    await t.rejects(a.broker.publish({ type: 'channel', origin: 'test', channel: 'x', message: { channel: 'x', cmd: 'y', param: null } }),
      { code: 'FST_SOCKET_BROKER_UNAVAILABLE' })
    clearInterval(ticker)
    t.ok(ticks > 0, 'timers kept running while the publish waited')
    t.equal(a.app.socket.broadcast('room-lobby', { cmd: 'local' }), 1)
    await ann.client.next('local')
    redis.thaw()
    await Promise.all([a.broker.whenReady(), b.broker.whenReady()])
    a.app.socket.broadcast('room-lobby', { cmd: 'after' })
    await bob.client.next('after')
    t.pass('cross-node delivery works again')
    ann.client.close()
    bob.client.close()
  })

  t.test('1,000 join/leave cycles leave the Redis channels at their baseline', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const admin = new Redis(redis.url, { commandTimeout: 1000 })
    admin.on('error', () => {})
    t.after(() => admin.quit())
    const ann = await join(a.base, 'lobby', 'ann')
    const baseline = (await admin.pubsub('CHANNELS', 'forge-socket:*') as string[]).sort()
    t.same(baseline, ['forge-socket:ch:room-lobby', 'forge-socket:control'])
    for (let i = 0; i < 1000; i++) {
      await a.app.socket.join(ann.id, `cycle-${i % 10}`)
      await a.app.socket.leave(ann.id, `cycle-${i % 10}`)
    }
    t.same((await admin.pubsub('CHANNELS', 'forge-socket:*') as string[]).sort(), baseline)
    ann.client.close()
  })

  t.test('the broker option takes a URL, ioredis options or a client (and closes only what it created)', async (t) => {
    const redis = await RedisProcess.start(t)
    const own = new Redis(redis.url, { commandTimeout: 1000 })
    own.on('error', () => {})
    t.after(() => own.quit())
    for (const broker of [redis.url, { host: '127.0.0.1', port: redis.port }, own]) {
      const app = await build({ broker })
      app.get('/ws/:room', app.socket.act('room', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`)))
      const base = await listen(app)
      const ann = await join(base, 'lobby', 'ann')
      t.equal(app.socket.status().broker, 'ok')
      ann.client.close()
      await app.close()
    }
    t.equal(own.status, 'ready', 'the app\'s own client is left open')
  })
}
