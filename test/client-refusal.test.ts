import t, { type Test } from 'tap'
import { once } from 'node:events'
import { createServer, type IncomingMessage } from 'node:http'
import type { AddressInfo, Socket as NetSocket } from 'node:net'
import { forbidden, badRequest } from '../plugin.js'
import { build, listen, sign } from './helpers/server.js'
import { freePort } from './helpers/demo-process.js'
import { inState, linesStarting, reconnected, recordedClient as client, Seen } from './helpers/client-state.js'

// The Node client (with `ws`, which shows a refused upgrade's status) against servers that refuse the upgrade
// with an HTTP status: what it reports, and whether it stops, asks for a fresh token, or backs off; and
// `reconnect.maxAttempts`, which ends the retries of a client that never gets through.

const ann = sign({ sub: 'ann' })
const expired = sign({ sub: 'ann', exp: Math.floor(Date.now() / 1000) - 60 })

/** What the act handler does with each upgrade, in turn: throw the error, or (undefined, or past the end) accept. */
type Plan = Array<Error | undefined>

/** An HTTP error as an act handler throws it; Fastify sends `headers` with the reply. */
function refusal (statusCode: number, code: string, headers?: Record<string, string>): Error {
  return Object.assign(new Error(`refused with ${statusCode}`), { statusCode, code, headers })
}

/**
 * forge-socket with `/ws/:room` (token required), whose act handler follows `plan`; `upgrades` counts every
 * upgrade request, refused or not, and `notes` records the `note` commands that reached it.
 */
async function server (t: Test, plan: Plan = []): Promise<{ base: string, upgrades: Seen<string>, notes: Seen<unknown>, disconnect: (code: number) => void }> {
  const upgrades = new Seen<string>()
  const notes = new Seen<unknown>()
  const app = await build({}, (app) => {
    app.get('/ws/:room', app.socket.act('room', (app, ps) => {
      const next = plan.shift()
      if (next !== undefined) throw next
      return ps.upgrade(`room-${ps.requestString('room', true)}`)
    }))
    app.socket.command('note', { handler: (param) => { notes.push(param) } })
  })
  app.server.prependListener('upgrade', (req: IncomingMessage) => upgrades.push(req.url ?? ''))
  t.after(() => app.close())
  const base = await listen(app)
  const disconnect = (code: number): void => {
    for (const info of app.socket.connections()) app.socket.disconnect(info.id, code)
  }
  return { base, upgrades, notes, disconnect }
}

/** A plain `node:http` server that answers every upgrade with what `answer` writes on the raw socket. */
async function httpServer (t: Test, answer: (socket: NetSocket) => void): Promise<{ url: string, upgrades: Seen<string> }> {
  const upgrades = new Seen<string>()
  const sockets = new Set<NetSocket>()
  const http = createServer()
  http.on('upgrade', (req: IncomingMessage, socket: NetSocket) => {
    sockets.add(socket)
    socket.on('error', () => {})
    upgrades.push(req.url ?? '')
    answer(socket)
  })
  http.listen(0, '127.0.0.1')
  await once(http, 'listening')
  t.after(async () => {
    for (const socket of sockets) socket.destroy()
    http.close()
    await once(http, 'close')
  })
  return { url: `ws://127.0.0.1:${(http.address() as AddressInfo).port}/ws`, upgrades }
}

