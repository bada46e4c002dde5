import t, { type Test } from 'tap'
import Fastify from 'fastify'
import fastifyJwt from '@fastify/jwt'
import fastifyCookie from '@fastify/cookie'
import forgeSocket, { MemoryBroker, type ForgeSocketOptions, type Profile } from '../plugin.js'
import { resolveOptions } from '../lib/options.js'
import { stripQueryToken } from '../lib/auth.js'
import { listen, room, serve, sign, connect, refused, SECRET } from './helpers/server.js'

/** Registers forge-socket with `options` (as given, no test secret added) on a fresh app and boots it. */
async function register (t: Test, options: unknown): Promise<void> {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(forgeSocket, options as ForgeSocketOptions)
  await app.ready()
}

// examples/app.ts merges fields into ForgeSocketProfile for the whole project; these tests use bare profiles.
function asProfile (value: object): Profile {
  return value as unknown as Profile
}

t.test('defaults', async (t) => {
  const options = resolveOptions()
  t.equal(options.maxPayload, 65536)
  t.same(options.heartbeat, { interval: 25000, timeout: 10000 })
  t.equal(options.sendBufferLimit, 1048576)
  t.equal(options.maxChannelsPerConnection, 128)
  t.equal(options.maxDepth, 32)
  t.equal(options.shutdownTimeout, 5000)
  t.same({ ...options.presence, announce: options.presence.announce('any') }, { announce: 'events', interval: 100, maxUsers: 1000 })
  t.same(options.connectionLimits, { perIp: 0, perUser: 0, ratePerIp: 0, ratePerUser: 0, burst: 20 })
  t.same(options.subscribeRate, { perSecond: 10, burst: 128 })
  t.same(options.auth.algorithms, ['HS256'])
  t.equal(options.auth.cookie, false)
  t.equal(options.auth.query, false)
  t.equal(options.origins, undefined)
  t.equal(options.jwt, undefined)
  t.ok(options.broker instanceof MemoryBroker, 'the memory broker')
  t.equal(await options.authorizeChannel(asProfile({ id: 'ann' }), 'anything'), false, 'client subscriptions are denied by default')

  t.ok(Object.isFrozen(options), 'the result is frozen')
  t.ok(Object.isFrozen(options.auth), 'auth is frozen')
  t.ok(Object.isFrozen(options.heartbeat), 'heartbeat is frozen')
  t.throws(() => { (options as { maxPayload: number }).maxPayload = 1 }, TypeError)

  t.equal(resolveOptions({}).maxPayload, 65536, 'an empty object gets the same defaults')
})

t.test('the default profile is the claims with id from sub', async (t) => {
  const { auth } = resolveOptions()
  t.same(await auth.profile({ sub: 'ann', role: 'admin' }), { sub: 'ann', role: 'admin', id: 'ann' })
  t.throws(() => auth.profile({ name: 'ann' }), { code: 'FST_SOCKET_TOKEN_INVALID' }, 'no sub')
  t.throws(() => auth.profile({ sub: '' }), { code: 'FST_SOCKET_TOKEN_INVALID' }, 'empty sub')
  t.throws(() => auth.profile({ sub: 42 }), { code: 'FST_SOCKET_TOKEN_INVALID' }, 'sub not a string')
})

t.test('given values are kept, copied and frozen; the input is left alone', async (t) => {
  const origins = ['https://a.example']
  const heartbeat = { interval: 1000, timeout: 500 }
  const broker = new MemoryBroker()
  const profile = (claims: Record<string, unknown>): Profile => asProfile({ id: String(claims.uid) })
  const authorizeChannel = (): boolean => true
  const input = {
    jwt: { secret: SECRET },
    auth: { algorithms: ['HS512', 'RS256'] as Array<'HS512' | 'RS256'>, cookie: 'token', query: true, profile },
    broker,
    maxPayload: 1024,
    heartbeat,
    sendBufferLimit: 4096,
    maxChannelsPerConnection: 2,
    maxDepth: 4,
    origins,
    shutdownTimeout: 0,
    presence: false,
    authorizeChannel
  }
  const options = resolveOptions(input)
  t.match(options, {
    jwt: { secret: SECRET },
    auth: { algorithms: ['HS512', 'RS256'], cookie: 'token', query: true },
    maxPayload: 1024,
    heartbeat: { interval: 1000, timeout: 500 },
    sendBufferLimit: 4096,
    maxChannelsPerConnection: 2,
    maxDepth: 4,
    origins: ['https://a.example'],
    shutdownTimeout: 0
  })
  t.equal(options.presence.announce('room-a'), 'none', 'presence: false announces nothing')
  t.equal(options.broker, broker, 'the broker instance itself')
  t.equal(options.auth.profile, profile)
  t.equal(options.authorizeChannel, authorizeChannel)
  t.ok(Object.isFrozen(options.origins), 'origins are frozen')
  t.notOk(Object.isFrozen(origins), 'the user\'s array is not')
  origins.push('https://b.example')
  heartbeat.interval = 5
  t.same(options.origins, ['https://a.example'], 'later changes to the input do not leak in')
  t.equal(options.heartbeat.interval, 1000)
  t.same(input.heartbeat, { interval: 5, timeout: 500 }, 'defaults were not written into the input')
})

