// Issue 12, parts 3 and 4: token refusals on the app's own routes, upgrades to /admin paths, ping floods, fragment
// hoarding, `?token=` in the log, slow upgrade requests. Raw sockets where a WebSocket client would hide what the
// server sent (or would not send what a hostile one does).
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { connect as tcpConnect, type AddressInfo, type Socket } from 'node:net'
import Fastify, { type FastifyInstance } from 'fastify'
import { createHmac } from 'node:crypto'
import { createSigner } from 'fast-jwt'
import forgeSocket, { type ForgeSocketOptions, type OutboundMessage } from '../plugin.js'
import { buildDemo } from '../examples/app.js'
import { build, connect, listen, refused, room, serve, sign, SECRET } from './helpers/server.js'
import { LogSink } from './helpers/logs.js'

function portOf (app: FastifyInstance): number {
  return (app.server.address() as AddressInfo).port
}

/** A frame as a client sends it: masked, `fin` unless told otherwise. */
function clientFrame (opcode: number, payload: Buffer = Buffer.alloc(0), fin = true): Buffer {
  const mask = Buffer.from([0x12, 0x34, 0x56, 0x78])
  const first = (fin ? 0x80 : 0) | opcode
  const length = payload.length
  let header: Buffer
  if (length < 126) {
    header = Buffer.from([first, 0x80 | length])
  } else if (length < 65536) {
    header = Buffer.from([first, 0x80 | 126, 0, 0])
    header.writeUInt16BE(length, 2)
  } else {
    header = Buffer.from([first, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0, 0])
    header.writeUInt32BE(length, 6)
  }
  return Buffer.concat([header, mask, Buffer.from(payload.map((byte, i) => byte ^ (mask[i % 4] as number)))])
}

const TEXT = 0x1
const CONTINUATION = 0x0
const CLOSE = 0x8
const PING = 0x9
const PONG = 0xa

/** The frames a server sent, in order (unmasked, as servers send them); a frame cut short at the end is left out. */
function serverFrames (data: Buffer): Array<{ opcode: number, payload: Buffer }> {
  const frames: Array<{ opcode: number, payload: Buffer }> = []
  let at = 0
  while (at + 2 <= data.length) {
    let length = (data[at + 1] as number) & 0x7f
    let start = at + 2
    if (length === 126) {
      length = data.readUInt16BE(start)
      start += 2
    } else if (length === 127) {
      length = Number(data.readBigUInt64BE(start))
      start += 8
    }
    if (start + length > data.length) break
    frames.push({ opcode: (data[at] as number) & 0x0f, payload: data.subarray(start, start + length) })
    at = start + length
  }
  return frames
}

/**
 * A WebSocket client over a bare TCP socket: the upgrade written by hand, frames written as the test makes them,
 * and everything the server sends kept (`received`). `closed` resolves when the TCP connection ends.
 */
class RawClient {
  readonly socket: Socket
  readonly closed: Promise<void>
  #data: Buffer[] = []