t.test('401', async (t) => {
  t.test('without a token provider: reported with the status and the server\'s code, and the client stops', async (t) => {
    const s = await server(t)
    const { socket, errors, states } = client(t, { url: `${s.base}/ws/a`, token: expired })
    socket.send('room-a', 'note', 'queued')
    await inState(socket, 'closed')
    t.match(errors.items[0], {
      name: 'SocketError',
      code: 'FST_SOCKET_UPGRADE_REFUSED',
      status: 401,
      serverCode: 'FST_SOCKET_TOKEN_EXPIRED',
      closeCode: undefined,
      message: 'The server refused the upgrade with HTTP 401 (FST_SOCKET_TOKEN_EXPIRED)'
    })
    t.same(errors.items.map((e) => e.code), ['FST_SOCKET_UPGRADE_REFUSED', 'FST_SOCKET_MESSAGE_DROPPED'], 'then the queued message is reported dropped')
    t.same(states.items, ['connecting>closed'])
    t.equal(s.upgrades.items.length, 1, 'never retried')
  })

  t.test('with a provider: one fresh token, and the connection opens', async (t) => {
    const s = await server(t)
    const tokens = [expired, ann]
    let calls = 0
    const c = client(t, { url: `${s.base}/ws/a`, token: () => tokens[calls++] as string })
    c.socket.send('room-a', 'note', 'queued')
    await inState(c.socket, 'open')
    t.equal(calls, 2)
    t.same(c.errors.items.map((e) => [e.code, e.status]), [['FST_SOCKET_UPGRADE_REFUSED', 401]], 'the refusal is reported even though it was recovered from')
    t.ok(c.lines.items.includes('[forge-socket] refused 401 FST_SOCKET_TOKEN_EXPIRED'))
    t.same(linesStarting(c, 'retry in'), [], 'at once, without a backoff delay')
    await s.notes.count(1)
    t.same(s.notes.items, ['queued'])
  })

  t.test('refused again: the provider was asked exactly once more, and the client stops', async (t) => {
    const s = await server(t)
    let calls = 0
    const { socket, errors } = client(t, { url: `${s.base}/ws/a`, token: () => { calls++; return expired } })
    await inState(socket, 'closed')
    t.equal(calls, 2)
    t.equal(s.upgrades.items.length, 2)
    t.same(errors.items.map((e) => [e.code, e.status, e.serverCode]), [
      ['FST_SOCKET_UPGRADE_REFUSED', 401, 'FST_SOCKET_TOKEN_EXPIRED'],
      ['FST_SOCKET_UPGRADE_REFUSED', 401, 'FST_SOCKET_TOKEN_EXPIRED']
    ])
  })

  t.test('an onError that closes the socket stops the fresh-token attempt', async (t) => {
    const s = await server(t)
    let calls = 0
    const c = client(t, { url: `${s.base}/ws/a`, token: () => { calls++; return expired }, onError: () => c.socket.close() })
    await inState(c.socket, 'closed')
    t.equal(calls, 1)
    t.equal(s.upgrades.items.length, 1)
  })
})

t.test('403, 404 and 400 stop', async (t) => {
  const cases: Array<[string, Plan, string, number, string | undefined]> = [
    ['403 from the act handler', [forbidden('room "a"')], '/ws/a', 403, 'FST_SOCKET_FORBIDDEN'],
    ['404: no such route', [], '/nope', 404, undefined],
    ['400 from the act handler', [badRequest('no such room')], '/ws/a', 400, 'FST_SOCKET_BAD_REQUEST']
  ]
  for (const [name, plan, path, status, serverCode] of cases) {
    t.test(name, async (t) => {
      const s = await server(t, plan)
      let calls = 0
      const { socket, errors } = client(t, { url: `${s.base}${path}`, token: () => { calls++; return ann } })
      await inState(socket, 'closed')
      t.same(errors.items.map((e) => [e.code, e.status]), [['FST_SOCKET_UPGRADE_REFUSED', status]])
      // Whatever code the server's body has (Fastify's own 404 body has none).
      if (serverCode !== undefined) t.equal(errors.items[0]?.serverCode, serverCode)
      t.equal(calls, 1, 'no fresh token asked for')
      t.equal(s.upgrades.items.length, 1, 'no retry')
    })
  }
})

