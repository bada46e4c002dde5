// Hardening items 13 and 14: churn leaves nothing behind; a graceful shutdown with many clients connected.
import t from 'tap'
import { createHook } from 'node:async_hooks'
import type { Socket } from 'node:net'
import type { FastifyInstance } from 'fastify'
import WebSocket from 'ws'
import { closes, idOf, serve, sign, connect, refused, type Client } from './helpers/server.js'

const HOME = 'churn-home'
const EXTRA = 'churn-extra'

/** Beside the room route. */
function route (app: FastifyInstance): void {
  app.get('/ws/churn', app.socket.act('churn', (app, ps) => ps.upgrade(HOME)))
}

/**
 * Timers created while the hook is enabled and still armed, `unref`ed ones included
 * (`process.getActiveResourcesInfo()` leaves those out, and the expiry and heartbeat timers are unref'd). A cleared
 * timer's destroy hook runs a little later, so a timer counts while it is armed (`_idleTimeout` is -1 once cleared).
 */
const timers = new Map<number, { _idleTimeout?: number }>()
const timerHook = createHook({
  init (asyncId, type, _trigger, resource) { if (type === 'Timeout') timers.set(asyncId, resource as { _idleTimeout?: number }) },
  destroy (asyncId) { timers.delete(asyncId) }
})
const armedTimers = (): number => [...timers.values()].filter((timer) => timer._idleTimeout !== -1).length

t.test('1,000 connect/subscribe/close cycles leave everything at its baseline', async (t) => {
  const WORKERS = 20
  const CYCLES = 1000
  const { app, base } = await serve(t, {
    // One slot per worker and per user: a slot that churn failed to free shows up as a refusal at the end.
    connectionLimits: { perIp: WORKERS, perUser: 1 },
    heartbeat: { interval: 1000, timeout: 800 },
    authorizeChannel: (_profile, channel) => channel === EXTRA
  }, route)
  const closed = closes(app)
  const url = `${base}/ws/churn`
  // Tokens with `exp`, so each connection arms an expiry timer.
  const tokens = Array.from({ length: WORKERS }, (_, w) => sign({ sub: `worker-${w}` }, { expiresIn: 3_600_000 }))

  // A first cycle warms up what is created once (the heartbeat's check timer, lazy module state).
  const warm = await connect(url, tokens[0])
  warm.client.close()
  await closed.wait(idOf(warm.connected))

  timerHook.enable()
  t.after(() => timerHook.disable())
  const baseline = {
    timers: armedTimers(),
    upgrade: app.server.listenerCount('upgrade'),
    request: app.server.listenerCount('request'),
    connection: app.server.listenerCount('connection')
  }

  let peak = 0
  let done = 0
  const codes = new Map<number, number>()
  async function worker (w: number): Promise<void> {
    while (done < CYCLES) {
      done++
      const { client, connected } = await connect(url, tokens[w])
      peak = Math.max(peak, app.socket.status().connections)
      const reply = await client.request(EXTRA, 'subscribe', null)
      if (reply.cmd !== 'reply') throw new Error(`subscribe refused: ${JSON.stringify(reply)}`)
      client.close()
      const [code] = await Promise.all([closed.wait(idOf(connected)), client.closed])
      codes.set(code, (codes.get(code) ?? 0) + 1)
    }
  }
  await Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w)))

  t.strictSame([...codes], [[1000, CYCLES]], `${CYCLES} cycles, each closed normally and seen by onClose`)
  t.ok(peak > 1, `cycles overlapped (up to ${peak} connections at once)`)
  t.match(app.socket.status(), { connections: 0, channels: 0 }, 'no connection and no channel left')
  t.strictSame(app.socket.channels(), [], 'channels() is empty')
  t.strictSame(app.socket.connections(), [], 'connections() is empty')
  t.strictSame(await app.socket.presence(HOME), [], `nobody present in ${HOME}`)
  t.strictSame(await app.socket.presence(EXTRA), [], `nobody present in ${EXTRA}`)
  // The heartbeat's check timer comes and goes with each ping round, so allow it; 1,000 leaked expiry timers wouldn't fit.
  const armed = armedTimers()
  t.ok(armed <= baseline.timers + 1, `timers at their baseline (${armed}, baseline ${baseline.timers})`)
  t.equal(app.server.listenerCount('upgrade'), baseline.upgrade, "the server's 'upgrade' listeners are unchanged")
  t.equal(app.server.listenerCount('request'), baseline.request, "the server's 'request' listeners are unchanged")
  t.equal(app.server.listenerCount('connection'), baseline.connection, "the server's 'connection' listeners are unchanged")

  // The per-IP and per-user counters are empty again: every churned user connects at once, which fills the per-IP
  // limit exactly; one more is refused.
  const again = await Promise.all(tokens.map(async (token) => await connect(url, token)))
  t.equal(app.socket.status().connections, WORKERS, 'each churned user connects again (perUser 1, perIp full)')
  const { status, body } = await refused(url, { headers: { authorization: `Bearer ${sign({ sub: 'one-more' })}` } })
  t.equal(status, 429, 'the limit itself still holds')
  t.equal(body.code, 'FST_SOCKET_TOO_MANY_CONNECTIONS')
  for (const { client } of again) client.close()
  await Promise.all(again.map(async ({ connected }) => await closed.wait(idOf(connected))))
  t.equal(app.socket.status().connections, 0)
})

