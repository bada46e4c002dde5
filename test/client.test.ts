import t, { type Test } from 'tap'
import { once } from 'node:events'
import { createServer, type AddressInfo, type Socket as NetSocket } from 'node:net'
import type { IncomingMessage } from 'node:http'
import { setTimeout as sleep } from 'node:timers/promises'
import type { FastifyInstance } from 'fastify'
import WebSocket, { WebSocketServer } from 'ws'
import type { ForgeSocketOptions } from '../plugin.js'
import { Socket, SocketError, type Message } from '../lib/client/index.js'
import { build, listen, room, sign } from './helpers/server.js'
import { inState, rawServer, reconnected, recordedClient as client, rejection, Seen } from './helpers/client-state.js'

// The client's Socket class in Node (with `ws`), against real forge-socket servers on port 0, and against a raw
// `ws` server where the test needs a server that misbehaves.

interface Server {
  app: FastifyInstance
  /** `ws://127.0.0.1:<port>` */
  base: string
  /** Every upgrade request as it came in (before the server strips a `?token=`). */
  upgrades: Seen<{ url: string, protocol: string }>
  /** The params of every `note` command, in the order they arrived. */
  notes: Seen<unknown>
  /** The close code of every connection the server saw close. */
  closes: Seen<number>
}

/**
 * A forge-socket server: `/ws/:room` (token required) and `/open/:room` (token optional) upgrade into
 * `room-<room>`; commands `note` (recorded), `echo` (replies with its param), `hang` (never answers) and `fail`
 * (an application error with a code).
 */