t.test('invalid options are refused at register with FST_SOCKET_INVALID_OPTIONS naming the option', async (t) => {
  const jwt = { secret: SECRET }
  const cases: Array<[string, unknown, RegExp]> = [
    ['unknown key', { jwt, maxPayLoad: 1024 }, /\/maxPayLoad/],
    ['unknown key holding a function', { jwt, authorise: () => true }, /\/authorise/],
    ['unknown nested key', { jwt, heartbeat: { every: 10 } }, /\/heartbeat\/every/],
    ['negative maxPayload', { jwt, maxPayload: -1 }, /\/maxPayload must be >= 128/],
    ['fractional maxPayload', { jwt, maxPayload: 1000.5 }, /\/maxPayload must be integer/],
    ['maxPayload as a function', { jwt, maxPayload: () => 1 }, /\/maxPayload/],
    ['heartbeat.timeout equal to interval', { jwt, heartbeat: { interval: 100, timeout: 100 } }, /\/heartbeat\/timeout \(100\) must be shorter than \/heartbeat\/interval \(100\)/],
    ['heartbeat.timeout over interval', { jwt, heartbeat: { interval: 100, timeout: 200 } }, /\/heartbeat\/timeout/],
    ['heartbeat.interval too short', { jwt, heartbeat: { interval: 1, timeout: 1 } }, /\/heartbeat\/interval/],
    ['no algorithm', { jwt, auth: { algorithms: [] } }, /\/auth\/algorithms/],
    ['algorithm none', { jwt, auth: { algorithms: ['none'] } }, /\/auth\/algorithms\/0/],
    ['duplicate algorithms', { jwt, auth: { algorithms: ['HS256', 'HS256'] } }, /\/auth\/algorithms/],
    ['empty cookie name', { jwt, auth: { cookie: '' } }, /\/auth\/cookie/],
    ['query not a boolean', { jwt, auth: { query: 'yes' } }, /\/auth\/query/],
    ['empty secret', { jwt: { secret: '' } }, /\/jwt\/secret/],
    ['empty origins', { jwt, origins: [] }, /\/origins/],
    ['negative shutdownTimeout', { jwt, shutdownTimeout: -1 }, /\/shutdownTimeout/],
    ['maxDepth over 256', { jwt, maxDepth: 1000 }, /\/maxDepth/],
    ['presence not a boolean', { jwt, presence: 1 }, /\/presence/],
    ['presence.announce unknown', { jwt, presence: { announce: 'all' } }, /\/presence/],
    ['presence.interval negative', { jwt, presence: { interval: -1 } }, /\/presence/],
    ['presence unknown key', { jwt, presence: { every: 10 } }, /\/presence/],
    ['connectionLimits.ratePerIp negative', { jwt, connectionLimits: { ratePerIp: -1 } }, /\/connectionLimits\/ratePerIp/],
    ['connectionLimits.burst 0', { jwt, connectionLimits: { burst: 0 } }, /\/connectionLimits\/burst/],
    ['subscribeRate.perSecond 0', { jwt, subscribeRate: { perSecond: 0 } }, /\/subscribeRate\/perSecond/],
    ['broker redis-nonsense', { jwt, broker: 'redis-nonsense' }, /\/broker must be "memory", a redis:\/\/ URL/],
    ['broker null', { jwt, broker: null }, /\/broker/],
    ['broker object missing methods', { jwt, broker: { start () {}, publish () {} } }, /\/broker/],
    ['auth.profile not a function', { jwt, auth: { profile: 'sub' } }, /\/auth\/profile must be a function/],
    ['authorizeChannel not a function', { jwt, authorizeChannel: true }, /\/authorizeChannel must be a function/]
  ]
  for (const [name, options, message] of cases) {
    await t.rejects(register(t, options), { code: 'FST_SOCKET_INVALID_OPTIONS', message }, name)
  }
})

