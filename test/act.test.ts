import { once } from 'node:events'
import t from 'tap'
import Fastify, { type FastifyInstance } from 'fastify'
import forgeSocket, { badRequest, forbidden, type PageState, type Profile } from '../plugin.js'
import { SECRET, build, listen, sign, connect, refused, Client } from './helpers/server.js'

const token = sign({ sub: 'ann' })
const auth = { headers: { authorization: `Bearer ${token}` } }

// examples/app.ts merges fields into ForgeSocketProfile for the whole project; these tests build bare profiles.
function asProfile (value: object): Profile {
  return value as unknown as Profile
}

/** A promise with its resolve function outside, to hold a hook until the test lets it go. */
function gate<T = void> (): { promise: Promise<T>, open: (value: T) => void } {
  let open: (value: T) => void = () => {}
  const promise = new Promise<T>((resolve) => { open = resolve })
  return { promise, open }
}

/** Connects, reads the connection's info from the server, and closes. */
async function infoOf (app: FastifyInstance, url: string): Promise<ReturnType<FastifyInstance['socket']['connections']>[number] | undefined> {
  const { client, connected } = await connect(url, token)
  const id = (connected.param as { connectionId: string }).connectionId
  const info = app.socket.connections().find((c) => c.id === id)
  client.close()
  await client.closed
  return info
}

