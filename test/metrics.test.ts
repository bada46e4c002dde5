// Prometheus metrics (`metrics` option, prom-client): the values a scrape shows after known traffic, on the app's
// own registry; the option's checks; the metrics leave the registry when the app closes.
import t, { type Test } from 'tap'
import { Registry, register as defaultRegistry } from 'prom-client'
import type { FastifyInstance } from 'fastify'
import { build, closes, connect, listen, refused, sign } from './helpers/server.js'
import type { ForgeSocketOptions } from '../plugin.js'

async function start (t: Test, options: ForgeSocketOptions = {}): Promise<{ app: FastifyInstance, base: string, registry: Registry, closed: (id: string) => Promise<number> }> {
  const registry = new Registry()
  const app = await build({ metrics: { registry }, presence: false, ...options }, (app) => {
    app.get('/ws/room/:room', app.socket.act('room', (app, ps) => ps.upgrade(`room-${ps.requestString('room', true)}`)))
    app.socket.command('echo', { handler: (param) => param })
  })
  t.after(() => app.close())
  const closed = closes(app).wait
  return { app, base: await listen(app), registry, closed }
}

/** One sample of a metric: its value with these labels (0 when it has none yet), `_count` / `_sum` for histograms. */
async function sample (registry: Registry, name: string, labels: Record<string, string> = {}, metricName = name): Promise<number> {
  const metric = (await registry.getMetricsAsJSON()).find((m) => m.name === name)
  if (metric === undefined) throw new Error(`no metric ${name}`)
  const found = metric.values.find((v) => ((v as { metricName?: string }).metricName ?? name) === metricName && Object.entries(labels).every(([k, value]) => String(v.labels[k]) === value))
  return found?.value ?? 0
}

async function open (base: string, user: string, room = 'a'): Promise<Awaited<ReturnType<typeof connect>> & { id: string }> {
  const opened = await connect(`${base}/ws/room/${room}`, sign({ sub: user }))
  return { ...opened, id: (opened.connected.param as { connectionId: string }).connectionId }
}