t.test('jwt.secret is required unless the app registered @fastify/jwt', async (t) => {
  await t.rejects(register(t, {}), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /\/jwt\/secret is required/ })

  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(fastifyJwt, { secret: 'the-app-own-secret-long-enough-for-hs256' })
  await app.register(forgeSocket)
  room(app)
  const base = await listen(app)
  const { connected } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }, { key: 'the-app-own-secret-long-enough-for-hs256' }))
  t.equal(connected.cmd, 'connected', 'tokens are verified with the app\'s own @fastify/jwt')
})

t.test('auth.cookie needs @fastify/cookie registered first', async (t) => {
  await t.rejects(register(t, { jwt: { secret: SECRET }, auth: { cookie: 'token' } }),
    { code: 'FST_SOCKET_INVALID_OPTIONS', message: /\/auth\/cookie needs @fastify\/cookie/ })

  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(fastifyCookie)
  await app.register(forgeSocket, { jwt: { secret: SECRET }, auth: { cookie: 'token' } })
  room(app)
  const base = await listen(app)
  const { connected } = await connect(`${base}/ws/a`, undefined, { headers: { cookie: `token=${sign({ sub: 'ann' })}` } })
  t.equal(connected.cmd, 'connected', 'the token is read from the cookie')
})

t.test('auth.query installs the URL stripper first and removes it on close', async (t) => {
  const { app, base } = await serve(t, { auth: { query: true } })
  t.equal(app.server.listeners('upgrade')[0], stripQueryToken, 'runs before @fastify/websocket')
  const { client, connected } = await connect(`${base}/ws/a?token=${sign({ sub: 'ann' })}`)
  t.equal(connected.cmd, 'connected')
  client.close()
  await client.closed
  await app.close()
  t.notOk(app.server.listeners('upgrade').includes(stripQueryToken), 'gone after close')
})

t.test('without auth.query, ?token= is not accepted', async (t) => {
  const { app, base } = await serve(t)
  // Installed anyway: a token in the URL is scrubbed before anything logs it, whatever the option says.
  t.ok(app.server.listeners('upgrade').includes(stripQueryToken))
  const { status, body } = await refused(`${base}/ws/a?token=${sign({ sub: 'ann' })}`)
  t.equal(status, 401)
  t.equal(body.code, 'FST_SOCKET_TOKEN_MISSING')
})

t.test('maxPayload is applied to the WebSocket server', async (t) => {
  const { base } = await serve(t, { maxPayload: 256 })
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  client.send({ channel: 'room-a', cmd: 'ping', param: 'x'.repeat(300) })
  t.equal((await client.closed).code, 1009)
})

t.test('presence: false sends no user-joined; the default does', async (t) => {
  // interval 0 sends each change at once, so the sentinel after bob's `connected` comes after his presence too.
  // (presence: false resolves to announce 'none': tested above.)
  for (const presence of [true, false]) {
    const { app, base } = await serve(t, { presence: { announce: presence ? 'events' : 'none', interval: 0 } })
    const { client: first } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
    const { client: second } = await connect(`${base}/ws/a`, sign({ sub: 'bob' }))
    app.socket.broadcast('room-a', { cmd: 'sentinel' })
    await first.next('sentinel')
    t.equal(first.messages.some((m) => m.cmd === 'user-joined'), presence, `presence ${String(presence)}`)
    first.close()
    second.close()
    await Promise.all([first.closed, second.closed])
  }
})

t.test('authorizeChannel decides client subscriptions', async (t) => {
  const asked: Array<[string | undefined, string]> = []
  const { base } = await serve(t, {
    authorizeChannel: (profile, channel) => { asked.push([profile?.id, channel]); return channel.startsWith('open-') }
  })
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  t.same((await client.request('open-1', 'subscribe', null)).param, { channel: 'open-1' })
  t.match((await client.request('closed-1', 'subscribe', null)).param, { code: 'FST_SOCKET_FORBIDDEN' })
  t.same(asked, [['ann', 'open-1'], ['ann', 'closed-1']])
  client.close()
  await client.closed
})