t.test('act routes before the upgrade', async (t) => {
  const app = await build({}, (app) => {
    app.get('/ws/room/:room', app.socket.act('room', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`, { room: ps.requestString('room') })))
    app.get('/ws/query', app.socket.act('query', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`)))
    app.get('/ws/both/:room', app.socket.act('both', (app, ps) => ps.upgrade('both', { room: ps.requestString('room', true) })))
    app.get('/ws/optional', app.socket.act('optional', (app, ps) => ps.upgrade('optional', { x: ps.requestString('x') ?? 'absent' })))
    app.get('/ws/forbidden', app.socket.act('forbidden', () => { throw forbidden('not in this room') }))
    app.get('/ws/forbidden-default', app.socket.act('forbidden-default', async () => { throw forbidden() }))
    app.get('/ws/bad', app.socket.act('bad', () => { throw badRequest('room is closed') }))
    app.get('/ws/none', app.socket.act('none', () => undefined))
    app.get('/ws/async', app.socket.act('async', async (app, ps) => {
      await new Promise<void>((resolve) => setImmediate(resolve))
      return ps.upgrade('async-room', { async: true })
    }))
    app.get('/ws/bad-channel', app.socket.act('bad-channel', (app, ps) => ps.upgrade('no spaces allowed!')))
    app.get('/ws/empty-channel', app.socket.act('empty-channel', (app, ps) => ps.upgrade('')))
  })
  t.after(() => app.close())
  const base = await listen(app)

  t.test('requestString: the path parameter', async (t) => {
    const info = await infoOf(app, `${base}/ws/room/lobby`)
    t.same(info?.channels, ['room-lobby'])
    t.same(info?.metadata, { room: 'lobby' })
  })

  t.test('requestString: the query when there is no path parameter', async (t) => {
    const info = await infoOf(app, `${base}/ws/query?room=kitchen`)
    t.same(info?.channels, ['room-kitchen'])
  })

  t.test('requestString: the path parameter wins over the query', async (t) => {
    const info = await infoOf(app, `${base}/ws/both/path?room=query`)
    t.same(info?.metadata, { room: 'path' })
  })

  t.test('requestString: missing and required → 400 FST_SOCKET_MISSING_PARAMETER', async (t) => {
    const missing = await refused(`${base}/ws/query`, auth)
    t.equal(missing.status, 400)
    t.equal(missing.body.code, 'FST_SOCKET_MISSING_PARAMETER')
    t.equal(missing.body.message, 'Missing required parameter "room"')
    const empty = await refused(`${base}/ws/query?room=`, auth)
    t.equal(empty.body.code, 'FST_SOCKET_MISSING_PARAMETER', 'an empty value counts as missing')
  })

  t.test('requestString: missing and not required → undefined', async (t) => {
    t.same((await infoOf(app, `${base}/ws/optional`))?.metadata, { x: 'absent' })
    t.same((await infoOf(app, `${base}/ws/optional?x=1`))?.metadata, { x: '1' })
    t.same((await infoOf(app, `${base}/ws/optional?x=1&x=2`))?.metadata, { x: 'absent' }, 'a repeated parameter is not a string')
  })

  t.test('a handler that throws forbidden() → 403 FST_SOCKET_FORBIDDEN', async (t) => {
    const result = await refused(`${base}/ws/forbidden`, auth)
    t.equal(result.status, 403)
    t.equal(result.body.code, 'FST_SOCKET_FORBIDDEN')
    t.equal(result.body.message, 'Forbidden: not in this room')
    const fallback = await refused(`${base}/ws/forbidden-default`, auth)
    t.equal(fallback.status, 403)
    t.equal(fallback.body.message, 'Forbidden: access denied')
  })

  t.test('a handler that throws badRequest() → 400 FST_SOCKET_BAD_REQUEST', async (t) => {
    const result = await refused(`${base}/ws/bad`, auth)
    t.equal(result.status, 400)
    t.equal(result.body.code, 'FST_SOCKET_BAD_REQUEST')
    t.equal(result.body.message, 'Bad request: room is closed')
  })

  t.test('a handler that returns without upgrading → 403 FST_SOCKET_NOT_UPGRADED', async (t) => {
    const result = await refused(`${base}/ws/none`, auth)
    t.equal(result.status, 403)
    t.equal(result.body.code, 'FST_SOCKET_NOT_UPGRADED')
    t.match(result.body.message, /"none"/)
  })

  t.test('an async handler works', async (t) => {
    const info = await infoOf(app, `${base}/ws/async`)
    t.same(info?.channels, ['async-room'])
    t.same(info?.metadata, { async: true })
  })

  t.test('an invalid channel name in ps.upgrade → 400 FST_SOCKET_INVALID_CHANNEL', async (t) => {
    for (const route of ['bad-channel', 'empty-channel']) {
      const result = await refused(`${base}/ws/${route}`, auth)
      t.equal(result.status, 400, route)
      t.equal(result.body.code, 'FST_SOCKET_INVALID_CHANNEL', route)
    }
  })

  t.test('the auth check runs before the handler', async (t) => {
    const result = await refused(`${base}/ws/room/lobby`)
    t.equal(result.status, 401)
    t.equal(result.body.code, 'FST_SOCKET_TOKEN_MISSING')
  })

  t.test('a plain HTTP GET (no upgrade) → 426 FST_SOCKET_UPGRADE_REQUIRED', async (t) => {
    const res = await app.inject({ method: 'GET', url: '/ws/room/lobby', headers: auth.headers })
    t.equal(res.statusCode, 426)
    t.equal(res.json().code, 'FST_SOCKET_UPGRADE_REQUIRED')
    const anonymous = await app.inject({ method: 'GET', url: '/ws/room/lobby' })
    t.equal(anonymous.statusCode, 426, 'before auth too')
  })
})

t.test('act needs a handler function', async (t) => {
  const app = await build()
  t.after(() => app.close())
  t.throws(() => app.socket.act('nothing', 'nope' as unknown as () => undefined), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /"nothing"/ })
})