t.test('after known traffic, the metrics say what happened', async (t) => {
  const { app, base, registry, closed } = await start(t, { rateLimit: { perSecond: 1, burst: 3 } })
  const p = 'forge_socket_'
  t.equal(await sample(registry, `${p}connections`), 0)
  t.equal(await sample(registry, `${p}broker_up`), 1, 'the memory broker is up')

  const ann = await open(base, 'ann')
  const bob = await open(base, 'bob')
  const carl = await open(base, 'carl', 'b')
  const anonymous = await refused(`${base}/ws/room/a`)
  t.equal(anonymous.status, 401)
  t.equal(await sample(registry, `${p}handshakes_total`, { result: 'accepted' }), 3)
  t.equal(await sample(registry, `${p}handshakes_total`, { result: '401' }), 1, 'a refusal is counted by its status')
  t.equal(await sample(registry, `${p}connections`), 3)
  t.equal(await sample(registry, `${p}channels`), 2)

  // Two broadcasts to room-a (2 members) and one to room-b (1): one histogram observation each, not one per recipient.
  app.socket.broadcast('room-a', { cmd: 'news', param: 'x'.repeat(100) })
  app.socket.broadcast('room-a', { cmd: 'news', param: 'y' })
  app.socket.broadcast('room-b', { cmd: 'news', param: 'z' })
  await Promise.all([ann.client.next('news'), ann.client.next('news'), bob.client.next('news'), bob.client.next('news'), carl.client.next('news')])
  t.equal(await sample(registry, `${p}broadcast_recipients`, {}, `${p}broadcast_recipients_count`), 3)
  t.equal(await sample(registry, `${p}broadcast_recipients`, {}, `${p}broadcast_recipients_sum`), 5)
  t.equal(await sample(registry, `${p}broadcast_recipients`, { le: '1' }, `${p}broadcast_recipients_bucket`), 1, 'one reached a single member')
  t.ok(await sample(registry, `${p}broker_publish_duration_seconds`, {}, `${p}broker_publish_duration_seconds_count`) >= 3, 'each publish timed')

  // connected ×3 + news ×5 = 8 messages out; nothing in yet.
  t.equal(await sample(registry, `${p}messages_sent_total`), 8)
  t.equal(await sample(registry, `${p}messages_received_total`), 0)
  const sentBytes = await sample(registry, `${p}bytes_sent_total`)
  t.ok(sentBytes > 2 * 100, `bytes sent counted per recipient (${sentBytes})`)

  // Messages in: a reply, an error (not subscribed), then the rate limit (burst 3).
  const frame = JSON.stringify({ channel: 'room-a', cmd: 'echo', param: 1, ref: 'r1' })
  t.match(await ann.client.request('room-a', 'echo', 1, 'r1'), { cmd: 'reply' })
  t.match(await ann.client.request('room-b', 'echo', 1, 'r2'), { cmd: 'error', param: { code: 'FST_SOCKET_NOT_SUBSCRIBED' } })
  t.match(await ann.client.request('room-a', 'echo', 1, 'r3'), { cmd: 'reply' })
  // A refused frame's error carries no ref: the limit refuses before reading it.
  const limited = ann.client.next((m) => m.cmd === 'error' && (m.param as { code: string }).code === 'FST_SOCKET_RATE_LIMITED')
  ann.client.send(frame)
  await limited
  t.equal(await sample(registry, `${p}messages_received_total`), 4)
  t.equal(await sample(registry, `${p}bytes_received_total`), 4 * Buffer.byteLength(frame))
  t.equal(await sample(registry, `${p}errors_total`, { code: 'FST_SOCKET_NOT_SUBSCRIBED' }), 1)
  t.equal(await sample(registry, `${p}errors_total`, { code: 'FST_SOCKET_RATE_LIMITED' }), 1)
  t.equal(await sample(registry, `${p}rate_limited_total`), 1)

  // Closes, by code; the totals keep what closed connections had counted.
  const before = await sample(registry, `${p}messages_received_total`)
  ann.client.ws.close(1000)
  bob.client.ws.close(4000)
  await Promise.all([closed(ann.id), closed(bob.id)])
  t.equal(await sample(registry, `${p}closes_total`, { code: '1000' }), 1)
  t.equal(await sample(registry, `${p}closes_total`, { code: '4000' }), 1)
  t.equal(await sample(registry, `${p}connections`), 1)
  t.equal(await sample(registry, `${p}channels`), 1)
  t.equal(await sample(registry, `${p}messages_received_total`), before, 'a closed connection\'s messages stay counted')
  t.equal(await sample(registry, `${p}slow_consumer_closes_total`), 0)
})

t.test('a slow consumer is counted', async (t) => {
  const { app, base, registry, closed } = await start(t, { sendBufferLimit: 1024 })
  const slow = await open(base, 'slow')
  const socket = (slow.client.ws as unknown as { _socket: { pause: () => void, resume: () => void } })._socket
  socket.pause()
  const param = 'x'.repeat(16 * 1024)
  let sent = 0
  // The paused client's kernel buffers fill up after a few MiB; from then on its send buffer grows and it is closed.
  while (app.socket.broadcast('room-a', { cmd: 'load', param }) === 1 && sent < 5000) {
    sent++
    await new Promise((resolve) => setImmediate(resolve))
  }
  socket.resume()
  t.equal(await closed(slow.id), 4008)
  t.equal(await sample(registry, 'forge_socket_slow_consumer_closes_total'), 1)
  t.equal(await sample(registry, 'forge_socket_closes_total', { code: '4008' }), 1)
})

