import t from 'tap'
import { once } from 'node:events'
import { connect as netConnect, type Socket } from 'node:net'
import { randomBytes } from 'node:crypto'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyWebsocket from '@fastify/websocket'
import forgeSocket, { SUBPROTOCOL, type ForgeSocketOptions } from '../plugin.js'
import { closes, idOf, listen, room, serve, sign, connect, refused, Client, SECRET } from './helpers/server.js'
import { LogSink } from './helpers/logs.js'

/** Resolves once the client has received `count` WebSocket pings. */
function pings (client: Client, count: number): Promise<void> {
  let seen = 0
  return new Promise((resolve) => client.ws.on('ping', () => { if (++seen === count) resolve() }))
}

/** A forge-socket app that logs into a LogSink. */
async function buildLogged (options: ForgeSocketOptions): Promise<{ app: FastifyInstance, logs: LogSink }> {
  const logs = new LogSink()
  const app = Fastify({ logger: { level: 'info', stream: logs.stream } })
  await app.register(forgeSocket, { jwt: { secret: SECRET }, ...options })
  room(app)
  return { app, logs }
}

/** A frame as the server sent it (server frames are never masked). */
interface Frame { opcode: number, payload: Buffer }

/**
 * A WebSocket peer written by hand on a raw TCP socket: it completes the upgrade and reads frames, but never answers
 * anything, so it never completes a closing handshake.
 */
class RawPeer {
  readonly socket: Socket
  readonly frames: Frame[] = []
  readonly ended: Promise<void>
  #buffer = Buffer.alloc(0)
  #upgraded = false
  #waiters: Array<{ match: (f: Frame) => boolean, resolve: (f: Frame) => void }> = []