t.test('app.socket.upgrade in async handlers after awaits, while other act handlers start and finish meanwhile', async (t) => {
  // Each async handler finds its own page state after its awaits, whatever runs in between.
  const waiting = new Map<string, { started: ReturnType<typeof gate<void>>, go: ReturnType<typeof gate<void>> }>()
  for (const room of ['a', 'b']) waiting.set(room, { started: gate<void>(), go: gate<void>() })
  const app = await build({}, (app) => {
    app.get('/ws/slow/:room', app.socket.act('slow', async (app, ps) => {
      const room = ps.requestString('room', true)
      const w = waiting.get(room)
      w?.started.open()
      await w?.go.promise
      await new Promise((resolve) => setImmediate(resolve))
      return app.socket.upgrade(`slow-${room}`)
    }))
    app.get('/ws/quick', app.socket.act('quick', (app) => app.socket.upgrade('quick')))
    // A plain function that returns a promise: its page state is known in its synchronous part only.
    app.get('/ws/then', app.socket.act('then', (app) => Promise.resolve().then(() => app.socket.upgrade('then'))))
    app.get('/ws/then-ps', app.socket.act('then-ps', (app, ps) => Promise.resolve().then(() => ps.upgrade('then-ps'))))
  })
  t.after(() => app.close())
  const base = await listen(app)
  const a = connect(`${base}/ws/slow/a`, token)
  const b = connect(`${base}/ws/slow/b`, token)
  await Promise.all([waiting.get('a')?.started.promise, waiting.get('b')?.started.promise])
  const quick = await connect(`${base}/ws/quick`, token)
  t.match(quick.connected.param, { channels: ['quick'] }, 'a quick handler finishes while two await')
  waiting.get('a')?.go.open()
  const first = await a
  t.match(first.connected.param, { channels: ['slow-a'] }, 'the first awaiting handler still finds its page state')
  t.throws(() => app.socket.upgrade('x'), { code: 'FST_SOCKET_OUTSIDE_ACT' }, 'outside a handler, none is found, though one still awaits')
  waiting.get('b')?.go.open()
  const second = await b
  t.match(second.connected.param, { channels: ['slow-b'] }, 'and so does the second, after the first finished')
  t.throws(() => app.socket.upgrade('x'), { code: 'FST_SOCKET_OUTSIDE_ACT' }, 'and none once all have finished')
  const then = await refused(`${base}/ws/then`, auth)
  t.equal(then.status, 500)
  t.match(then.body, { code: 'FST_SOCKET_OUTSIDE_ACT', message: /after an await, only in an async function: ps\.upgrade works in any/ }, 'app.socket.upgrade after an await in a plain function is refused, saying why')
  const thenPs = await connect(`${base}/ws/then-ps`, token)
  t.match(thenPs.connected.param, { channels: ['then-ps'] }, 'ps.upgrade works there')
  for (const c of [quick, first, second, thenPs]) c.client.close()
})