t.test('429 with Retry-After: backs off for Retry-After plus the (longer) backoff delay', async (t) => {
  const s = await server(t, [refusal(429, 'FST_SOCKET_TOO_MANY_CONNECTIONS', { 'retry-after': '1' })])
  const { socket, errors, lines } = client(t, { url: `${s.base}/ws/a`, token: ann, reconnect: { initialDelay: 20, jitter: 0 } })
  await lines.until((items) => items.some((l) => l.includes('retry in')))
  t.equal(socket.state, 'reconnecting')
  t.same(errors.items.map((e) => [e.code, e.status, e.serverCode]), [['FST_SOCKET_UPGRADE_REFUSED', 429, 'FST_SOCKET_TOO_MANY_CONNECTIONS']])
  // 1 s from the header, plus 20 ms × 2³ (an overloaded server gets three more doublings, as with 1013).
  t.ok(lines.items.includes('[forge-socket] retry in 1160 ms'))
  socket.close()
})

t.test('503 and 500 back off and try again; the queue is delivered once through', async (t) => {
  for (const [status, error, delay] of [[503, refusal(503, 'FST_SOCKET_SHUTTING_DOWN'), 160], [500, new Error('boom'), 20]] as const) {
    t.test(`${status}`, async (t) => {
      const s = await server(t, [error])
      const c = client(t, { url: `${s.base}/ws/a`, token: ann, reconnect: { initialDelay: 20, jitter: 0 } })
      c.socket.send('room-a', 'note', 'queued')
      await inState(c.socket, 'open')
      t.same(c.errors.items.map((e) => [e.code, e.status]), [['FST_SOCKET_UPGRADE_REFUSED', status]])
      t.same(linesStarting(c, 'retry in'), [`retry in ${delay} ms`], status === 503 ? 'the longer backoff of an overloaded server' : 'the usual backoff')
      await s.notes.count(1)
      t.same(s.notes.items, ['queued'])
      t.equal(s.upgrades.items.length, 2)
    })
  }
})

t.test('a plain HTTP server: a Retry-After date, a body that is not JSON', async (t) => {
  const raw = await httpServer(t, (socket) => {
    const at = new Date(Date.now() + 60_000)
    socket.end(`HTTP/1.1 503 Service Unavailable\r\nRetry-After: ${at.toUTCString()}\r\nContent-Type: text/plain\r\nContent-Length: 11\r\nConnection: close\r\n\r\nmaintenance`)
  })
  const c = client(t, { url: raw.url, reconnect: { initialDelay: 20, jitter: 0 } })
  await c.lines.until((items) => items.some((l) => l.includes('retry in')))
  t.match(c.errors.items, [{ code: 'FST_SOCKET_UPGRADE_REFUSED', status: 503, serverCode: undefined, message: 'The server refused the upgrade with HTTP 503' }])
  const delay = Number(/retry in (\d+) ms/.exec(linesStarting(c, 'retry in')[0] ?? '')?.[1])
  // The date has whole seconds: it is 59–60 s away, plus the 160 ms backoff, less however long the answer took
  // to arrive (a loaded machine may take seconds): far more than any backoff here.
  t.ok(delay >= 30_000 && delay <= 60_160, `waits until the date: ${delay} ms`)
})

t.test('the body is read only so far', async (t) => {
  t.test('a long body that does not end: the refusal is acted on after 4 KiB', async (t) => {
    const raw = await httpServer(t, (socket) => {
      socket.write(`HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n${(5000).toString(16)}\r\n${'x'.repeat(5000)}\r\n`)
    })
    const c = client(t, { url: raw.url, connectTimeout: 60_000 })
    await c.errors.count(1)
    t.match(c.errors.items[0], { code: 'FST_SOCKET_UPGRADE_REFUSED', status: 503, serverCode: undefined })
    await inState(c.socket, 'reconnecting')
  })

  t.test('a body that never comes: the refusal is acted on at connectTimeout', async (t) => {
    const raw = await httpServer(t, (socket) => {
      socket.write('HTTP/1.1 403 Forbidden\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"code":')
    })
    const c = client(t, { url: raw.url, connectTimeout: 50 })
    await inState(c.socket, 'closed')
    t.ok(c.lines.items.includes('[forge-socket] no connected within 50 ms'))
    t.match(c.errors.items, [{ code: 'FST_SOCKET_UPGRADE_REFUSED', status: 403, serverCode: undefined }])
  })
})