/** Tries to open a WebSocket; resolves with how it failed, or 'open'. */
function attempt (url: string, token: string): Promise<string> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, { headers: { authorization: `Bearer ${token}` } })
    ws.on('open', () => { ws.terminate(); resolve('open') })
    ws.on('unexpected-response', (_req, res) => { res.resume(); ws.terminate(); resolve(`http ${res.statusCode ?? 0}`) })
    ws.on('error', (err) => { resolve(`error ${(err as NodeJS.ErrnoException).code ?? err.message}`) })
  })
}

t.test('graceful shutdown with 100 clients: 1001 for each, no new upgrade, stragglers terminated, close resolves', async (t) => {
  const { app, base } = await serve(t, { shutdownTimeout: 200 }, route)
  const closed = closes(app)
  const clients: Array<{ client: Client, id: string }> = await Promise.all(Array.from({ length: 100 }, async (_, i) => {
    const { client, connected } = await connect(`${base}/ws/${i % 4}`, sign({ sub: `user-${i}` }))
    return { client, id: idOf(connected) }
  }))
  t.equal(app.socket.status().connections, 100, '100 clients connected')
  // Five stragglers stop reading: they cannot answer the closing handshake.
  const stragglers = clients.slice(0, 5)
  const prompt = clients.slice(5)
  const sockets = stragglers.map(({ client }) => (client.ws as unknown as { _socket: Socket })._socket)
  for (const socket of sockets) socket.pause()

  const closing = app.close()
  const first = await prompt[0]?.client.closed
  t.strictSame(first, { code: 1001, reason: 'server shutting down' }, 'the drain has started')
  t.equal(app.socket.status().closing, true, 'status() reports the shutdown')
  const late = await attempt(`${base}/ws/0`, sign({ sub: 'late' }))
  t.not(late, 'open', `a connection attempted during the shutdown does not open (${late})`)

  await closing
  t.pass('app.close() resolved')
  const promptCodes = await Promise.all(prompt.map(async ({ client }) => await client.closed))
  t.equal(promptCodes.filter((c) => c.code === 1001 && c.reason === 'server shutting down').length, 95, 'each prompt client got 1001')
  t.strictSame(prompt.map(({ id }) => closed.codes.get(id)), prompt.map(() => 1001), 'and completed the handshake (onClose 1001)')
  t.strictSame(stragglers.map(({ id }) => closed.codes.get(id)), [1006, 1006, 1006, 1006, 1006], 'the stragglers were terminated at the deadline (onClose 1006)')
  t.equal(closed.codes.size, 100, 'onClose ran once for every connection')
  t.equal(app.socket.status().connections, 0, 'no connection left')

  // The close frame was on the wire before the stragglers were cut: they read 1001 once they read again.
  for (const socket of sockets) socket.resume()
  const stragglerCodes = await Promise.all(stragglers.map(async ({ client }) => (await client.closed).code))
  t.strictSame(stragglerCodes, [1001, 1001, 1001, 1001, 1001], 'the stragglers were told 1001 too')
  t.equal(await attempt(`${base}/ws/0`, sign({ sub: 'later' })), 'error ECONNREFUSED', 'after close, nothing listens')
})

t.test('with auth.query on, an upgrade during the shutdown is refused too, and app.close() still resolves', async (t) => {
  // The query-token listener used to be left as the only `upgrade` listener while draining: such an upgrade reached
  // no one, hung, and held app.close() until the client gave up.
  const { app, base } = await serve(t, { auth: { query: true }, shutdownTimeout: 200 }, route)
  const { client: prompt } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const { client: straggler } = await connect(`${base}/ws/a`, sign({ sub: 'bob' }))
  const socket = (straggler.ws as unknown as { _socket: Socket })._socket
  socket.pause()

  const closing = app.close()
  t.equal((await prompt.closed).code, 1001, 'the drain has started')
  const late = await attempt(`${base}/ws/b?token=${sign({ sub: 'late' })}`, sign({ sub: 'late' }))
  t.equal(late, 'http 503', 'refused with 503 while draining')
  await closing
  t.pass('app.close() resolved')
  t.equal(app.server.listenerCount('upgrade'), 0, 'no upgrade listener is left behind')
  socket.resume()
  t.equal((await straggler.closed).code, 1001)
})