t.test('upgrade variants and the page state', async (t) => {
  const seen: PageState[] = []
  const app = await build({}, (app) => {
    app.get('/ws/app-upgrade', app.socket.act('app-upgrade', (app, ps) => app.socket.upgrade(`user-${ps.profile?.id ?? ''}`, ps.profile, ps.logger)))
    app.get('/ws/app-upgrade-default', app.socket.act('app-upgrade-default', (app) => app.socket.upgrade('defaults')))
    app.get('/ws/app-upgrade-as', app.socket.act('app-upgrade-as', (app, ps) => app.socket.upgrade('as-other', asProfile({ id: 'other' }), ps.logger.child({ custom: true }))))
    app.get('/ws/app-meta', app.socket.act('app-meta', async (app, ps) => {
      await Promise.resolve()
      return app.socket.upgradeWithMetadata('with-meta', ps.profile, { page: 'home', n: 1 })
    }))
    app.get('/ws/ps-meta', app.socket.act('ps-meta', (app, ps) => {
      seen.push(ps)
      return ps.upgradeWithMetadata('ps-meta', { sub: ps.claims?.sub, role: ps.claims?.role })
    }))
  })
  t.after(() => app.close())
  const base = await listen(app)

  t.test('app.socket.upgrade(channel, profile, logger) inside an act handler', async (t) => {
    const info = await infoOf(app, `${base}/ws/app-upgrade`)
    t.same(info?.channels, ['user-ann'])
    t.equal(info?.profileId, 'ann')
    t.same(info?.metadata, {})
  })

  t.test('app.socket.upgrade(channel) keeps the page state\'s profile', async (t) => {
    const info = await infoOf(app, `${base}/ws/app-upgrade-default`)
    t.same(info?.channels, ['defaults'])
    t.equal(info?.profileId, 'ann')
  })

  t.test('the profile given to app.socket.upgrade is the connection\'s profile', async (t) => {
    const info = await infoOf(app, `${base}/ws/app-upgrade-as`)
    t.equal(info?.profileId, 'other')
  })

  t.test('app.socket.upgradeWithMetadata(channel, profile, metadata), after an await', async (t) => {
    const info = await infoOf(app, `${base}/ws/app-meta`)
    t.same(info?.channels, ['with-meta'])
    t.same(info?.metadata, { page: 'home', n: 1 })
  })

  t.test('ps.upgradeWithMetadata, ps.claims, ps.logger, ps.request', async (t) => {
    const roleToken = sign({ sub: 'ann', role: 'admin' })
    const { client } = await connect(`${base}/ws/ps-meta`, roleToken)
    t.same(app.socket.connections()[0]?.metadata, { sub: 'ann', role: 'admin' })
    const [ps] = seen
    t.equal(ps?.act, 'ps-meta')
    t.match(ps?.claims, { sub: 'ann', role: 'admin' })
    t.equal(typeof ps?.claims?.iat, 'number')
    t.equal(ps?.profile?.id, 'ann')
    t.equal(typeof ps?.logger.info, 'function')
    t.equal(typeof ps?.logger.child, 'function')
    t.equal(ps?.request.url, '/ws/ps-meta')
    client.close()
    await client.closed
  })

  t.test('app.socket.upgrade outside an act handler → FST_SOCKET_OUTSIDE_ACT', async (t) => {
    t.throws(() => app.socket.upgrade('x'), { code: 'FST_SOCKET_OUTSIDE_ACT', message: /app\.socket\.upgrade can only/ })
    t.throws(() => app.socket.upgradeWithMetadata('x', null, {}), { code: 'FST_SOCKET_OUTSIDE_ACT', message: /app\.socket\.upgradeWithMetadata/ })
    // Nor from a later tick of a connection that was already upgraded.
    const hook = gate<unknown>()
    app.socket.onOpen(() => {
      try {
        app.socket.upgrade('y')
        hook.open(null)
      } catch (err) {
        hook.open(err)
      }
    })
    const { client } = await connect(`${base}/ws/app-upgrade-default`, token)
    t.match(await hook.promise, { code: 'FST_SOCKET_OUTSIDE_ACT' })
    client.close()
    await client.closed
  })
})

t.test('messages sent before the connection is ready are handled in order, after onOpen', async (t) => {
  const events: string[] = []
  const hookEntered = gate()
  const hookRelease = gate()
  const app = await build({}, (app) => {
    app.get('/ws/room', app.socket.act('room', (app, ps) => ps.upgrade('room')))
    app.socket.onOpen(async () => {
      events.push('hook start')
      hookEntered.open()
      await hookRelease.promise
      events.push('hook end')
    })
    app.socket.command('note', { handler: (param) => { events.push(`note ${String(param)}`); return param } })
  })
  t.after(() => app.close())
  const base = await listen(app)

  const client = new Client(`${base}/ws/room`, auth)
  const send = (n: number): void => client.send({ channel: 'room', cmd: 'note', param: n, ref: `r${n}` })
  // At 'open', the client has not even received `connected` yet.
  client.ws.once('open', () => { send(1); send(2) })
  await client.next('connected')
  await hookEntered.promise
  send(3)
  send(4)
  // A ping is answered by the server's ws after the frames before it were read: 3 and 4 are now waiting too.
  client.ws.ping()
  await once(client.ws, 'pong')
  t.same(events, ['hook start'], 'nothing is handled while the onOpen hook runs')
  hookRelease.open()

  const replies = await Promise.all([1, 2, 3, 4].map(async (n) => await client.next((m) => m.ref === `r${n}`)))
  t.same(replies.map((m) => [m.cmd, m.param]), [['reply', 1], ['reply', 2], ['reply', 3], ['reply', 4]])
  t.same(events, ['hook start', 'hook end', 'note 1', 'note 2', 'note 3', 'note 4'], 'handled after the hook, in order')
  const afterwards = await client.request('room', 'note', 5)
  t.same(afterwards.param, 5, 'messages after the hook are handled directly')
  t.equal(app.socket.connections()[0]?.messagesIn, 5)
  client.close()
  await client.closed
})