t.test('reconnect.maxAttempts', async (t) => {
  t.test('a server that is down: every failed handshake is reported, then the client gives up', async (t) => {
    const port = await freePort()
    const c = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, reconnect: { initialDelay: 5, maxDelay: 10, maxAttempts: 2 } })
    c.socket.send('room-a', 'note', 'queued')
    await inState(c.socket, 'closed')
    t.equal(linesStarting(c, 'connect ').length, 3, 'the first attempt and two more')
    t.same(c.errors.items.map((e) => e.code), [
      'FST_SOCKET_HANDSHAKE_FAILED',
      'FST_SOCKET_HANDSHAKE_FAILED',
      'FST_SOCKET_HANDSHAKE_FAILED',
      'FST_SOCKET_MAX_ATTEMPTS',
      'FST_SOCKET_MESSAGE_DROPPED'
    ])
    t.match(c.errors.items[0], { closeCode: 1006, message: /^The connection could not be established \(connect ECONNREFUSED/ })
    t.equal(c.errors.items[3]?.message, 'Gave up after 2 reconnection attempts in a row (reconnect.maxAttempts)')
    t.same(c.states.items, ['connecting>reconnecting', 'reconnecting>closed'])
  })

  t.test('refusals that back off count too', async (t) => {
    const s = await server(t, [refusal(503, 'FST_SOCKET_SHUTTING_DOWN'), refusal(503, 'FST_SOCKET_SHUTTING_DOWN')])
    const c = client(t, { url: `${s.base}/ws/a`, token: ann, reconnect: { initialDelay: 5, maxDelay: 10, maxAttempts: 1 } })
    await inState(c.socket, 'closed')
    t.same(c.errors.items.map((e) => [e.code, e.status]), [
      ['FST_SOCKET_UPGRADE_REFUSED', 503],
      ['FST_SOCKET_UPGRADE_REFUSED', 503],
      ['FST_SOCKET_MAX_ATTEMPTS', undefined]
    ])
    t.equal(s.upgrades.items.length, 2)
  })

  t.test('0: no attempt after the first', async (t) => {
    const port = await freePort()
    const c = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, reconnect: { maxAttempts: 0 } })
    await inState(c.socket, 'closed')
    t.same(c.errors.items.map((e) => e.code), ['FST_SOCKET_HANDSHAKE_FAILED', 'FST_SOCKET_MAX_ATTEMPTS'])
  })

  t.test('attempts in a row: connections that did not stay up for resetAfter do not start the count again', async (t) => {
    const s = await server(t)
    const c = client(t, { url: `${s.base}/ws/a`, token: ann, reconnect: { initialDelay: 5, resetAfter: 60_000, maxAttempts: 1 } })
    await inState(c.socket, 'open')
    s.disconnect(1011)
    await reconnected(c.socket)
    s.disconnect(1011)
    await inState(c.socket, 'closed')
    t.same(c.errors.items.map((e) => e.code), ['FST_SOCKET_MAX_ATTEMPTS'], 'a reconnection after a close is no error; giving up is')
    t.equal(s.upgrades.items.length, 2)
  })
})

t.test('reconnect: false with a failed handshake: one error, then closed', async (t) => {
  const port = await freePort()
  const c = client(t, { url: `ws://127.0.0.1:${port}/ws/a`, reconnect: false })
  await inState(c.socket, 'closed')
  t.same(c.errors.items.map((e) => e.code), ['FST_SOCKET_HANDSHAKE_FAILED'])
})