t.test('dedupe outcomes: a repeated id is a duplicate, not a run', async (t) => {
  const { base, registry } = await start(t)
  const ann = await open(base, 'ann')
  const message = { channel: 'room-a', cmd: 'echo', param: 'hi', id: 'm-1' }
  const first = ann.client.next((m) => m.ref === 'a')
  ann.client.send({ ...message, ref: 'a' })
  t.match(await first, { cmd: 'reply', param: 'hi' })
  const again = ann.client.next((m) => m.ref === 'b')
  ann.client.send({ ...message, ref: 'b' })
  t.match(await again, { cmd: 'reply', param: 'hi', dup: true })
  t.equal(await sample(registry, 'forge_socket_dedupe_total', { outcome: 'run' }), 1)
  t.equal(await sample(registry, 'forge_socket_dedupe_total', { outcome: 'duplicate' }), 1)
})

t.test('recoveries are counted by result', async (t) => {
  const { app, base, registry } = await start(t, { history: { size: 10, ttl: 60_000 } })
  const ann = await open(base, 'ann')
  const position = (ann.connected.param as { positions: Record<string, { epoch: string, seq: number }> }).positions
  t.ok(position['room-a'] !== undefined, 'connected gives the channel\'s position')
  app.socket.broadcast('room-a', { cmd: 'news' })
  await ann.client.next('news')
  const since = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const back = await connect(`${base}/ws/room/a?since=${since(position)}`, sign({ sub: 'ann' }))
  t.match(back.connected.param, { recovery: { 'room-a': { recovered: true, replayed: 1 } } })
  const stale = await connect(`${base}/ws/room/a?since=${since({ 'room-a': { epoch: 'gone', seq: 1 } })}`, sign({ sub: 'ann' }))
  t.match(stale.connected.param, { recovery: { 'room-a': { recovered: false, reason: 'epoch' } } })
  t.equal(await sample(registry, 'forge_socket_recoveries_total', { result: 'recovered' }), 1)
  t.equal(await sample(registry, 'forge_socket_recoveries_total', { result: 'epoch' }), 1)
})

t.test('the option', async (t) => {
  t.test('a prefix of the app\'s', async (t) => {
    const registry = new Registry()
    const app = await build({ metrics: { registry, prefix: 'chat_' } })
    t.after(() => app.close())
    const names = (await registry.getMetricsAsJSON()).map((m) => m.name)
    t.ok(names.includes('chat_connections') && names.includes('chat_handshakes_total'), names.join(' '))
    t.notOk(names.some((n) => n.startsWith('forge_socket_')))
  })

  t.test('true: prom-client\'s default registry, left again when the app closes', async (t) => {
    const app = await build({ metrics: true })
    t.ok(defaultRegistry.getSingleMetric('forge_socket_connections'))
    await app.close()
    t.equal(defaultRegistry.getSingleMetric('forge_socket_connections'), undefined)
  })

  t.test('off by default: nothing is registered', async (t) => {
    const app = await build()
    t.after(() => app.close())
    t.equal(defaultRegistry.getSingleMetric('forge_socket_connections'), undefined)
  })

  t.test('two apps on one registry and prefix: the second is refused at boot, the first keeps its metrics', async (t) => {
    const registry = new Registry()
    const first = await build({ metrics: { registry } })
    t.after(() => first.close())
    await t.rejects(build({ metrics: { registry } }), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /own registry or prefix/ })
    t.ok(registry.getSingleMetric('forge_socket_connections'), 'the first app\'s metrics are still there')
  })

  t.test('invalid settings are refused at register', async (t) => {
    const cases: Array<[unknown, RegExp]> = [
      ['yes', /boolean or/],
      [{ prefix: 'bad-prefix' }, /prefix/],
      [{ prefix: 7 }, /prefix/],
      [{ registry: {} }, /prom-client Registry/],
      [{ registry: new Registry(), labels: {} }, /labels is not an option/]
    ]
    for (const [metrics, message] of cases) {
      await t.rejects(build({ metrics } as unknown as ForgeSocketOptions), { code: 'FST_SOCKET_INVALID_OPTIONS', message }, JSON.stringify(metrics))
    }
  })
})