t.test('too many frames before the connection is ready → 1008, and none of them is handled (frames past the limit were dispatched at once)', async (t) => {
  const handled: unknown[] = []
  const release = gate()
  const app = await build({}, (app) => {
    app.get('/ws/room', app.socket.act('room', (app, ps) => ps.upgrade('room')))
    app.socket.onOpen(async () => { await release.promise })
    app.socket.command('note', { handler: (param) => { handled.push(param) } })
  })
  t.after(() => app.close())
  const base = await listen(app)
  const client = new Client(`${base}/ws/room`, auth)
  client.ws.once('open', () => {
    for (let i = 0; i < 300; i++) client.send({ channel: 'room', cmd: 'note', param: i })
  })
  const closed = await client.closed
  t.equal(closed.code, 1008)
  t.equal(closed.reason, 'too many frames before open')
  // The hook finishing later does not run the frames of a connection that is gone. Its continuation is
  // promise-only, so one macrotask later it has run.
  release.open()
  await new Promise((resolve) => setImmediate(resolve))
  t.same(handled, [], 'no frame is handled: neither the queued ones nor those that overflowed the queue')
})

t.test('an onOpen hook that throws → close 1011', async (t) => {
  const app = await build({}, (app) => {
    app.get('/ws/room', app.socket.act('room', (app, ps) => ps.upgrade('room')))
    app.socket.onOpen(() => { throw new Error('setup failed') })
  })
  t.after(() => app.close())
  const base = await listen(app)
  const client = new Client(`${base}/ws/room`, auth)
  const connected = await client.next('connected')
  t.equal(connected.cmd, 'connected')
  t.same(await client.closed, { code: 1011, reason: 'internal error' })
})

t.test('origin allow-list', async (t) => {
  const app = await build({ origins: ['https://app.example'] }, (app) => {
    app.get('/ws/room', app.socket.act('room', (app, ps) => ps.upgrade('room')))
  })
  t.after(() => app.close())
  const base = await listen(app)
  const url = `${base}/ws/room`

  t.test('an exact match is accepted', async (t) => {
    const { client, connected } = await connect(url, token, { origin: 'https://app.example' })
    t.equal(connected.cmd, 'connected')
    client.close()
    await client.closed
  })

  t.test('no Origin header (not a browser) is accepted', async (t) => {
    const { client, connected } = await connect(url, token)
    t.equal(connected.cmd, 'connected')
    client.close()
    await client.closed
  })

  t.test('any other origin → 403 FST_SOCKET_ORIGIN_FORBIDDEN', async (t) => {
    for (const origin of ['https://evil.example', 'https://app.example.evil.com', 'http://app.example', 'https://app.example:8443', 'https://APP.example', 'null']) {
      const result = await refused(url, { ...auth, origin })
      t.equal(result.status, 403, origin)
      t.equal(result.body.code, 'FST_SOCKET_ORIGIN_FORBIDDEN', origin)
    }
  })

  t.test('the origin is checked before the token', async (t) => {
    const result = await refused(url, { origin: 'https://evil.example' })
    t.equal(result.body.code, 'FST_SOCKET_ORIGIN_FORBIDDEN')
  })
})