  constructor (base: string, path: string, token: string) {
    const url = new URL(base)
    this.socket = netConnect(Number(url.port), url.hostname)
    this.socket.write([
      `GET ${path} HTTP/1.1`,
      `Host: ${url.host}`,
      'Upgrade: websocket',
      'Connection: Upgrade',
      `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
      'Sec-WebSocket-Version: 13',
      `Authorization: Bearer ${token}`,
      '', ''
    ].join('\r\n'))
    this.socket.on('data', (chunk: Buffer) => this.#read(chunk))
    this.ended = once(this.socket, 'close').then(() => {})
  }

  /** Resolves with the first frame (already received or to come) for which `match` holds. */
  next (match: (f: Frame) => boolean): Promise<Frame> {
    const seen = this.frames.find(match)
    if (seen !== undefined) return Promise.resolve(seen)
    return new Promise((resolve) => this.#waiters.push({ match, resolve }))
  }

  #read (chunk: Buffer): void {
    this.#buffer = Buffer.concat([this.#buffer, chunk])
    if (!this.#upgraded) {
      const end = this.#buffer.indexOf('\r\n\r\n')
      if (end === -1) return
      if (!this.#buffer.subarray(0, end).toString().startsWith('HTTP/1.1 101')) throw new Error('upgrade refused')
      this.#upgraded = true
      this.#buffer = this.#buffer.subarray(end + 4)
    }
    for (;;) {
      if (this.#buffer.length < 2) return
      const opcode = (this.#buffer[0] as number) & 0x0f
      let length = (this.#buffer[1] as number) & 0x7f
      let offset = 2
      if (length === 126) {
        if (this.#buffer.length < 4) return
        length = this.#buffer.readUInt16BE(2)
        offset = 4
      }
      if (this.#buffer.length < offset + length) return
      const frame = { opcode, payload: this.#buffer.subarray(offset, offset + length) }
      this.#buffer = this.#buffer.subarray(offset + length)
      this.frames.push(frame)
      this.#waiters = this.#waiters.filter((w) => {
        if (!w.match(frame)) return true
        w.resolve(frame)
        return false
      })
    }
  }
}

t.test('heartbeat', async (t) => {
  t.test('a client that never answers pings is terminated', async (t) => {
    const { app, base } = await serve(t, { heartbeat: { interval: 50, timeout: 30 } })
    const closed = closes(app)
    const { client, connected } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }), { autoPong: false })
    t.equal(app.socket.connections().length, 1, 'connected at first')

    t.equal(await closed.wait(idOf(connected)), 1006, 'the server saw the connection end without a closing handshake')
    t.same(app.socket.connections(), [], 'the dead connection is gone from the registry')
    t.same(app.socket.channels(), [], 'and from its channel')
    t.equal((await client.closed).code, 1006, 'the client saw the TCP connection dropped (terminate)')
  })

  // A client that answers has `timeout` ms to do it, in this same (busy) process: 30 ms was sometimes too little.
  t.test('a client that answers pings stays connected across several intervals', async (t) => {
    const { app, base } = await serve(t, { heartbeat: { interval: 100, timeout: 90 } })
    const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
    await pings(client, 4)
    t.equal(client.ws.readyState, client.ws.OPEN, 'still open after four pings')
    t.equal(app.socket.connections().length, 1, 'still registered on the server')
    t.equal((await client.request('room-a', 'ping', null)).cmd, 'pong', 'and still served')
    client.close()
    t.equal((await client.closed).code, 1000)
  })

  t.test('any frame from the client counts as an answer, not only a pong', async (t) => {
    const { app, base } = await serve(t, { heartbeat: { interval: 100, timeout: 90 } })
    const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }), { autoPong: false })
    // The server clears the pong wait on any inbound frame, so a busy client is never reaped.
    client.ws.on('ping', () => client.send({ channel: 'room-a', cmd: 'ping', param: null }))
    await pings(client, 4)
    t.equal(client.ws.readyState, client.ws.OPEN, 'still open after four unanswered pings')
    t.equal(app.socket.connections().length, 1)
    client.close()
    t.equal((await client.closed).code, 1000)
  })
})

t.test('app.close() closes every client with 1001 and resolves', async (t) => {
  const { app, base } = await serve(t)
  const closed = closes(app)
  const clients = await Promise.all(['a', 'a', 'b'].map(async (r, i) => (await connect(`${base}/ws/${r}`, sign({ sub: `user-${i}` }))).client))
  t.equal(app.socket.status().connections, 3)

  await app.close()
  for (const client of clients) {
    t.same(await client.closed, { code: 1001, reason: 'server shutting down' }, 'going away, with the reason')
  }
  t.equal(app.socket.status().closing, true, 'status reports the shutdown')
  t.equal(app.socket.status().connections, 0, 'no connection left')
  t.same([...closed.codes.values()].sort(), [1001, 1001, 1001], 'every onClose hook ran with 1001')
})

t.test('app.close() with no connection resolves at once', async (t) => {
  const { app } = await serve(t)
  await app.close()
  t.equal(app.socket.status().closing, true)
})

t.test('shutdown deadline: a peer that never completes the closing handshake is terminated', async (t) => {
  const { app, logs } = await buildLogged({ shutdownTimeout: 100 })
  t.after(() => app.close())
  const base = await listen(app)
  const closed = closes(app)
  const peer = new RawPeer(base, '/ws/a', sign({ sub: 'ann' }))
  const connected = JSON.parse((await peer.next((f) => f.opcode === 1)).payload.toString()) as { cmd: string, param: unknown }
  t.match(connected, { cmd: 'connected' })

  const closing = app.close()
  const close = await peer.next((f) => f.opcode === 8)
  t.equal(close.payload.readUInt16BE(0), 1001, 'the peer was asked to close with 1001')
  t.equal(close.payload.subarray(2).toString(), 'server shutting down')
  await closing
  t.pass('app.close() resolved although the peer never answered')
  await peer.ended
  t.equal(await closed.wait(idOf(connected)), 1006, 'the server dropped it without a handshake')
  t.ok(logs.lines.some((l) => l.msg === 'connections still open at the shutdown deadline: terminating' && l.level === 40 && l.connections === 1), 'the straggler was counted in one warning')
})

t.test('shutdown deadline: a client whose socket is paused is terminated', async (t) => {
  const { app, base } = await serve(t, { shutdownTimeout: 50 })
  const closed = closes(app)
  const { client, connected } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const socket = (client.ws as unknown as { _socket: Socket })._socket
  socket.pause()
  await app.close()
  t.equal(await closed.wait(idOf(connected)), 1006, 'terminated at the deadline')
  socket.resume()
  // The close frame was already on the wire; the client reads it once it reads again.
  t.equal((await client.closed).code, 1001)
})

t.test('an upgrade that arrives while the server drains is refused with 503', async (t) => {
  const { app, base } = await serve(t)
  const { client: quick } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const { client: slow } = await connect(`${base}/ws/a`, sign({ sub: 'bob' }))
  const socket = (slow.ws as unknown as { _socket: Socket })._socket
  socket.pause()

  const closing = app.close()
  t.equal((await quick.closed).code, 1001, 'the drain has started')
  const { status } = await refused(`${base}/ws/b`, { headers: { authorization: `Bearer ${sign({ sub: 'cid' })}` } })
  t.equal(status, 503, 'no new connection while draining')
  socket.resume()
  t.equal((await slow.closed).code, 1001, 'the slow client completes its handshake')
  await closing
  t.equal(app.socket.status().connections, 0)
})

t.test('registration', async (t) => {
  t.test('a second registration is refused', async (t) => {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    await app.register(forgeSocket, { jwt: { secret: SECRET } })
    await t.rejects(async () => { await app.register(forgeSocket, { jwt: { secret: SECRET } }) }, { code: 'FST_SOCKET_ALREADY_REGISTERED' })
  })

  t.test('a registration in a child of a registered instance is refused too', async (t) => {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    await app.register(forgeSocket, { jwt: { secret: SECRET } })
    await t.rejects(async () => {
      await app.register(async (child) => { await child.register(forgeSocket, { jwt: { secret: SECRET } }) })
    }, { code: 'FST_SOCKET_ALREADY_REGISTERED' })
  })

  t.test('an app that registered @fastify/websocket itself keeps its server options and gets forge.v1 selected', async (t) => {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    // The app's own preClose, as its docs ask, so forge-socket's drain closes the sockets with 1001.
    await app.register(fastifyWebsocket, { options: { maxPayload: 512 }, preClose: (done) => done() })
    await app.register(forgeSocket, { jwt: { secret: SECRET } })
    room(app)
    const base = await listen(app)

    // A bearer entry first: ws's default would select (and echo) it; forge-socket selects forge.v1.
    const client = new Client(`${base}/ws/a`, { protocols: [`bearer.${sign({ sub: 'ann' })}`, SUBPROTOCOL] })
    const connected = await client.next('connected')
    t.equal(client.ws.protocol, SUBPROTOCOL, 'forge.v1 selected, the token not echoed')
    t.same(connected.param, { connectionId: app.socket.connections()[0]?.id, channels: ['room-a'], dedupe: { window: 120000, scope: 'user' } })
    t.equal((await client.request('room-a', 'ping', null)).cmd, 'pong')

    // The app's maxPayload (512), not forge-socket's default (64 KiB).
    client.send({ channel: 'room-a', cmd: 'ping', param: 'x'.repeat(1024) })
    t.equal((await client.closed).code, 1009, 'frames over the app\'s own maxPayload are refused')
  })

  t.test('with the app\'s own handleProtocols, forge-socket leaves it in place', async (t) => {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    const handleProtocols = (protocols: Set<string>): string | false => protocols.has('custom') ? 'custom' : false
    await app.register(fastifyWebsocket, { options: { handleProtocols }, preClose: (done) => done() })
    await app.register(forgeSocket, { jwt: { secret: SECRET } })
    room(app)
    const base = await listen(app)
    t.equal(app.websocketServer.options.handleProtocols, handleProtocols)
    const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }), { protocols: ['custom', SUBPROTOCOL] })
    t.equal(client.ws.protocol, 'custom')
    client.close()
    await client.closed
  })
})