  private constructor (socket: Socket) {
    this.socket = socket
    this.closed = once(socket, 'close').then(() => {})
    socket.on('data', (chunk: Buffer) => this.#data.push(chunk))
    socket.on('error', () => {})
  }

  /** Opens a TCP connection and writes `request` as it is. */
  static async open (port: number, request: string): Promise<RawClient> {
    const socket = tcpConnect(port, '127.0.0.1')
    await once(socket, 'connect')
    socket.setNoDelay(true)
    const client = new RawClient(socket)
    socket.write(request)
    return client
  }

  /** Sends an upgrade request for `path` and waits for the end of the answer's headers. */
  static async upgrade (port: number, path: string, headers: Record<string, string> = {}): Promise<{ client: RawClient, status: number, body: string }> {
    const lines = [
      `GET ${path} HTTP/1.1`, 'Host: 127.0.0.1', 'Upgrade: websocket', 'Connection: Upgrade',
      'Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==', 'Sec-WebSocket-Version: 13',
      ...Object.entries(headers).map(([name, value]) => `${name}: ${value}`)
    ]
    const client = await RawClient.open(port, `${lines.join('\r\n')}\r\n\r\n`)
    const head = await client.#headers()
    return { client, status: Number(/^HTTP\/1\.1 (\d{3})/.exec(head)?.[1]), body: client.#rest(head).toString() }
  }

  /** Everything received so far. */
  get received (): Buffer {
    return Buffer.concat(this.#data)
  }

  /** The frames received so far, after the upgrade's answer. */
  frames (): Array<{ opcode: number, payload: Buffer }> {
    const data = this.received
    return serverFrames(data.subarray(data.indexOf('\r\n\r\n') + 4))
  }

  /**
   * The close frame's code and reason. Fails fast: it rejects if the TCP connection ended without one (a peer would
   * see 1006), or if the server answers a ping sent after everything else (the connection is still open).
   */
  async closeFrame (): Promise<{ code: number, reason: string }> {
    const probe = (f: { opcode: number, payload: Buffer }): boolean => f.opcode === PONG && f.payload.toString() === 'probe'
    if (!this.socket.destroyed) this.socket.write(clientFrame(PING, Buffer.from('probe')))
    await Promise.race([this.closed, this.#until(() => this.frames().some((f) => f.opcode === CLOSE || probe(f)))])
    const frames = this.frames()
    const close = frames.find((f) => f.opcode === CLOSE)
    if (close === undefined) {
      throw new Error(frames.some(probe) ? 'the connection is still open' : 'the connection ended without a close frame (1006)')
    }
    return { code: close.payload.readUInt16BE(0), reason: close.payload.subarray(2).toString() }
  }

  /** Waits for the first text frame that `match`es (parsed as JSON); rejects if the connection ends first. */
  async message (match: (m: OutboundMessage) => boolean): Promise<OutboundMessage> {
    const find = (): OutboundMessage | undefined => this.frames().filter((f) => f.opcode === TEXT)
      .map((f) => JSON.parse(f.payload.toString()) as OutboundMessage).find(match)
    await Promise.race([
      this.#until(() => find() !== undefined),
      this.closed.then(() => { if (find() === undefined) throw new Error(`the connection ended: ${JSON.stringify(this.frames().map((f) => f.opcode))}`) })
    ])
    return find() as OutboundMessage
  }

  destroy (): void {
    this.socket.destroy()
  }

  async #headers (): Promise<string> {
    await Promise.race([this.#until(() => this.received.includes('\r\n\r\n')), this.closed])
    const data = this.received
    return data.subarray(0, data.indexOf('\r\n\r\n') + 4).toString()
  }

  #rest (head: string): Buffer {
    return this.received.subarray(Buffer.byteLength(head))
  }

  /** Resolves once `done()` holds, checked on every chunk that arrives. */
  async #until (done: () => boolean): Promise<void> {
    while (!done()) await once(this.socket, 'data')
  }
}

/** A valid upgrade for `sub` on a forge-socket server. */
async function rawConnect (port: number, sub: string, path = '/ws/a'): Promise<RawClient> {
  const { client, status } = await RawClient.upgrade(port, path, { authorization: `Bearer ${sign({ sub })}` })
  if (status !== 101) throw new Error(`the upgrade was refused with ${status}`)
  await client.message((m) => m.cmd === 'connected')
  return client
}

/** A `ping` command, padded with spaces to `size` bytes of JSON, so it can be cut into that many fragments. */
function pingCommand (ref: string, size: number): Buffer {
  const text = JSON.stringify({ channel: 'room-a', cmd: 'ping', param: null, ref })
  return Buffer.from(text.padEnd(size, ' '))
}

/** One text message cut into `count` fragments (the last one carries FIN unless `unfinished`). */
function fragmented (payload: Buffer, count: number, unfinished = false): Buffer {
  const size = Math.ceil(payload.length / count)
  const frames: Buffer[] = []
  for (let i = 0; i < count; i++) {
    const last = i === count - 1
    frames.push(clientFrame(i === 0 ? TEXT : CONTINUATION, payload.subarray(i * size, last ? payload.length : (i + 1) * size), last && !unfinished))
  }
  return Buffer.concat(frames)
}

const tick = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms))

// ---------------------------------------------------------------------------------------------------------------
// 1. Token refusals on the app's own routes

t.test('token refusals that answered 500: the demo\'s HTTP API answers every bad token with 401 and logs no error', async (t) => {
  const secret = 'demo-test-secret'
  const sink = new LogSink()
  const app = await buildDemo({ secret, logger: { level: 'info', stream: sink.stream } })
  t.after(() => app.close())
  await app.ready()

  const claims = { sub: 'ann', rooms: ['lobby'] }
  const now = Math.floor(Date.now() / 1000)
  const signed = (algorithm: 'HS256' | 'HS384' | 'HS512', payload: Record<string, unknown> = claims): string =>
    createSigner({ key: secret, algorithm })(payload)
  const part = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  // Signed by hand: fast-jwt's signer refuses to make these.
  const forged = (payload: unknown, header: Record<string, unknown> = {}): string => {
    const input = `${part({ alg: 'HS256', typ: 'JWT', ...header })}.${part(payload)}`
    return `${input}.${createHmac('sha256', secret).update(input).digest('base64url')}`
  }
  const valid = signed('HS256')
  const tokens: Record<string, string> = {
    'HS384 with the right secret': signed('HS384'),
    'HS512 with the right secret': signed('HS512'),
    'alg none': `${part({ alg: 'none', typ: 'JWT' })}.${part(claims)}.`,
    expired: signed('HS256', { ...claims, iat: now - 7200, exp: now - 3600 }),
    'bad signature': `${valid.slice(0, valid.lastIndexOf('.') + 1)}${'A'.repeat(43)}`,
    'another secret': createSigner({ key: 'some-other-secret', algorithm: 'HS256' })(claims),
    garbage: 'not-a-token',
    'three garbage parts': 'a.b.c',
    // fast-jwt refusals @fastify/jwt 10 passes on without a status, as the algorithm's was:
    'not active yet (nbf)': signed('HS256', { ...claims, nbf: now + 3600 }),
    'exp of the wrong type': forged({ ...claims, exp: 'tomorrow' }),
    'a payload that is no object': forged([1, 2]),
    'a crit header': forged(claims, { crit: ['exp'] })
  }
  const routes = [
    { url: '/api/notify', payload: { title: 'Hi', message: 'there' } },
    { url: '/api/system', payload: { message: 'maintenance' } }
  ]
  for (const { url, payload } of routes) {
    const ok = await app.inject({ method: 'POST', url, headers: { authorization: `Bearer ${valid}` }, payload })
    t.equal(ok.statusCode, 200, `${url}: a valid token is accepted`)
    for (const [name, token] of Object.entries(tokens)) {
      const res = await app.inject({ method: 'POST', url, headers: { authorization: `Bearer ${token}` }, payload })
      t.equal(res.statusCode, 401, `${url}, ${name}: 401 (${res.json().code as string})`)
    }
  }
  const hs512 = await app.inject({ method: 'POST', url: '/api/notify', headers: { authorization: `Bearer ${tokens['HS512 with the right secret'] as string}` }, payload: routes[0]?.payload })
  t.match(hs512.json(), { statusCode: 401, code: 'FAST_JWT_INVALID_ALGORITHM', error: 'Unauthorized' }, 'the refusal keeps fast-jwt\'s code')
  t.same(sink.lines.filter((line) => line.level >= 50).map((line) => line.msg), [], 'no line at error level (or above)')
})

t.test('token refusals that answered 500: forge-socket\'s own upgrades still answer 401 FST_SOCKET_TOKEN_INVALID', async (t) => {
  const { base } = await serve(t)
  for (const algorithm of ['HS384', 'HS512']) {
    const result = await refused(`${base}/ws/a`, { headers: { authorization: `Bearer ${sign({ sub: 'ann' }, { algorithm })}` } })
    t.equal(result.status, 401, algorithm)
    t.match(result.body, { code: 'FST_SOCKET_TOKEN_INVALID', message: 'Authorization token is invalid: algorithm not allowed' }, algorithm)
  }
})

t.test('token refusals that answered 500: an app that registered @fastify/jwt itself keeps its own error handling', async (t) => {
  const { default: fastifyJwt } = await import('@fastify/jwt')
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(fastifyJwt, { secret: SECRET, verify: { algorithms: ['HS256'] } })
  await app.register(forgeSocket, {})
  app.get('/api/me', { onRequest: async (request) => { await request.jwtVerify() } }, async () => ({ ok: true }))
  const res = await app.inject({ url: '/api/me', headers: { authorization: `Bearer ${sign({ sub: 'ann' }, { algorithm: 'HS512' })}` } })
  t.equal(res.statusCode, 500, 'forge-socket adds no hook to an @fastify/jwt it did not register')
})

t.test('token refusals that answered 500: the app\'s own signing bugs, with the same fast-jwt codes, stay 500', async (t) => {
  const app = Fastify({ logger: false })
  t.after(() => app.close())
  await app.register(forgeSocket, { jwt: { secret: SECRET } })
  // fast-jwt's signer throws FAST_JWT_INVALID_TYPE for a payload that is no object: a server bug, not a bad token.
  app.get('/api/token', async () => ({ token: app.jwt.sign('not an object' as unknown as object) }))
  const res = await app.inject({ url: '/api/token' })
  t.equal(res.statusCode, 500)
  t.equal(res.json().code, 'FAST_JWT_INVALID_TYPE')
})

t.test('token refusals that answered 500: jwt.verify.algorithms is refused at register, whatever it says', async (t) => {
  for (const algorithms of [['HS512'], ['HS256']]) {
    const app = Fastify({ logger: false })
    await t.rejects(async () => { await app.register(forgeSocket, { jwt: { secret: SECRET, verify: { algorithms } } } as unknown as ForgeSocketOptions) }, {
      code: 'FST_SOCKET_INVALID_OPTIONS',
      message: 'Invalid forge-socket options: /jwt/verify/algorithms is forge-socket\'s: use /auth/algorithms'
    }, String(algorithms))
    await app.close()
  }
})

// ---------------------------------------------------------------------------------------------------------------
// 2. Upgrades to /admin paths

const ADMIN_PATHS = ['/admin', '/admin/', '/admin/x', '/admin/../ws', '/admin/../ws/notifications', '/admin/%2e%2e/ws/notifications']

async function assertNoRoute (t: Test, port: number, token: string): Promise<void> {
  for (const path of ADMIN_PATHS) {
    const { client, status, body } = await RawClient.upgrade(port, path, { authorization: `Bearer ${token}` })
    t.equal(status, 404, `${path}: 404 before the upgrade`)
    t.match(JSON.parse(body || '{}'), { code: 'FST_SOCKET_NO_ROUTE', message: `No WebSocket route at GET:${path}` }, `${path}: FST_SOCKET_NO_ROUTE`)
    t.notOk(client.received.toString().includes(' 101 '), `${path}: never 101`)
    client.destroy()
  }
}

t.test('upgrades to /admin paths with no route are refused 404 FST_SOCKET_NO_ROUTE (the demo, with its static wildcard)', async (t) => {
  const app = await buildDemo({ secret: 'demo-test-secret' })
  t.after(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  // The demo's admin lives under /admin/sockets/ (forgeSocketAdmin); none of these paths is one of its routes.
  t.notOk(ADMIN_PATHS.some((url) => app.hasRoute({ method: 'GET', url })), 'none of these is a route of the demo')
  await assertNoRoute(t, portOf(app), app.jwt.sign({ sub: 'ann', rooms: ['lobby'] }))
  t.equal(app.socket.connections().length, 0, 'no socket opened')
})

t.test('upgrades to /admin paths with no route are refused 404 FST_SOCKET_NO_ROUTE (an app with no other route)', async (t) => {
  const { app } = await serve(t)
  await assertNoRoute(t, portOf(app), sign({ sub: 'ann' }))
  t.equal(app.socket.connections().length, 0, 'no socket opened')
})

// ---------------------------------------------------------------------------------------------------------------
// 3. Ping floods

t.test('ping flood: a client that floods pings without reading is closed with 1008 "ping rate limit exceeded"', async (t) => {
  const { app } = await serve(t)
  for (const size of [0, 125]) {
    const flooder = await rawConnect(portOf(app), 'flooder')
    flooder.socket.pause()
    // 10,000 pings in one write: ws reads them in a few chunks, far more than its 60 pending pongs at once.
    flooder.socket.write(Buffer.concat(Array.from({ length: 10_000 }, () => clientFrame(PING, Buffer.alloc(size, 0x61)))))
    await tick(200)
    flooder.socket.resume()
    t.same(await flooder.closeFrame(), { code: 1008, reason: 'ping rate limit exceeded' }, `pings of ${size} bytes: a close frame, not a terminate (1006)`)
    const pongs = flooder.frames().filter((f) => f.opcode === PONG).length
    t.ok(pongs > 200 && pongs < 1500, `answered until the limit (the burst and the abuse window), not 10,000: ${pongs}`)
    flooder.destroy()
  }
})

t.test('ping flood: a client pinging within its rate is unaffected', async (t) => {
  const { app, base } = await serve(t)
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  let pongs = 0
  client.ws.on('pong', () => { pongs++ })
  // 5 pings and one message every 100 ms for 1.5 s: 60 frames a second, under the 100 a second allowed.
  for (let round = 0; round < 15; round++) {
    for (let i = 0; i < 5; i++) client.ws.ping()
    t.equal((await client.request('room-a', 'ping', null, `r${round}`)).cmd, 'pong')
    await tick(100)
  }
  client.ws.ping()
  await once(client.ws, 'pong')
  t.equal(pongs, 76, 'every ping answered')
  t.notOk(client.messages.some((m) => m.cmd === 'error'), 'no message refused')
  t.equal(app.socket.connections().length, 1, 'still open')
  client.close()
  await client.closed
})

// ---------------------------------------------------------------------------------------------------------------
// 4. Fragment hoarding

t.test('fragment hoarding: a message in more than maxFragments (128) fragments is closed with 1008', async (t) => {
  const { app } = await serve(t)

  const whole = await rawConnect(portOf(app), 'ann')
  whole.socket.write(fragmented(pingCommand('in-128', 256), 128))
  t.match(await whole.message((m) => m.ref === 'in-128'), { cmd: 'pong' }, 'a message in 128 fragments is handled')
  whole.destroy()

  // If ws renamed or dropped maxFragments, this connection would hold all 16,000 (1.8 MiB) and never be closed.
  const hoarder = await rawConnect(portOf(app), 'bob')
  hoarder.socket.write(fragmented(Buffer.alloc(16_000, 0x61), 16_000, true))
  t.same(await hoarder.closeFrame(), { code: 1008, reason: '' }, 'the 129th fragment closes the connection (ws\'s close, with no reason)')
  await hoarder.closed
  hoarder.destroy()
})

t.test('fragment hoarding: maxFragments is an option, validated at register', async (t) => {
  const { app } = await serve(t, { maxFragments: 4 })
  const four = await rawConnect(portOf(app), 'ann')
  four.socket.write(fragmented(pingCommand('in-4', 64), 4))
  t.match(await four.message((m) => m.ref === 'in-4'), { cmd: 'pong' }, '4 fragments are handled')
  four.socket.write(fragmented(pingCommand('in-5', 64), 5))
  t.equal((await four.closeFrame()).code, 1008, '5 are not')
  four.destroy()

  for (const maxFragments of [0, -1, 1.5, '8']) {
    const bad = Fastify({ logger: false })
    await t.rejects(async () => { await bad.register(forgeSocket, { jwt: { secret: SECRET }, maxFragments } as unknown as ForgeSocketOptions) },
      { code: 'FST_SOCKET_INVALID_OPTIONS', message: /\/maxFragments/ }, `maxFragments ${JSON.stringify(maxFragments)}`)
    await bad.close()
  }
})

t.test('fragment hoarding and ping floods: the limits are set on the ws server forge-socket registers', async (t) => {
  const defaults = await build()
  t.after(() => defaults.close())
  t.match(defaults.websocketServer.options, { maxPayload: 65536, maxFragments: 128, maxBufferedChunks: 128, maxPendingAutoPongs: 1300 })
  const custom = await build({ maxPayload: 1_048_576, maxFragments: 1024, rateLimit: { perSecond: 10, burst: 20 } })
  t.after(() => custom.close())
  t.match(custom.websocketServer.options, { maxFragments: 1024, maxBufferedChunks: 2048, maxPendingAutoPongs: 130 })
})

t.test('fragment hoarding: a frame dribbled in more TCP reads than maxPayload needs is closed with 1008', async (t) => {
  // maxPayload 128: any frame fits in 64 reads (the floor); here each byte of one is a read of its own.
  const { app } = await serve(t, { maxPayload: 128 })
  const dribbler = await rawConnect(portOf(app), 'ann')
  const frame = clientFrame(TEXT, pingCommand('dribbled', 128))
  for (let i = 0; i < frame.length && !dribbler.socket.destroyed; i++) {
    dribbler.socket.write(frame.subarray(i, i + 1))
    await tick(2)
    if (dribbler.frames().some((f) => f.opcode === CLOSE)) break
  }
  t.equal((await dribbler.closeFrame()).code, 1008)
  dribbler.destroy()
})

t.test('fragment hoarding: a frame of maxPayload bytes in TCP\'s smallest segments (536 bytes) is accepted', async (t) => {
  const { app } = await serve(t)
  const slow = await rawConnect(portOf(app), 'ann')
  const frame = clientFrame(TEXT, pingCommand('in-segments', 65_536))
  for (let at = 0; at < frame.length; at += 536) {
    slow.socket.write(frame.subarray(at, at + 536))
    await tick(1)
  }
  t.match(await slow.message((m) => m.ref === 'in-segments'), { cmd: 'pong' }, `${Math.ceil(frame.length / 536)} reads`)
  slow.destroy()
})

// ---------------------------------------------------------------------------------------------------------------
// 5. `?token=` in the log

t.test('?token= in the log: no log line has it, with auth.query off and on', async (t) => {
  for (const query of [false, true]) {
    const sink = new LogSink()
    const app = Fastify({ logger: { level: 'trace', stream: sink.stream } })
    await app.register(forgeSocket, { jwt: { secret: SECRET }, auth: { query } })
    room(app)
    app.get('/api/echo', async (request) => ({ url: request.url }))
    const base = await listen(app)
    const token = sign({ sub: 'ann' })
    const secret = `SECRET${query ? 'on' : 'off'}`

    if (query) {
      const { client } = await connect(`${base}/ws/a?room=x&token=${token}`)
      t.pass('auth.query on: the query token is used')
      client.close()
      await client.closed
    } else {
      const ignored = await refused(`${base}/ws/a?room=x&token=${token}`)
      t.equal(ignored.body.code, 'FST_SOCKET_TOKEN_MISSING', 'auth.query off: the query token is not used')
    }
    const upgrade = await refused(`${base}/ws/a?room=x&token=${secret}`)
    t.equal(upgrade.status, 401, 'an upgrade with a bad query token')
    const noRoute = await refused(`${base}/nowhere?token=${secret}`)
    t.equal(noRoute.status, 404, 'an upgrade to no route')
    const plain = await fetch(`${base.replace(/^ws/, 'http')}/ws/a?room=x&token=${secret}`)
    t.equal(plain.status, 426, 'a plain HTTP request to the WebSocket route')
    const own = await fetch(`${base.replace(/^ws/, 'http')}/api/echo?token=mine`)
    t.same(await own.json(), { url: '/api/echo?token=mine' }, 'the app\'s own HTTP routes keep their query as it came')
    await app.close()

    const leaks = sink.lines.map((line) => JSON.stringify(line)).filter((line) => line.includes(token) || line.includes(secret))
    t.same(leaks, [], `auth.query ${String(query)}: no log line has the token`)
    t.ok(sink.lines.some((line) => (line.req as { url?: string } | undefined)?.url === '/ws/a?room=x'), 'the URL is logged without it')
  }
})

// ---------------------------------------------------------------------------------------------------------------
// 6. Slow upgrade requests

t.test('slowloris: the demo cuts an upgrade request whose headers stall within its headersTimeout', async (t) => {
  const headersTimeout = 300
  const app = await buildDemo({ secret: 'demo-test-secret', headersTimeout })
  t.after(() => app.close())
  await app.listen({ port: 0, host: '127.0.0.1' })
  const started = Date.now()
  const slow = await RawClient.open(portOf(app), 'GET /ws/notifications HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n')
  await slow.closed
  const elapsed = Date.now() - started
  t.match(slow.received.toString(), /^HTTP\/1\.1 408 /, 'Node answered 408 and closed the connection')
  // Cut at the first check (every min(headersTimeout, 1 s)) after the timeout.
  t.ok(elapsed >= headersTimeout && elapsed < 2 * headersTimeout + 500, `cut after ${elapsed} ms`)
})

t.test('slowloris: the demo\'s default headersTimeout is 10 s, checked every second', async (t) => {
  const app = await buildDemo({ secret: 'demo-test-secret' })
  t.after(() => app.close())
  await app.ready()
  t.equal(app.server.headersTimeout, 10_000)
  t.equal(app.server.requestTimeout, 30_000)
})
