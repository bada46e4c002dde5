// Starting while Redis is down (a deploy or a crash loop during an outage): the node comes up degraded, serves its
// own members, and joins the cluster when Redis answers; with `waitForBroker` it waits that long, then refuses.
// Against a redis-server each test spawns on a free port, and stops before the node starts.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { once } from 'node:events'
import { createServer, connect as tcp, type Socket } from 'node:net'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import forgeSocket, { RedisBroker, type Broker } from '../plugin.js'
import { resolveOptions } from '../lib/options.js'
import { flush } from './helpers/cluster.js'
import { LogSink } from './helpers/logs.js'
import { SECRET, connect, listen, room, sign, type Client } from './helpers/server.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'
import { ROOT, demoLogin, freePort, startDemo } from './helpers/demo-process.js'

const unhandled: unknown[] = []
const onUnhandled = (reason: unknown): void => { unhandled.push(reason) }
process.on('unhandledRejection', onUnhandled)
t.teardown(() => { process.removeListener('unhandledRejection', onUnhandled) })

if (requireRedis(t)) {
  // These two need no Redis; they are in here as a file skipped for want of redis-server plans no test at all.
  t.test('waitForBroker is a whole number of ms, 0 by default', async (t) => {
    t.equal(resolveOptions({}).waitForBroker, 0)
    t.equal(resolveOptions({ waitForBroker: 2000 }).waitForBroker, 2000)
    for (const waitForBroker of [-1, 1.5, 2 ** 31]) {
      t.throws(() => resolveOptions({ waitForBroker }), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /\/waitForBroker/ }, String(waitForBroker))
    }
  })

  t.test('waitForBroker: a degraded broker that cannot say when it is ready, or fails to, is refused with the code and closed', async (t) => {
    const cases: Array<[string, Partial<Broker>, RegExp]> = [
      ['without whenReady', {}, /not ready after 50 ms \(waitForBroker\)/],
      ['whose whenReady fails', { whenReady: async () => { throw new Error('NOAUTH Authentication required.') } }, /NOAUTH Authentication required/]
    ]
    for (const [name, extra, message] of cases) {
      let closed = false
      const broker: Broker = { start () {}, publish () {}, subscribe () {}, unsubscribe () {}, close () { closed = true }, health: 'degraded', ...extra }
      const app = Fastify()
      app.register(forgeSocket, { jwt: { secret: SECRET }, broker, waitForBroker: 50 })
      await t.rejects(async () => { await app.ready() }, { code: 'FST_SOCKET_BROKER_UNAVAILABLE', message }, name)
      t.ok(closed, `${name}: closed`)
    }
  })

  /** A redis-server that was started and stopped: its port refuses connections until `restart()`. */
  async function stoppedRedis (t: Test): Promise<RedisProcess> {
    const redis = await RedisProcess.start(t)
    await redis.kill()
    return redis
  }

  /**
   * ioredis options for `port` that retry every 10 ms and count the attempts, so a test waits for attempts instead
   * of guessing how long they take (both of a broker's connections count).
   */
  function counted (port: number): { options: { host: string, port: number, retryStrategy: () => number }, attempts: (n: number) => Promise<void> } {
    let attempts = 0
    const waiting = new Set<{ n: number, resolve: () => void }>()
    const retryStrategy = (): number => {
      attempts++
      for (const waiter of waiting) if (attempts >= waiter.n) { waiting.delete(waiter); waiter.resolve() }
      return 10
    }
    return {
      options: { host: '127.0.0.1', port, retryStrategy },
      /** Resolves once ioredis has retried `n` times. */
      attempts: (n) => new Promise((resolve) => { if (attempts >= n) resolve(); else waiting.add({ n, resolve }) })
    }
  }

  interface Node { app: FastifyInstance, base: string, broker: RedisBroker, sink: LogSink }

  /** A node on `broker` that logs (warn and up) to a sink, with a room route, listening. */
  async function node (t: Test, broker: RedisBroker): Promise<Node> {
    const sink = new LogSink()
    const app = Fastify({ logger: { level: 'warn', stream: sink.stream } })
    t.after(() => app.close())
    await app.register(forgeSocket, { jwt: { secret: SECRET }, broker })
    room(app)
    return { app, base: await listen(app), broker, sink }
  }

  async function join (base: string, room: string, user: string): Promise<{ client: Client, id: string }> {
    const { client, connected } = await connect(`${base}/ws/${room}`, sign({ sub: user }))
    // Answered after the connection's join (its subscription and presence included).
    await client.request(`room-${room}`, 'ping', null)
    return { client, id: (connected.param as { connectionId: string }).connectionId }
  }

  const isUser = (cmd: string, user: string) => (m: { cmd: string, param: unknown }): boolean => m.cmd === cmd && (m.param as { user?: string }).user === user
  const users = (entries: Array<{ user: string }>): string[] => entries.map((p) => p.user).sort()

  t.test('a node started while Redis is down comes up degraded, delivers locally, and joins the cluster when Redis answers', async (t) => {
    const redis = await stoppedRedis(t)
    const redisA = counted(redis.port)
    // Reports every 500 ms: the degraded phase below sees one fail. Not much less, so that a loaded machine does not
    // take a live node for dead.
    const a = await node(t, new RedisBroker({ redis: redisA.options, nodeTtl: 1500 }))
    t.equal(a.app.socket.status().broker, 'degraded', 'listening, and degraded')

    const ann = await join(a.base, 'lobby', 'ann')
    const carl = await join(a.base, 'lobby', 'carl')
    t.match((await ann.client.next(isUser('user-joined', 'carl'))).param, { connectionId: carl.id }, 'presence is decided by this node\'s members')
    t.equal(a.app.socket.broadcast('room-lobby', { cmd: 'local', param: 1 }), 2, 'a broadcast reaches both local members')
    await Promise.all([ann.client.next('local'), carl.client.next('local')])
    t.match(await a.sink.next('broker publish failed'), { err: { code: 'FST_SOCKET_BROKER_UNAVAILABLE' } }, 'its publish to the other nodes failed, logged')
    await t.rejects(a.broker.publish({ type: 'channel', origin: 'test', channel: 'x', message: { channel: 'x', cmd: 'y', param: null } }),
      { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'a publish fails at once')
    await t.rejects(a.app.socket.presence('room-lobby'), { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'presence on every node can\'t be had')
    t.same(users(a.app.socket.localPresence('room-lobby')), ['ann', 'carl'], 'this node\'s can')
    t.same((await a.app.socket.clusterStatus()).nodes.map((n) => n.node), [a.app.socket.nodeId], 'the cluster is this node alone')

    // Past a report (120 attempts, 10 ms apart on each of two connections, take over 600 ms) and many retries:
    // still the one warning from the start.
    await redisA.attempts(120)
    const warnings = a.sink.lines.filter((line) => line.broker === true)
    t.equal(warnings.length, 1, 'one warning, not one per retry or report')
    t.match(warnings[0], { level: 40, err: { code: 'FST_SOCKET_BROKER_UNAVAILABLE', message: /Redis is not ready at start \(connect ECONNREFUSED/ } })

    await redis.restart()
    await a.broker.whenReady()
    t.equal(a.app.socket.status().broker, 'ok', 'ok once Redis answers')
    const b = await node(t, new RedisBroker({ redis: redis.url }))
    const bob = await join(b.base, 'lobby', 'bob')
    t.match((await ann.client.next(isUser('user-joined', 'bob'))).param, { connectionId: bob.id }, 'B\'s presence reaches A\'s members')
    b.app.socket.broadcast('room-lobby', { cmd: 'from-b' })
    await Promise.all([ann.client.next('from-b'), carl.client.next('from-b')])
    t.pass('a broadcast from B reaches A\'s members (the subscription made while degraded is in place)')
    t.equal(b.app.socket.sendToConnection(ann.id, { cmd: 'direct' }), false)
    t.match(await ann.client.next('direct'), { channel: 'room-lobby' }, 'and so does a message for one connection (the control channel)')
    t.same(users(await b.app.socket.presence('room-lobby')), ['ann', 'bob', 'carl'], 'A\'s users are in presence on every node')
    const cluster = await b.app.socket.clusterStatus()
    t.same(cluster.nodes.map((n) => n.node).sort(), [a.app.socket.nodeId, b.app.socket.nodeId].sort(), 'and A in the cluster')
    t.equal(cluster.connections, 3, 'with its connections')
    t.notOk(a.sink.lines.some((line) => line.broker === true && line !== warnings[0]), 'and the broker logged nothing more')
    for (const c of [ann, carl, bob]) c.client.close()
  })

  t.test('a node that could not reach Redis at start announces its users to the other nodes when it joins', async (t) => {
    const redis = await RedisProcess.start(t)
    const b = await node(t, new RedisBroker({ redis: redis.url }))
    const bob = await join(b.base, 'lobby', 'bob')
    // A reaches Redis through a port that refuses connections until the test opens it: a network cut at A's start.
    const path = await closedPath(t, redis.port)
    const a = await node(t, new RedisBroker({ redis: counted(path.port).options }))
    t.equal(a.app.socket.status().broker, 'degraded')
    const ann = await join(a.base, 'lobby', 'ann')
    await path.open()
    await a.broker.whenReady()
    t.same((await bob.client.next(isUser('user-joined', 'ann'))).param, { user: 'ann', node: a.app.socket.nodeId }, 'B\'s members are told who was on A')
    t.same(users(await a.app.socket.presence('room-lobby')), ['ann', 'bob'])
    await flush(b.app, 'room-lobby', ann.client, bob.client)
    t.notOk(ann.client.messages.some((m) => m.cmd === 'user-joined'), 'A\'s members, newcomers to the others, are told nothing (as on any join)')
    t.notOk(bob.client.messages.some((m) => m.cmd === 'user-joined'), 'B\'s, once')
    ann.client.close()
    bob.client.close()
  })

  t.test('waitForBroker: a node refuses to start with FST_SOCKET_BROKER_UNAVAILABLE when Redis does not answer in time', async (t) => {
    const redis = await stoppedRedis(t)
    const app = Fastify()
    t.after(() => app.close())
    const broker = new RedisBroker({ redis: redis.url })
    app.register(forgeSocket, { jwt: { secret: SECRET }, broker, waitForBroker: 300 })
    const started = Date.now()
    await t.rejects(async () => { await app.ready() }, { code: 'FST_SOCKET_BROKER_UNAVAILABLE', message: /not ready after 300 ms \(waitForBroker\)/ })
    t.ok(Date.now() - started >= 300, 'after the wait')
    t.equal(broker.health, 'degraded')
    await t.rejects(broker.whenReady(), { code: 'FST_SOCKET_BROKER_UNAVAILABLE', message: /the broker was closed/ }, 'and closed: nobody waits for it any more')

    // In a process of its own (the built package), nothing must be left to keep it alive: no timer, no socket.
    const script = `
      const { default: Fastify } = await import('fastify')
      const { default: forgeSocket } = await import(${JSON.stringify(`${ROOT}dist/plugin.js`)})
      const app = Fastify()
      app.register(forgeSocket, { jwt: { secret: ${JSON.stringify(SECRET)} }, broker: ${JSON.stringify(redis.url)}, waitForBroker: 300 })
      await app.ready().catch((err) => { console.log(err.code); console.log(Date.now()) })`
    const { stdout } = await promisify(execFile)(process.execPath, ['--no-warnings', '--input-type=module', '-e', script], { cwd: ROOT, timeout: 10_000 })
    const [code, refusedAt] = stdout.trim().split('\n')
    t.equal(code, 'FST_SOCKET_BROKER_UNAVAILABLE', 'the process was refused')
    const lingered = Date.now() - Number(refusedAt)
    t.ok(lingered < 1000, `and exited by itself ${lingered} ms later`)
  })

  t.test('waitForBroker: a node waits for Redis that comes up within the wait', async (t) => {
    const redis = await stoppedRedis(t)
    const counting = counted(redis.port)
    const sink = new LogSink()
    const app = Fastify({ logger: { level: 'warn', stream: sink.stream } })
    t.after(() => app.close())
    app.register(forgeSocket, { jwt: { secret: SECRET }, broker: new RedisBroker({ redis: counting.options }), waitForBroker: 10_000 })
    const ready = app.ready()
    // The first attempt failed: the start is waiting.
    await counting.attempts(1)
    await redis.restart()
    await ready
    t.equal(app.socket.status().broker, 'ok', 'started once Redis answered')
    t.same(await app.socket.presence('room-lobby'), [], 'presence on every node answers')
    t.same((await app.socket.clusterStatus()).nodes.map((n) => n.node), [app.socket.nodeId], 'the node has reported itself')
    const warnings = sink.lines.filter((line) => line.broker === true)
    t.equal(warnings.length, 1, 'the wait was logged, once')
    t.match(warnings[0], { err: { code: 'FST_SOCKET_BROKER_UNAVAILABLE' } })
  })

  t.test('the demo started with REDIS_URL at a stopped Redis stays up, serves its own members, and says it is degraded', async (t) => {
    const redis = await stoppedRedis(t)
    const demo = await startDemo({ port: await freePort(), secret: 'demo-redis-start-secret', env: { REDIS_URL: redis.url } })
    t.after(() => demo.kill())
    t.match(demo.logs.find((line) => line.broker === true), { level: 40, err: { code: 'FST_SOCKET_BROKER_UNAVAILABLE' } }, 'it logged the degraded start')
    const login = (name: string): Promise<string> => demoLogin(demo.url, name)
    const { client: ann } = await connect(`${demo.wsUrl}/ws/chat/lobby`, await login('ann'))
    const { client: bob } = await connect(`${demo.wsUrl}/ws/chat/lobby`, await login('bob'))
    await ann.next(isUser('user-joined', 'bob'))
    bob.send({ channel: 'chat-room-lobby', cmd: 'chat-message', param: { text: 'hi ann' } })
    t.match((await ann.next('chat-message')).param, { from: 'bob', text: 'hi ann' }, 'a chat between two of its users works')
    ann.close()
    bob.close()
    t.same(await demo.kill('SIGTERM'), { code: 0, signal: null }, 'still running until told to stop, and it stops cleanly')
    t.equal(demo.logs.filter((line) => line.broker === true).length, 1, 'with one broker warning in all')
  })

  t.test('nothing above left a rejection unhandled', async (t) => {
    t.strictSame(unhandled, [])
  })
}

/** A TCP path to Redis that refuses connections until the test opens it; closed after the test. */
async function closedPath (t: Test, redisPort: number): Promise<{ port: number, open: () => Promise<void> }> {
  const port = await freePort()
  const sockets = new Set<Socket>()
  const server = createServer((client) => {
    const upstream = tcp(redisPort, '127.0.0.1')
    for (const socket of [client, upstream]) {
      sockets.add(socket)
      socket.on('error', () => {})
      socket.on('close', () => sockets.delete(socket))
    }
    client.pipe(upstream).pipe(client)
  })
  t.after(() => {
    for (const socket of sockets) socket.destroy()
    server.close()
  })
  return {
    port,
    open: async () => {
      server.listen(port, '127.0.0.1')
      await once(server, 'listening')
    }
  }
}