t.test('while the app is closing, a new upgrade is refused with 503 FST_SOCKET_SHUTTING_DOWN', async (t) => {
  const reached = gate()
  const release = gate()
  const app = await build({}, (app) => {
    app.get('/ws/room', app.socket.act('room', (app, ps) => ps.upgrade('room')))
    // Holds the upgrade request after Fastify routed it, until forge-socket's preClose has run.
    app.addHook('onRequest', async () => {
      reached.open()
      await release.promise
    })
    // Runs after forge-socket's own preClose (hooks run in the order they were added).
    app.addHook('preClose', async () => {
      t.equal(app.socket.status().closing, true, 'forge-socket\'s preClose ran first')
      release.open()
    })
  })
  const base = await listen(app)
  const attempt = refused(`${base}/ws/room`, auth)
  await reached.promise
  const closing = app.close()
  const result = await attempt
  t.equal(result.status, 503)
  t.equal(result.body.code, 'FST_SOCKET_SHUTTING_DOWN')
  await closing
})

t.test('an upgrade to a path with no route, or with a plain HTTP route, is a plain 404 before the upgrade: no socket opens', async (t) => {
  let opened = 0
  const app = await build({}, (app) => {
    app.get('/ws/a', app.socket.act('a', (app, ps) => ps.upgrade('a')))
    app.get('/page', async () => ({ page: true }))
    app.get('/raw', { websocket: true }, (socket) => { socket.close(1000) })
    app.socket.onOpen(() => { opened++ })
  })
  t.after(() => app.close())
  const base = await listen(app)
  const missing = await refused(`${base}/ws/nowhere?x=1`, auth)
  t.equal(missing.status, 404)
  t.match(missing.body, { code: 'FST_SOCKET_NO_ROUTE', message: 'No WebSocket route at GET:/ws/nowhere' })
  const plain = await fetch(`${base.replace('ws', 'http')}/ws/nowhere`)
  t.equal(plain.status, 404, 'a plain request to the same path is still Fastify\'s own 404')
  t.not((await plain.json() as { code?: string }).code, 'FST_SOCKET_NO_ROUTE')
  const page = await refused(`${base}/page`, auth)
  t.same([page.status, page.body.code], [404, 'FST_SOCKET_NO_ROUTE'], 'an upgrade to a plain HTTP route is refused the same way')
  t.equal((await fetch(`${base.replace('ws', 'http')}/page`)).status, 200, 'which still answers plain requests')
  const raw = new Client(`${base}/raw`)
  t.same(await raw.closed, { code: 1000, reason: '' }, 'an @fastify/websocket route of the app\'s own still upgrades')
  t.equal(opened, 0)
  t.equal(app.socket.status().connections, 0)
})

t.test("a connection's ip: its socket's, read when asked; X-Forwarded-For only with Fastify's trustProxy", async (t) => {
  for (const trustProxy of [false, true]) {
    const app = Fastify({ logger: false, trustProxy })
    t.after(() => app.close())
    await app.register(forgeSocket, { jwt: { secret: SECRET } })
    app.get('/ws/a', app.socket.act('a', (app, ps) => ps.upgrade('room-a')))
    const url = `${await listen(app)}/ws/a`
    const { client: direct } = await connect(url, sign({ sub: 'ann' }))
    const { client: proxied } = await connect(url, sign({ sub: 'bob' }), { headers: { 'x-forwarded-for': '203.0.113.7' } })
    const ips = Object.fromEntries(app.socket.connections().map((c) => [c.profileId, c.ip]))
    t.same(ips, { ann: '127.0.0.1', bob: trustProxy ? '203.0.113.7' : '127.0.0.1' }, `trustProxy ${String(trustProxy)}`)
    for (const client of [direct, proxied]) {
      client.close()
      await client.closed
    }
  }
})