async function server (t: Test, options: ForgeSocketOptions = {}, port = 0): Promise<Server> {
  const notes = new Seen<unknown>()
  const closes = new Seen<number>()
  const upgrades = new Seen<{ url: string, protocol: string }>()
  const app = await build(options, (app) => {
    // Not serve(): a test restarts the server on the same port.
    room(app)
    app.get('/open/:room', app.socket.act('open', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`), { auth: 'optional' }))
    app.socket.command('note', { handler: (param) => { notes.push(param) } })
    app.socket.command('echo', { handler: (param) => param })
    app.socket.command('hang', { handler: () => new Promise(() => {}) })
    app.socket.command('fail', { handler: () => { throw Object.assign(new Error('the room is gone'), { code: 'ROOM_GONE', statusCode: 404 }) } })
    app.socket.onClose((_conn, code) => { closes.push(code) })
  })
  // In front of every other upgrade listener, so it sees the URL exactly as the client sent it.
  app.server.prependListener('upgrade', (req: IncomingMessage) => {
    upgrades.push({ url: req.url ?? '', protocol: String(req.headers['sec-websocket-protocol'] ?? '').split(/,\s*/).join(', ') })
  })
  t.after(() => app.close())
  let base: string
  if (port === 0) base = await listen(app)
  else base = (await app.listen({ port, host: '127.0.0.1' })).replace(/^http/, 'ws')
  return { app, base, upgrades, notes, closes }
}

/** A port with nothing listening on it (until a test starts a server there). */
async function freePort (): Promise<number> {
  const probe = createServer()
  probe.listen(0, '127.0.0.1')
  await once(probe, 'listening')
  const { port } = probe.address() as AddressInfo
  probe.close()
  await once(probe, 'close')
  return port
}

const ann = sign({ sub: 'ann' })

t.test('connecting', async (t) => {
  t.test('the options form connects; onOpen comes after `connected`', async (t) => {
    const s = await server(t)
    const { socket, opens, errors } = client(t, { url: `${s.base}/ws/a`, token: ann })
    t.equal(socket.state, 'connecting')
    t.equal(socket.connectionId, null)
    t.equal(socket.queued, 0)
    await opens.count(1)
    t.equal(socket.state, 'open')
    const [info] = s.app.socket.connections()
    t.equal(info?.profileId, 'ann', 'the server accepted the token')
    t.equal(opens.items[0], info?.id, 'onOpen already knows the connectionId from `connected`')
    t.equal(socket.connectionId, info?.id)
    t.same(errors.items, [])
  })

  t.test("Project Forge's form: new Socket(debug, onOpen, onMessage, onError, path)", async (t) => {
    const s = await server(t)
    const g = globalThis as { WebSocket?: unknown, location?: unknown }
    const saved = { WebSocket: g.WebSocket, debug: console.debug }
    // A page: a global WebSocket class and a location to resolve the path against; debug lines go to console.debug.
    g.WebSocket = WebSocket
    g.location = { protocol: 'http:', host: new URL(s.base).host }
    const debug: string[] = []
    console.debug = (line: string) => { debug.push(line) }
    t.after(() => {
      if (saved.WebSocket === undefined) delete g.WebSocket
      else g.WebSocket = saved.WebSocket
      delete g.location
      console.debug = saved.debug
    })
    const messages = new Seen<Message>()
    const errors: SocketError[] = []
    let openedWith: string | null = null
    const socket: Socket = new Socket(true, () => { openedWith = socket.connectionId }, (m) => messages.push(m), (e) => errors.push(e), '/open/lobby')
    t.after(() => socket.close())
    await messages.until((m) => m.some((x) => x.cmd === 'connected'))
    t.equal(socket.state, 'open')
    t.equal(s.upgrades.items[0]?.url, '/open/lobby', 'the path was resolved against the page')
    t.equal(s.upgrades.items[0]?.protocol, 'forge.v1', 'no token, no bearer entry')
    t.equal(openedWith, socket.connectionId)
    t.match(messages.items[0], { channel: 'room-lobby', cmd: 'connected', param: { connectionId: socket.connectionId, channels: ['room-lobby'] } })
    t.ok(debug.includes('[forge-socket] state open'), 'debug on: lines go to console.debug')
    t.same(errors, [])
  })

  t.test('a path without a page, or no WebSocket class, throws', async (t) => {
    t.throws(() => new Socket({ url: '/ws/a', WebSocket }), { code: 'FST_SOCKET_BAD_URL' })
    const g = globalThis as { WebSocket?: unknown }
    const saved = g.WebSocket
    // Node 22 has a global WebSocket; Node 20 has none.
    delete g.WebSocket
    t.after(() => { if (saved !== undefined) g.WebSocket = saved })
    const err = t.throws(() => new Socket({ url: 'ws://127.0.0.1:9/ws' })) as SocketError
    t.ok(err instanceof SocketError)
    t.equal(err.code, 'FST_SOCKET_NO_WEBSOCKET')
  })
})

t.test('the token', async (t) => {
  t.test('a string goes as the bearer subprotocol, never in the URL', async (t) => {
    const s = await server(t)
    const { socket } = client(t, { url: `${s.base}/ws/a`, token: ann })
    await inState(socket, 'open')
    t.same(s.upgrades.items, [{ url: '/ws/a', protocol: `forge.v1, bearer.${ann}` }])
    t.equal(s.app.socket.connections()[0]?.profileId, 'ann')
  })

  t.test('a provider is asked before connecting', async (t) => {
    const s = await server(t)
    let calls = 0
    const token = sign({ sub: 'bob' })
    const { socket } = client(t, { url: `${s.base}/ws/a`, token: async () => { calls++; return token } })
    await inState(socket, 'open')
    t.equal(calls, 1)
    t.same(s.upgrades.items, [{ url: '/ws/a', protocol: `forge.v1, bearer.${token}` }])
    t.equal(s.app.socket.connections()[0]?.profileId, 'bob')
  })

  t.test("tokenIn: 'query' puts it in the URL when the server allows it", async (t) => {
    const s = await server(t, { auth: { query: true } })
    const one = client(t, { url: `${s.base}/ws/a`, token: ann, tokenIn: 'query' })
    await inState(one.socket, 'open')
    const two = client(t, { url: `${s.base}/ws/b?x=1`, token: ann, tokenIn: 'query' })
    await inState(two.socket, 'open')
    t.same(s.upgrades.items, [
      { url: `/ws/a?token=${ann}`, protocol: 'forge.v1' },
      { url: `/ws/b?x=1&token=${ann}`, protocol: 'forge.v1' }
    ])
    t.same(s.app.socket.connections().map((c) => c.profileId), ['ann', 'ann'])
    t.notOk(one.lines.items.some((line) => line.includes(ann)), 'the debug line shows the URL without the token')
  })

  t.test('an empty token is no token', async (t) => {
    const s = await server(t)
    const { socket } = client(t, { url: `${s.base}/open/a`, token: '' })
    await inState(socket, 'open')
    t.same(s.upgrades.items, [{ url: '/open/a', protocol: 'forge.v1' }])
    t.equal(s.app.socket.connections()[0]?.profileId, null)
  })

  t.test('a failing provider is reported and tried again', async (t) => {
    const s = await server(t)
    let calls = 0
    const { socket, errors } = client(t, {
      url: `${s.base}/ws/a`,
      token: () => {
        if (++calls === 1) throw new Error('auth service down')
        return ann
      }
    })
    await inState(socket, 'open')
    t.equal(calls, 2)
    t.equal(errors.items.length, 1)
    t.equal(errors.items[0]?.code, 'FST_SOCKET_TOKEN_PROVIDER')
    t.match(errors.items[0]?.message, /auth service down/)
  })
})

t.test('sending', async (t) => {
  t.test('sends before open are queued and flushed in order before onOpen', async (t) => {
    const s = await server(t)
    let queuedAtOpen = -1
    const { socket } = client(t, {
      url: `${s.base}/ws/a`,
      token: ann,
      onOpen: () => {
        queuedAtOpen = socket.queued
        // Sent from onOpen: it must come after the queued ones.
        socket.send('room-a', 'note', { n: 4 })
      }
    })
    t.equal(socket.send('room-a', 'note', { n: 1 }), false, 'not sent yet')
    t.equal(socket.send({ channel: 'room-a', cmd: 'note', param: { n: 2 } }), false)
    socket.send('room-a', 'note', undefined)
    t.equal(socket.queued, 3)
    await s.notes.count(4)
    t.same(s.notes.items, [{ n: 1 }, { n: 2 }, null, { n: 4 }])
    t.equal(queuedAtOpen, 0, 'the queue was flushed before onOpen')
    t.equal(socket.send('room-a', 'note', { n: 5 }), true, 'sent at once when open')
    await s.notes.count(5)
    t.same(s.notes.items[4], { n: 5 })
    t.equal(s.upgrades.items.length, 1, 'exactly once, on one connection')
  })

  t.test('request()', async (t) => {
    const s = await server(t)
    const { socket } = client(t, { url: `${s.base}/ws/a`, token: ann, requestTimeout: 30 })
    const long = { timeout: 10_000 } // the 30 ms default is for the timeout check at the end
    const early = socket.request('room-a', 'echo', { early: true }, long)
    t.equal(socket.queued, 1, 'a request made before open waits in the queue')
    t.same(await early, { early: true })
    t.same(await socket.request<{ x: number }>('room-a', 'echo', { x: 1 }, long), { x: 1 })
    t.equal(await socket.request('room-a', 'note', 'hi', long), null, 'a handler without a value replies null')

    const failed = await rejection(socket.request('room-a', 'fail', null, long))
    t.ok(failed instanceof SocketError)
    t.equal(failed.code, 'ROOM_GONE')
    t.equal(failed.message, 'the room is gone')
    t.equal((await rejection(socket.request('room-a', 'nope', null, long))).code, 'FST_SOCKET_UNKNOWN_COMMAND')
    t.equal((await rejection(socket.request('room-b', 'echo', null, long))).code, 'FST_SOCKET_NOT_SUBSCRIBED')

    const timedOut = await rejection(socket.request('room-a', 'hang', null, { timeout: 40 }))
    t.equal(timedOut.code, 'FST_SOCKET_REQUEST_TIMEOUT')
    t.match(timedOut.message, /hang.*40 ms/)
    t.equal((await rejection(socket.request('room-a', 'hang', null))).code, 'FST_SOCKET_REQUEST_TIMEOUT', 'requestTimeout is the default')
    t.equal(socket.state, 'open', 'a timeout does not touch the connection')
  })

  t.test('without dedupe, a request is rejected when the connection closes before the answer', async (t) => {
    // With dedupe (the default) it would be sent again on the next connection: test/client-dedupe.test.ts.
    const s = await server(t, { dedupe: false })
    const { socket } = client(t, { url: `${s.base}/ws/a`, token: ann })
    await inState(socket, 'open')
    const waiting = socket.request('room-a', 'hang', null, { timeout: 10_000 })
    s.app.socket.disconnect(socket.connectionId as string, 1001)
    const err = await rejection(waiting)
    t.equal(err.code, 'FST_SOCKET_CONNECTION_CLOSED')
    t.equal(err.closeCode, 1001)
    await inState(socket, 'open')
    t.same(await socket.request('room-a', 'echo', 'again'), 'again', 'the reconnected socket answers')
  })

  t.test('a queued request survives a failed attempt and is answered once the server is up', async (t) => {
    const port = await freePort()
    const { socket, errors } = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, token: ann })
    const answer = socket.request('room-a', 'echo', 'late', { timeout: 10_000 })
    await inState(socket, 'reconnecting')
    t.equal(socket.queued, 1)
    await server(t, {}, port)
    t.equal(await answer, 'late')
    t.ok(errors.items.length > 0, 'each failed attempt was reported')
    t.ok(errors.items.every((e) => e.code === 'FST_SOCKET_HANDSHAKE_FAILED' && /ECONNREFUSED/.test(e.message)), 'as a failed handshake, with why')
  })
})

t.test('listening', async (t) => {
  const s = await server(t)
  const greets: unknown[] = []
  const all = new Seen<string>()
  const messages: string[] = []
  const onGreet = (m: Message): void => { greets.push(m.param) }
  const { socket } = client(t, { url: `${s.base}/ws/a`, token: ann, onMessage: (m) => messages.push(m.cmd) })
  t.equal(socket.on('greet', onGreet).on('*', (m) => all.push(m.cmd)), socket, 'on() chains')
  const connected: string[] = []
  socket.on('connected', (m) => { connected.push(m.param.connectionId) })
  await inState(socket, 'open')
  const id = socket.connectionId as string
  t.same(connected, [id], 'typed: the connected param')

  s.app.socket.sendToConnection(id, { cmd: 'greet', param: { n: 1 } })
  await all.until((cmds) => cmds.includes('greet'))
  t.equal(socket.off('greet', onGreet), socket, 'off() chains')
  s.app.socket.sendToConnection(id, { cmd: 'greet', param: { n: 2 } })
  const news = new Promise<Message>((resolve) => socket.on('news', resolve))
  s.app.socket.broadcast('room-a', { cmd: 'news', param: { headline: 'hi' } })
  const message = await news
  t.match(message, { channel: 'room-a', cmd: 'news', param: { headline: 'hi' } })
  t.type(message.seq, 'number', 'channel messages carry their seq')

  t.same(greets, [{ n: 1 }], 'a removed listener hears nothing more')
  t.same(all.items, ['connected', 'greet', 'greet', 'news'], "'*' hears everything")
  t.same(messages, ['connected', 'greet', 'greet', 'news'], 'so does onMessage')
})

t.test('state changes: connecting → open → reconnecting → open → closed', async (t) => {
  const s = await server(t)
  const { socket, states } = client(t, { url: `${s.base}/ws/a`, token: ann })
  const once: string[] = []
  const off = socket.onStateChange((state, previous) => {
    once.push(`${previous}>${state}`)
    off()
  })
  await inState(socket, 'open')
  s.app.socket.disconnect(socket.connectionId as string, 1001)
  await reconnected(socket)
  socket.close()
  t.equal(socket.state, 'closed', 'close() is immediate')
  t.same(states.items, ['connecting>open', 'open>reconnecting', 'reconnecting>open', 'open>closed'])
  t.same(once, ['connecting>open'], 'onStateChange returns its own removal')
})

t.test('reconnecting', async (t) => {
  t.test('after 1001: a fresh token, a new connection, queued messages in order', async (t) => {
    const s = await server(t)
    let calls = 0
    const { socket, opens, errors } = client(t, { url: `${s.base}/ws/a`, token: () => sign({ sub: 'ann', n: ++calls }) })
    await inState(socket, 'open')
    const first = socket.connectionId
    s.app.socket.disconnect(first as string, 1001, 'going away')
    await inState(socket, 'reconnecting')
    for (let n = 1; n <= 5; n++) socket.send('room-a', 'note', { n })
    t.equal(socket.queued, 5)
    await inState(socket, 'open')
    await s.notes.count(5)
    t.same(s.notes.items, [1, 2, 3, 4, 5].map((n) => ({ n })), 'in order, exactly once')
    t.equal(calls, 2, 'the provider was asked again')
    t.not(socket.connectionId, first, 'a new connection')
    t.same(opens.items, [first, socket.connectionId], 'onOpen on every connection')
    t.equal(socket.queued, 0)
    t.same(s.closes.items, [1001])
    t.same(errors.items, [], 'a reconnect is not an error')
  })

  t.test('the provider is called on every attempt, failed ones included', async (t) => {
    const port = await freePort()
    const calls = new Seen<number>()
    const { socket, lines } = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, token: () => { calls.push(calls.items.length + 1); return ann } })
    await calls.count(3)
    t.equal(socket.state, 'reconnecting')
    const s = await server(t, {}, port)
    await inState(socket, 'open')
    const attempts = lines.items.filter((l) => l.startsWith('[forge-socket] connect ')).length
    t.ok(attempts >= 4)
    t.equal(calls.items.length, attempts, 'once per attempt')
    t.equal(s.upgrades.items.length, 1)
  })

  t.test('backoff grows per attempt, longer after 1013, and starts again once the connection stayed up', async (t) => {
    const s = await server(t)
    const { socket, lines } = client(t, { url: `${s.base}/ws/a`, token: ann, reconnect: { initialDelay: 10, maxDelay: 1000, jitter: 0, resetAfter: 400 } })
    const retries = (): string[] => lines.items.filter((l) => l.includes('retry in')).map((l) => l.replace('[forge-socket] ', ''))
    await inState(socket, 'open')
    for (const code of [1011, 4008, 1013]) {
      s.app.socket.disconnect(socket.connectionId as string, code)
      await reconnected(socket)
    }
    t.same(retries(), ['retry in 10 ms', 'retry in 20 ms', 'retry in 320 ms'], '1013 waits three doublings more')
    // Stays up longer than resetAfter (a timer started after the client's fires after it): back to the bottom.
    await sleep(400)
    s.app.socket.disconnect(socket.connectionId as string, 1001)
    await reconnected(socket)
    t.same(retries().slice(3), ['retry in 10 ms'])
    t.same(s.closes.items, [1011, 4008, 1013, 1001])
  })

  t.test('reconnect: false stops at the first close', async (t) => {
    const s = await server(t)
    const { socket, errors } = client(t, { url: `${s.base}/ws/a`, token: ann, reconnect: false })
    await inState(socket, 'open')
    s.app.socket.disconnect(socket.connectionId as string, 1001)
    await inState(socket, 'closed')
    t.equal(errors.items[0]?.code, 'FST_SOCKET_CONNECTION_CLOSED')
    t.equal(errors.items[0]?.closeCode, 1001)
    t.equal(s.upgrades.items.length, 1)
  })

  t.test('reconnect: false and a failing provider: closed, queued messages reported', async (t) => {
    const port = await freePort()
    const { socket, errors } = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, token: async () => { throw new Error('no token') }, reconnect: false })
    socket.send('room-a', 'note', 1)
    await inState(socket, 'closed')
    t.same(errors.items.map((e) => e.code), ['FST_SOCKET_TOKEN_PROVIDER', 'FST_SOCKET_MESSAGE_DROPPED'])
    t.equal(socket.queued, 0)
  })

  t.test('a WebSocket constructor that throws is reported and tried again', async (t) => {
    const s = await server(t)
    let constructed = 0
    class Flaky extends WebSocket {
      constructor (url: string, protocols?: string | string[]) {
        if (++constructed === 1) throw new Error('no sockets today')
        super(url, protocols)
      }
    }
    const { socket, errors } = client(t, { url: `${s.base}/ws/a`, token: ann, WebSocket: Flaky })
    await inState(socket, 'open')
    t.equal(constructed, 2)
    t.equal(errors.items[0]?.code, 'FST_SOCKET_CONNECT_FAILED')
    t.match(errors.items[0]?.message, /no sockets today/)
  })
})

t.test('close codes that stop', async (t) => {
  for (const code of [4000, 4003, 1000]) {
    t.test(`${code}`, async (t) => {
      const s = await server(t)
      let calls = 0
      const { socket, errors } = client(t, { url: `${s.base}/ws/a`, token: () => { calls++; return ann } })
      await inState(socket, 'open')
      s.app.socket.disconnect(socket.connectionId as string, code, code === 4000 ? 'bye' : '')
      await errors.count(1)
      t.equal(socket.state, 'closed')
      const [err] = errors.items
      t.equal(err?.code, 'FST_SOCKET_CONNECTION_CLOSED')
      t.equal(err?.closeCode, code)
      t.match(err?.message, code === 4000 ? `(${code}: bye)` : `(${code})`)
      t.equal(calls, 1, 'no new token asked for')
      t.equal(s.upgrades.items.length, 1, 'no reconnection')
      t.equal(socket.send('room-a', 'note', 1), false)
      t.equal(errors.items[1]?.code, 'FST_SOCKET_MESSAGE_DROPPED', 'a send after the end is reported')
    })
  }
})

t.test('4001: a fresh token once', async (t) => {
  t.test('with a provider it reconnects with a new token', async (t) => {
    const s = await server(t)
    const tokens: string[] = []
    const { socket, errors, states } = client(t, {
      url: `${s.base}/ws/a`,
      token: () => { tokens.push(sign({ sub: 'ann', n: tokens.length + 1 })); return tokens.at(-1) as string }
    })
    await inState(socket, 'open')
    const first = socket.connectionId
    s.app.socket.disconnect(first as string, 4001, 'token expired')
    await reconnected(socket)
    t.equal(tokens.length, 2)
    t.not(tokens[0], tokens[1])
    t.same(s.upgrades.items.map((u) => u.protocol), tokens.map((token) => `forge.v1, bearer.${token}`))
    t.not(socket.connectionId, first)
    t.same(states.items, ['connecting>open', 'open>reconnecting', 'reconnecting>open'])
    t.same(errors.items, [])
  })

  t.test('a second 4001 in a row stops', async (t) => {
    const s = await server(t)
    let calls = 0
    const { socket, errors } = client(t, { url: `${s.base}/ws/a`, token: () => { calls++; return ann } })
    // The server refuses every connection with 4001 as soon as it is open.
    socket.on('connected', (m) => { s.app.socket.disconnect(m.param.connectionId, 4001, 'token expired') })
    await inState(socket, 'closed')
    t.equal(calls, 2, 'one fresh token, no more')
    t.equal(s.upgrades.items.length, 2)
    t.equal(errors.items.length, 1)
    t.equal(errors.items[0]?.code, 'FST_SOCKET_CONNECTION_CLOSED')
    t.equal(errors.items[0]?.closeCode, 4001)
  })

  t.test('once the connection stayed up, a later 4001 gets a fresh token again', async (t) => {
    const s = await server(t)
    let calls = 0
    const { socket, errors } = client(t, { url: `${s.base}/ws/a`, token: () => { calls++; return ann }, reconnect: { initialDelay: 20, resetAfter: 40 } })
    await inState(socket, 'open')
    for (let i = 0; i < 2; i++) {
      await sleep(40) // longer than resetAfter, started after the client's timer
      s.app.socket.disconnect(socket.connectionId as string, 4001)
      await reconnected(socket)
    }
    t.equal(calls, 3)
    t.same(errors.items, [])
  })

  t.test('with a plain string token it stops', async (t) => {
    const s = await server(t)
    const { socket, errors } = client(t, { url: `${s.base}/ws/a`, token: ann })
    await inState(socket, 'open')
    s.app.socket.disconnect(socket.connectionId as string, 4001)
    await inState(socket, 'closed')
    t.equal(errors.items[0]?.closeCode, 4001)
    t.equal(s.upgrades.items.length, 1)
  })
})

t.test('close()', async (t) => {
  t.test('while open: at once, for good, pending requests rejected', async (t) => {
    const s = await server(t)
    const { socket, errors, states } = client(t, { url: `${s.base}/ws/a`, token: ann })
    await inState(socket, 'open')
    const waiting = socket.request('room-a', 'hang', null)
    socket.close()
    t.equal(socket.state, 'closed')
    const err = await rejection(waiting)
    t.equal(err.code, 'FST_SOCKET_CONNECTION_CLOSED')
    t.equal(err.closeCode, 1000)
    await s.closes.count(1)
    t.same(s.closes.items, [1000], 'the server saw a normal close')
    t.equal(socket.send('room-a', 'note', 'late'), false)
    t.equal(errors.items.at(-1)?.code, 'FST_SOCKET_MESSAGE_DROPPED', 'a send after close is reported')
    const late = await rejection(socket.request('room-a', 'echo', 1))
    t.equal(late.code, 'FST_SOCKET_MESSAGE_DROPPED', 'so is a request')
    socket.close()
    t.same(states.items, ['connecting>open', 'open>closed'], 'a second close does nothing')
    t.equal(s.upgrades.items.length, 1, 'never reconnects')
  })

  t.test('while connecting: queued messages are reported dropped', async (t) => {
    const s = await server(t)
    const { socket, errors } = client(t, { url: `${s.base}/ws/a`, token: ann })
    socket.send('room-a', 'note', 1)
    socket.send('room-a', 'note', 2)
    const request = socket.request('room-a', 'echo', 3)
    t.equal(socket.queued, 3)
    socket.close()
    t.equal(socket.queued, 0)
    t.same(errors.items.map((e) => e.code), ['FST_SOCKET_MESSAGE_DROPPED', 'FST_SOCKET_MESSAGE_DROPPED'])
    t.match(errors.items[0]?.message, /closed/)
    t.equal((await rejection(request)).code, 'FST_SOCKET_MESSAGE_DROPPED', 'the queued request is rejected, not reported twice')
    t.equal(errors.items.length, 2)
  })

  t.test('while waiting to reconnect', async (t) => {
    const port = await freePort()
    const { socket, lines } = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, token: ann, reconnect: { initialDelay: 10_000, jitter: 0 } })
    await inState(socket, 'reconnecting')
    socket.close()
    t.equal(socket.state, 'closed')
    t.equal(lines.items.filter((l) => l.includes('connect ws://')).length, 1, 'one attempt only')
  })

  t.test('while the provider is still working: no connection is made', async (t) => {
    let constructed = 0
    class Counting extends WebSocket {
      constructor (url: string, protocols?: string | string[]) {
        constructed++
        super(url, protocols)
      }
    }
    const release: Array<(fail: boolean) => void> = []
    const provider = (): Promise<string> => new Promise((resolve, reject) => {
      release.push((fail) => fail ? reject(new Error('too late')) : resolve(ann))
    })
    for (const fail of [false, true]) {
      const { socket } = client(t, { url: 'ws://127.0.0.1:9/ws/a', token: provider, WebSocket: Counting })
      socket.close()
      release.shift()?.(fail)
      await new Promise((resolve) => setImmediate(resolve))
      t.equal(socket.state, 'closed', fail ? 'provider failed after close' : 'provider answered after close')
    }
    t.equal(constructed, 0)
  })
})

t.test('the queue through the Socket', async (t) => {
  t.test("drop-oldest: the oldest goes, reported; the rest is delivered once the server is up", async (t) => {
    const port = await freePort()
    const { socket, errors } = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, token: ann, queue: { max: 2 } })
    const request = socket.request('room-a', 'echo', 'first', { timeout: 10_000 })
    socket.send('room-a', 'note', 'a')
    socket.send('room-a', 'note', 'b') // the request is the oldest: it goes
    t.equal((await rejection(request)).code, 'FST_SOCKET_MESSAGE_DROPPED')
    socket.send('room-a', 'note', 'c') // now 'a' goes
    t.equal(socket.queued, 2)
    t.equal(errors.items.length, 1)
    t.equal(errors.items[0]?.code, 'FST_SOCKET_MESSAGE_DROPPED')
    t.match(errors.items[0]?.message, /overflow/)
    const s = await server(t, {}, port)
    await s.notes.count(2)
    t.same(s.notes.items, ['b', 'c'])
  })

  t.test("overflow 'error' throws from send and rejects a request", async (t) => {
    const port = await freePort()
    const { socket, errors } = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, token: ann, queue: { max: 1, overflow: 'error' } })
    socket.send('room-a', 'note', 'a')
    t.throws(() => socket.send('room-a', 'note', 'b'), { code: 'FST_SOCKET_QUEUE_FULL' })
    t.equal((await rejection(socket.request('room-a', 'echo', 1))).code, 'FST_SOCKET_QUEUE_FULL')
    t.equal(socket.queued, 1)
    t.same(errors.items, [], 'nothing was dropped')
  })

  t.test('expired messages are reported, not sent', async (t) => {
    const port = await freePort()
    const { socket, errors } = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, token: ann, queue: { ttl: 1 } })
    socket.send('room-a', 'note', 'stale')
    await sleep(5)
    const s = await server(t, {}, port)
    await inState(socket, 'open')
    socket.send('room-a', 'note', 'fresh')
    await s.notes.count(1)
    t.same(s.notes.items, ['fresh'])
    const dropped = errors.items.filter((e) => e.code !== 'FST_SOCKET_HANDSHAKE_FAILED')
    t.equal(dropped[0]?.code, 'FST_SOCKET_MESSAGE_DROPPED')
    t.match(dropped[0]?.message, /expired/)
  })
})

t.test('heartbeat', async (t) => {
  t.test('a silent server is pinged, then given up on', async (t) => {
    const raw = await rawServer(t)
    const { socket, lines, states } = client(t, { url: raw.url, heartbeat: { interval: 50, timeout: 150 } })
    await raw.received.until((items) => items.some((r) => r.message.cmd === 'ping'))
    t.match(raw.received.items[0], { n: 0, message: { channel: 'home', cmd: 'ping', param: null } }, 'a ping on the home channel')
    await states.until((items) => items.includes('reconnecting>open'))
    socket.close()
    t.equal(raw.connections.items.length, 2, 'it gave up on the first connection and made a second')
    t.equal(socket.connectionId, 'raw-1')
    t.ok(lines.items.some((l) => /server silent for \d+ ms/.test(l)))
    t.ok(lines.items.includes('[forge-socket] closed 1006 heartbeat timeout'))
  })

  t.test('a server that answers keeps the connection', async (t) => {
    const s = await server(t)
    const { socket, states } = client(t, { url: `${s.base}/ws/a`, token: ann, heartbeat: { interval: 30, timeout: 150 } })
    await inState(socket, 'open')
    const opened = Date.now()
    const pongs = new Seen<Message>()
    socket.on('pong', (m) => pongs.push(m))
    // Up for longer than interval + timeout: without the pongs it would have given up by now.
    await pongs.until((items) => items.length >= 3 && Date.now() - opened > 200)
    t.same(states.items, ['connecting>open'])
    t.equal(s.upgrades.items.length, 1)
  })
})

t.test('handshake timeout', async (t) => {
  t.test('a server that takes the TCP connection and never answers the upgrade is given up on, and retried', async (t) => {
    const accepted = new Seen<NetSocket>()
    const tcp = createServer((sock) => accepted.push(sock))
    tcp.listen(0, '127.0.0.1')
    await once(tcp, 'listening')
    t.after(async () => {
      for (const sock of accepted.items) sock.destroy()
      tcp.close()
      await once(tcp, 'close')
    })
    const { port } = tcp.address() as AddressInfo
    const { socket, lines, states, errors } = client(t, { url: `ws://127.0.0.1:${port}/ws`, connectTimeout: 100 })
    await accepted.count(2)
    t.equal(states.items[0], 'connecting>reconnecting')
    t.ok(lines.items.includes('[forge-socket] no connected within 100 ms'))
    t.ok(lines.items.includes('[forge-socket] closed 1006 handshake timeout'))
    t.match(errors.items[0], { code: 'FST_SOCKET_HANDSHAKE_FAILED', closeCode: 1006, message: 'The connection could not be established (handshake timeout)' })
    socket.close()
  })

  t.test('an upgrade without `connected` is given up on too; one with it in time stays open', async (t) => {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1' })
    await once(wss, 'listening')
    const connections = new Seen<WebSocket>()
    wss.on('connection', (ws) => {
      const n = connections.items.length
      connections.push(ws)
      // The first connection is upgraded and then left silent.
      if (n > 0) ws.send(JSON.stringify({ channel: 'home', cmd: 'connected', param: { connectionId: `raw-${n}`, channels: ['home'] } }))
    })
    t.after(async () => {
      for (const ws of wss.clients) ws.terminate()
      wss.close()
      await once(wss, 'close')
    })
    const { port } = wss.address() as AddressInfo
    const { socket, states } = client(t, { url: `ws://127.0.0.1:${port}/ws`, connectTimeout: 100, heartbeat: false })
    await inState(socket, 'open')
    t.same(states.items, ['connecting>reconnecting', 'reconnecting>open'])
    t.equal(socket.connectionId, 'raw-1')
    // Past the timeout, the open connection is kept: the timer ended with `connected`.
    const [, second] = connections.items as [WebSocket, WebSocket]
    await sleep(250)
    t.equal(socket.state, 'open')
    t.equal(second.readyState, WebSocket.OPEN)
    t.equal(connections.items.length, 2)
  })
})

t.test('frames the client cannot use are reported', async (t) => {
  const raw = await rawServer(t, (ws) => {
    for (const frame of ['not json', '"text"', 'null', '{"channel":"home"}']) ws.send(frame)
    ws.send(JSON.stringify({ channel: 'home', cmd: 'error', param: { code: 'SERVER_SAYS', message: 'something happened' } }))
    ws.send(JSON.stringify({ channel: 'home', cmd: 'reply', param: 1, ref: 'r99' }))
  })
  const { socket, errors } = client(t, { url: raw.url, heartbeat: false })
  const seen = new Seen<Message>()
  socket.on('*', (m) => seen.push(m))
  await seen.until((m) => m.some((x) => x.cmd === 'reply'))
  t.same(errors.items.map((e) => e.code), ['FST_SOCKET_BAD_FRAME', 'FST_SOCKET_BAD_FRAME', 'FST_SOCKET_BAD_FRAME', 'FST_SOCKET_BAD_FRAME', 'SERVER_SAYS'])
  t.equal(errors.items[4]?.message, 'something happened')
  t.same(seen.items.map((m) => m.cmd), ['connected', 'error', 'reply'], 'an error or a reply nobody waits for still reaches listeners')
  t.equal(socket.state, 'open')
})

t.test("the browser's 'online' event retries at once", async (t) => {
  const target = new EventTarget()
  const g = globalThis as { addEventListener?: unknown, removeEventListener?: unknown }
  const removed: string[] = []
  g.addEventListener = (type: string, fn: () => void) => target.addEventListener(type, fn)
  g.removeEventListener = (type: string, fn: () => void) => { removed.push(type); target.removeEventListener(type, fn) }
  t.after(() => {
    delete g.addEventListener
    delete g.removeEventListener
  })
  const s = await server(t)
  const { socket, lines } = client(t, { url: `${s.base}/ws/a`, token: ann, reconnect: { initialDelay: 60_000, maxDelay: 60_000, jitter: 0 } })
  await inState(socket, 'open')
  const attempts = (): number => lines.items.filter((l) => l.includes('connect ws://')).length
  target.dispatchEvent(new Event('online'))
  t.equal(attempts(), 1, 'online while open does nothing')

  s.app.socket.disconnect(socket.connectionId as string, 1001)
  await inState(socket, 'reconnecting')
  t.ok(lines.items.includes('[forge-socket] retry in 60000 ms'))
  target.dispatchEvent(new Event('online'))
  t.equal(attempts(), 2, 'the next attempt started at once')
  t.ok(lines.items.includes('[forge-socket] online: retry now'))
  await inState(socket, 'open')
  t.equal(s.upgrades.items.length, 2)

  socket.close()
  t.same(removed, ['online'], 'close() removes the listener')
  target.dispatchEvent(new Event('online'))
  t.equal(attempts(), 2)
})

t.test('debug lines', async (t) => {
  const s = await server(t)
  const token = sign({ sub: 'ann', secret: 'claim-value' })
  const { socket, lines } = client(t, { url: `${s.base}/ws/a`, token })
  socket.send('room-a', 'note', { password: 'hunter2' })
  await inState(socket, 'open')
  socket.send('room-a', 'note', { password: 'hunter3' })
  t.same(await socket.request('room-a', 'echo', { secret: 's3cret' }), { secret: 's3cret' })
  s.app.socket.disconnect(socket.connectionId as string, 1001, 'maintenance')
  await inState(socket, 'reconnecting')
  socket.send('room-a', 'note', { password: 'hunter4' })
  await inState(socket, 'open')
  await s.notes.count(3)
  socket.close()

  const text = lines.items.map((l) => l.replace('[forge-socket] ', ''))
  t.ok(lines.items.every((l) => l.startsWith('[forge-socket] ')), 'every line is tagged')
  t.same(new Set(text.filter((l) => l.startsWith('connect '))), new Set([`connect ${s.base}/ws/a`]))
  for (const expected of [
    'queue room-a:note (1 queued)',
    'state open',
    'recv room-a:connected',
    'flush 1 queued',
    'send room-a:note',
    'send room-a:echo',
    'recv room-a:reply',
    'closed 1001 maintenance',
    'state reconnecting',
    'close 1000',
    'state closed'
  ]) t.ok(text.includes(expected), expected)
  t.ok(text.some((l) => /^retry in \d+ ms$/.test(l)), 'retry in N ms')
  for (const secret of [token, 'hunter', 's3cret', 'claim-value', 'password']) {
    t.notOk(lines.items.some((l) => l.includes(secret)), `no line contains ${secret === token ? 'the token' : secret}`)
  }

  const quiet = client(t, { url: `${s.base}/ws/a`, token, debug: undefined })
  quiet.socket.send('room-a', 'note', 'quiet')
  await inState(quiet.socket, 'open')
  await s.notes.count(4)
  quiet.socket.close()
  t.same(quiet.lines.items, [], 'debug is off by default')
})
