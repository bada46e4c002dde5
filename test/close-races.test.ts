// Regressions found in review: what happens when a connection, or the server, closes while something is awaiting.
import t from 'tap'
import type { FastifyInstance } from 'fastify'
import { MemoryBroker } from '../plugin.js'
import { build, closes, idOf, listen, room, serve, sign, connect, refused, Client } from './helpers/server.js'

/** A promise and the functions that settle it. */
function gate (): { promise: Promise<void>, open: () => void, fail: (err: Error) => void } {
  let open!: () => void
  let fail!: (err: Error) => void
  const promise = new Promise<void>((resolve, reject) => { open = resolve; fail = reject })
  return { promise, open, fail }
}

/** A memory broker whose subscriptions wait for the test, and which records what it is asked. */
class SlowBroker extends MemoryBroker {
  readonly pending = new Map<string, ReturnType<typeof gate>>()
  readonly calls: string[] = []
  override async subscribe (channel: string): Promise<void> {
    const g = gate()
    this.pending.set(channel, g)
    this.calls.push(`subscribe ${channel}`)
    await g.promise
    super.subscribe(channel)
  }

  override unsubscribe (channel: string): void {
    this.calls.push(`unsubscribe ${channel}`)
    super.unsubscribe(channel)
  }

  override close (): void {
    this.calls.push('close')
    super.close()
  }
}

const token = (sub: string): { headers: { authorization: string } } => ({ headers: { authorization: `Bearer ${sign({ sub })}` } })

t.test('onOpen hooks do not run after the connection closed', async (t) => {
  const first = gate()
  const calls: string[] = []
  const { app, base } = await serve(t, {}, (app) => {
    app.socket.onOpen(async () => { calls.push('open 1'); await first.promise })
    app.socket.onOpen(() => { calls.push('open 2') })
    app.socket.onClose(() => { calls.push('close') })
  })
  const closed = closes(app)
  const { client, connected } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  client.close()
  await closed.wait(idOf(connected))
  first.open()
  await app.close()
  t.same(calls, ['open 1', 'close'], 'the second onOpen hook never ran')
})

t.test('a failed broker subscription takes out every member that joined while it was under way', async (t) => {
  const broker = new SlowBroker()
  const { app, base } = await serve(t, { broker })
  const ann = new Client(`${base}/ws/b`, token('ann'))
  await ann.next('connected')
  const bob = new Client(`${base}/ws/b`, token('bob'))
  await bob.next('connected')
  t.same(app.socket.connections('room-b').length, 2, 'both joined while the subscription is pending')
  t.same(broker.calls, ['subscribe room-b'], 'one subscription for the channel')
  broker.pending.get('room-b')?.fail(new Error('broker down'))
  t.equal((await ann.closed).code, 1011)
  t.equal((await bob.closed).code, 1011)
  t.same(app.socket.channels(), [], 'nobody is left in the channel')
})

t.test('join() rejects when the subscription fails, and the connection is not left in the channel', async (t) => {
  const broker = new SlowBroker()
  const { app, base } = await serve(t, { broker })
  const ann = new Client(`${base}/ws/a`, token('ann'))
  const connected = await ann.next('connected')
  broker.pending.get('room-a')?.open()
  await ann.request('room-a', 'ping', null)
  const id = (connected.param as { connectionId: string }).connectionId
  const joining = app.socket.join(id, 'extra')
  broker.pending.get('extra')?.fail(new Error('broker down'))
  await t.rejects(joining, { message: 'broker down' })
  t.same(app.socket.connections()[0]?.channels, ['room-a'])
  t.same(app.socket.channels().map((c) => c.name), ['room-a'])
})

t.test('an upgrade that completes while the server is closing gets 1001', async (t) => {
  const hold = gate()
  const entered = gate()
  const app = await build({}, (app) => {
    app.get('/ws/slow', app.socket.act('slow', async (app, ps) => {
      entered.open()
      await hold.promise
      return ps.upgrade('slow')
    }))
  })
  const base = await listen(app)
  const client = new Client(`${base}/ws/slow`, token('ann'))
  client.ws.on('error', () => {})
  await entered.promise
  const closing = app.close()
  hold.open()
  const { code } = await client.closed
  t.equal(code, 1001, 'told the server is going away, not cut off')
  await closing
})

t.test('app.close() resolves after every close path finished, and closes the broker last', async (t) => {
  const broker = new SlowBroker()
  const calls = broker.calls
  const { app, base } = await serve(t, { broker, shutdownTimeout: 1000 }, (app) => {
    app.socket.onClose(async () => { calls.push('onClose hook') })
  })
  const ann = new Client(`${base}/ws/a`, token('ann'))
  await ann.next('connected')
  broker.pending.get('room-a')?.open()
  await ann.request('room-a', 'ping', null)
  await app.close()
  calls.push('app.close resolved')
  t.same(calls, ['subscribe room-a', 'unsubscribe room-a', 'onClose hook', 'close', 'app.close resolved'])
})

t.test('Connection.close with a code a peer may not receive throws, and the connection stays usable', async (t) => {
  let conn: Parameters<Parameters<FastifyInstance['socket']['onOpen']>[0]>[0] | undefined
  const { app, base } = await serve(t, {}, (app) => {
    app.socket.onOpen((c) => { conn = c })
  })
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  await client.request('room-a', 'ping', null)
  t.throws(() => conn?.close(1005, 'nope'), { code: 'FST_SOCKET_INVALID_CLOSE_CODE' })
  t.equal(app.socket.broadcast('room-a', { cmd: 'still-here' }), 1, 'still receives')
  t.equal((await client.next('still-here')).cmd, 'still-here')
  t.ok(app.socket.disconnect(conn?.id as string, 4000, 'bye'))
  t.same(await client.closed, { code: 4000, reason: 'bye' })
})

t.test('frames held before open are bounded in bytes too (1008)', async (t) => {
  const hold = gate()
  const app = await build({ maxPayload: 1024 }, (app) => {
    room(app)
    app.socket.onOpen(async () => { await hold.promise })
  })
  t.after(() => { hold.open(); return app.close() })
  const base = await listen(app)
  const client = new Client(`${base}/ws/a`, token('ann'))
  await client.next('connected')
  const frame = JSON.stringify({ channel: 'room-a', cmd: 'ping', param: 'x'.repeat(900) })
  for (let i = 0; i < 5; i++) client.send(frame)
  t.same(await client.closed, { code: 1008, reason: 'too many frames before open' })
})

t.test('a refused upgrade does not count as a connection', async (t) => {
  const { app, base } = await serve(t)
  const { status } = await refused(`${base}/ws/a`)
  t.equal(status, 401)
  t.equal(app.socket.status().connections, 0)
})
