import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import type { Message } from '../lib/client/index.js'
import { build, listen, room, sign } from './helpers/server.js'
import { freePort } from './helpers/demo-process.js'
import { inState, linesStarting, rawServer, reconnected, recordedClient as client, rejection, Seen, type RecordedClient } from './helpers/client-state.js'

// socket.subscribe() / unsubscribe() against real forge-socket servers: the channels a client subscribed to are
// subscribed again after every reconnection, before the queue is flushed, so that queued sends to them are not
// refused with FST_SOCKET_NOT_SUBSCRIBED (the server handles a connection's frames concurrently, and its
// `authorizeChannel` here takes a few milliseconds, as one that asks a database would).

const ann = sign({ sub: 'ann' })

interface Server {
  app: FastifyInstance
  base: string
  /** The params of the `note` commands that reached the server, in order. */
  notes: Seen<unknown>
  /** Every channel authorizeChannel was asked about. */
  asked: Seen<string>
  /** The channels the server lets in; change it to refuse later. */
  allowed: Set<string>
  /** The channels of the (only) connection on this server. */
  channels: () => string[]
  /** Closes every connection with `code`. */
  disconnect: (code: number) => void
}

/** forge-socket: `/ws/:room` upgrades into `room-<room>`; `authorizeChannel` lets in `allowed`, asynchronously. */
async function server (t: Test, allowed: Iterable<string> = ['news', 'sport'], port = 0): Promise<Server> {
  const notes = new Seen<unknown>()
  const asked = new Seen<string>()
  const allow = new Set(allowed)
  const app = await build({
    authorizeChannel: async (_profile, channel) => {
      asked.push(channel)
      await new Promise((resolve) => setTimeout(resolve, 5))
      return allow.has(channel)
    }
  }, (app) => {
    // Not serve(): a test restarts the server on the same port.
    room(app)
    app.socket.command('note', { handler: (param) => { notes.push(param) } })
  })
  t.after(() => app.close())
  const base = port === 0 ? await listen(app) : (await app.listen({ port, host: '127.0.0.1' })).replace(/^http/, 'ws')
  return {
    app,
    base,
    notes,
    asked,
    allowed: allow,
    channels: () => [...(app.socket.connections()[0]?.channels ?? [])].sort(),
    disconnect: (code) => { for (const info of app.socket.connections()) app.socket.disconnect(info.id, code) }
  }
}

/**
 * Waits until `n` notes reached the server; fails at once if the client reports an error (other than those
 * `expected`) first, such as the FST_SOCKET_NOT_SUBSCRIBED of a send flushed before its channel's re-subscription.
 */
async function delivered (s: Server, c: RecordedClient, n: number, expected: string[] = []): Promise<void> {
  const failed = c.errors.until((items) => items.some((e) => !expected.includes(e.code))).then(() => {
    throw new Error(`the client reported ${c.errors.items.find((e) => !expected.includes(e.code))?.code} first`)
  })
  await Promise.race([s.notes.count(n), failed])
}

/** How many `subscribe` frames the client sent for `channel`. */
function subscribes (c: RecordedClient, channel: string): number {
  return linesStarting(c, `send ${channel}:subscribe`).length
}

t.test('subscribe and unsubscribe while open', async (t) => {
  const s = await server(t)
  const c = client(t, { url: `${s.base}/ws/a`, token: ann })
  await inState(c.socket, 'open')
  t.same(await c.socket.subscribe('news'), { channel: 'news' }, "the server's reply")
  t.same(s.channels(), ['news', 'room-a'])
  t.equal(c.socket.send('news', 'note', 'to news'), true)
  await s.notes.count(1)

  const refused = await rejection(c.socket.subscribe('secret'))
  t.match(refused, { name: 'SocketError', code: 'FST_SOCKET_FORBIDDEN', channel: 'secret' }, "rejected with the server's code and the channel")
  t.same(c.errors.items, [], 'a refused subscribe() rejects; it is not reported besides')

  t.same(await c.socket.unsubscribe('news'), { channel: 'news' })
  t.same(s.channels(), ['room-a'])
  t.same(await c.socket.unsubscribe('elsewhere'), { channel: 'elsewhere' }, 'leaving a channel it is not in is no error')

  s.disconnect(1001)
  await reconnected(c.socket)
  t.same(s.channels(), ['room-a'], 'neither the refused nor the unsubscribed channel is subscribed again')
  t.same(s.asked.items, ['news', 'secret'], 'nor asked for')
})

t.test('after the server drops the connection, a queued send to a subscribed channel arrives', async (t) => {
  const s = await server(t)
  const c = client(t, { url: `${s.base}/ws/a`, token: ann })
  await inState(c.socket, 'open')
  await c.socket.subscribe('news')
  await c.socket.subscribe('sport')
  s.disconnect(1001)
  await inState(c.socket, 'reconnecting')
  c.socket.send('news', 'note', 'queued to news')
  c.socket.send('sport', 'note', 'queued to sport')
  await inState(c.socket, 'open')
  await delivered(s, c, 2)
  t.same(s.notes.items, ['queued to news', 'queued to sport'])
  t.same(c.errors.items, [], 'no FST_SOCKET_NOT_SUBSCRIBED')
  t.same(s.channels(), ['news', 'room-a', 'sport'])
  t.ok(c.lines.items.includes('[forge-socket] resubscribe 2'))
  const text = c.lines.items.map((l) => l.replace('[forge-socket] ', ''))
  t.ok(text.lastIndexOf('send sport:subscribe') < text.lastIndexOf('flush 2 queued'), 'subscribed again before the flush')
})

t.test('after the server restarts on the same port, a queued send to a subscribed channel arrives', async (t) => {
  const port = await freePort()
  const first = await server(t, undefined, port)
  const c = client(t, { url: `${first.base}/ws/a`, token: ann })
  await inState(c.socket, 'open')
  await c.socket.subscribe('news')
  await first.app.close()
  await inState(c.socket, 'reconnecting')
  const answer = c.socket.request('news', 'note', 'queued request')
  c.socket.send('news', 'note', 'queued send')
  const second = await server(t, undefined, port)
  await delivered(second, c, 2, ['FST_SOCKET_HANDSHAKE_FAILED'])
  t.equal(await answer, null, 'the queued request is answered')
  t.same(second.notes.items, ['queued request', 'queued send'])
  t.same(second.channels(), ['news', 'room-a'])
  t.same(c.errors.items.filter((e) => e.code !== 'FST_SOCKET_HANDSHAKE_FAILED'), [], 'only the attempts while the server was down')
})

t.test('a re-subscription the server refuses is reported with its channel, and forgotten', async (t) => {
  const s = await server(t)
  const c = client(t, { url: `${s.base}/ws/a`, token: ann })
  await inState(c.socket, 'open')
  await c.socket.subscribe('news')
  await c.socket.subscribe('sport')
  s.allowed.delete('news')
  s.disconnect(1001)
  await inState(c.socket, 'reconnecting')
  c.socket.send('sport', 'note', 'to sport')
  c.socket.send('news', 'note', 'to news')
  await inState(c.socket, 'open')
  await c.errors.count(2)
  t.match(c.errors.items[0], {
    code: 'FST_SOCKET_RESUBSCRIBE_REFUSED',
    channel: 'news',
    serverCode: 'FST_SOCKET_FORBIDDEN',
    message: /^Subscribing to "news" again after a reconnection was refused: /
  })
  t.match(c.errors.items[1], { code: 'FST_SOCKET_NOT_SUBSCRIBED' }, "the queued send to it is refused by the server (its error goes to onError)")
  await s.notes.count(1)
  t.same(s.notes.items, ['to sport'])
  t.same(s.channels(), ['room-a', 'sport'])

  s.disconnect(1001)
  await reconnected(c.socket)
  t.equal(subscribes(c, 'news'), 2, 'not asked for a third time')
  t.equal(subscribes(c, 'sport'), 3)
})

t.test('subscribe() while not open', async (t) => {
  t.test('waits for the connection, is asked for ahead of the queue, and resolves', async (t) => {
    const s = await server(t)
    const c = client(t, { url: `${s.base}/ws/a`, token: ann })
    const subscribed = c.socket.subscribe('news')
    const again = c.socket.subscribe('news')
    c.socket.send('news', 'note', 'queued')
    t.equal(c.socket.queued, 1, 'the subscribe is not in the queue')
    t.same(await subscribed, { channel: 'news' })
    t.same(await again, { channel: 'news' })
    t.equal(subscribes(c, 'news'), 1, 'the same channel is asked for once')
    await delivered(s, c, 1)
    t.same(c.errors.items, [])
  })

  t.test('refused, it rejects; nothing is reported', async (t) => {
    const s = await server(t)
    const c = client(t, { url: `${s.base}/ws/a`, token: ann })
    const refused = rejection(c.socket.subscribe('secret'))
    const allowed = c.socket.subscribe('news')
    t.match(await refused, { code: 'FST_SOCKET_FORBIDDEN', channel: 'secret' })
    t.same(await allowed, { channel: 'news' })
    t.same(c.errors.items, [])
    t.same(s.channels(), ['news', 'room-a'])
  })

  t.test('the route\'s own channel is never asked for', async (t) => {
    const s = await server(t)
    const c = client(t, { url: `${s.base}/ws/a`, token: ann })
    t.same(await c.socket.subscribe('room-a'), { channel: 'room-a' }, 'resolved by `connected`')
    s.disconnect(1001)
    await reconnected(c.socket)
    t.equal(subscribes(c, 'room-a'), 0)
    t.same(s.asked.items, [])
    t.same(await c.socket.subscribe('room-a'), { channel: 'room-a' })
  })

  t.test('during the setup of a connection: asked for there, ahead of the queue', async (t) => {
    const s = await server(t)
    const c = client(t, { url: `${s.base}/ws/a`, token: ann })
    await inState(c.socket, 'open')
    await c.socket.subscribe('news')
    let during: Promise<unknown> | undefined
    // The first line after `connected` of the next connection: the re-subscription of news is in flight.
    c.lines.until((items) => items.at(-1) === '[forge-socket] resubscribe 1').then(() => {
      during = c.socket.subscribe('sport')
      c.socket.send('sport', 'note', 'queued to sport')
    }, () => {})
    s.disconnect(1001)
    await reconnected(c.socket)
    t.same(await during, { channel: 'sport' })
    await delivered(s, c, 1)
    t.same(c.errors.items, [])
    t.same(s.channels(), ['news', 'room-a', 'sport'])
  })
})

t.test('subscribe() of a channel it is in already resolves at once', async (t) => {
  const s = await server(t)
  const c = client(t, { url: `${s.base}/ws/a`, token: ann })
  await inState(c.socket, 'open')
  const [one, two] = await Promise.all([c.socket.subscribe('news'), c.socket.subscribe('news')])
  t.same([one, two], [{ channel: 'news' }, { channel: 'news' }])
  t.same(await c.socket.subscribe('news'), { channel: 'news' })
  t.equal(subscribes(c, 'news'), 1)
})

t.test('unsubscribe()', async (t) => {
  t.test('right after a subscribe still being authorized: the channel is left in the end', async (t) => {
    const s = await server(t)
    const c = client(t, { url: `${s.base}/ws/a`, token: ann })
    await inState(c.socket, 'open')
    const subscribed = rejection(c.socket.subscribe('news'))
    const refused = rejection(c.socket.subscribe('secret'))
    t.same(await Promise.all([c.socket.unsubscribe('news'), c.socket.unsubscribe('secret')]), [{ channel: 'news' }, { channel: 'secret' }])
    t.match(await subscribed, { code: 'FST_SOCKET_SUBSCRIBE_CANCELLED', channel: 'news' })
    t.match(await refused, { code: 'FST_SOCKET_SUBSCRIBE_CANCELLED', channel: 'secret' }, 'cancelled, whatever the server then answered')
    t.same(s.channels(), ['room-a'])
    t.same(c.errors.items, [])
  })

  t.test('then subscribe() again at once: the channel is subscribed in the end', async (t) => {
    const s = await server(t)
    const c = client(t, { url: `${s.base}/ws/a`, token: ann })
    await inState(c.socket, 'open')
    await c.socket.subscribe('news')
    const left = c.socket.unsubscribe('news')
    const back = c.socket.subscribe('news')
    t.same(await left, { channel: 'news' })
    t.same(await back, { channel: 'news' })
    t.same(s.channels(), ['news', 'room-a'])
  })

  t.test('without a connection: resolves at once, sends nothing, and cancels a waiting subscribe()', async (t) => {
    const s = await server(t)
    const c = client(t, { url: `${s.base}/ws/a`, token: ann })
    await inState(c.socket, 'open')
    await c.socket.subscribe('news')
    s.disconnect(1001)
    await inState(c.socket, 'reconnecting')
    const waiting = rejection(c.socket.subscribe('sport'))
    t.same(await c.socket.unsubscribe('news'), { channel: 'news' })
    t.same(await c.socket.unsubscribe('sport'), { channel: 'sport' })
    t.equal((await waiting).code, 'FST_SOCKET_SUBSCRIBE_CANCELLED')
    t.equal(c.socket.queued, 0, 'nothing queued')
    await inState(c.socket, 'open')
    t.same(s.channels(), ['room-a'])
    t.equal(subscribes(c, 'news'), 1)
    t.equal(subscribes(c, 'sport'), 0)
  })

  t.test('while the connection is being set up: sent after the re-subscriptions, with the queue', async (t) => {
    const s = await server(t)
    const c = client(t, { url: `${s.base}/ws/a`, token: ann })
    await inState(c.socket, 'open')
    await c.socket.subscribe('news')
    await c.socket.subscribe('sport')
    let left: Promise<unknown> | undefined
    c.lines.until((items) => items.at(-1) === '[forge-socket] resubscribe 2').then(() => { left = c.socket.unsubscribe('sport') }, () => {})
    s.disconnect(1001)
    await reconnected(c.socket)
    t.same(await left, { channel: 'sport' })
    t.same(s.channels(), ['news', 'room-a'])
  })
})

t.test('close()', async (t) => {
  const down = client(t, { url: `ws://127.0.0.1:${await freePort()}/ws/a` })
  const waiting = rejection(down.socket.subscribe('news'))
  down.socket.close()
  const s = await server(t)
  const c = client(t, { url: `${s.base}/ws/a`, token: ann })
  await inState(c.socket, 'open')
  const asked = rejection(c.socket.subscribe('news'))
  await s.asked.count(1)
  c.socket.close()
  for (const [name, rejected] of [['waiting for a connection', waiting], ['being authorized', asked]] as const) {
    t.match(await rejected, { code: 'FST_SOCKET_CONNECTION_CLOSED', message: 'The socket closed before the server answered the subscribe' }, name)
  }
  t.match(await rejection(c.socket.subscribe('news')), { code: 'FST_SOCKET_CONNECTION_CLOSED', channel: 'news', message: 'The socket is closed' })
  t.same(await c.socket.unsubscribe('news'), { channel: 'news' }, 'nothing to leave')
})

/** A raw server that answers each `subscribe` on its n-th connection when `answers(n)`, else never. */
async function answering (t: Test, answers: (n: number) => boolean): Promise<Awaited<ReturnType<typeof rawServer>> & { subscribes: () => number[] }> {
  const raw = await rawServer(t, (ws, n) => {
    ws.on('message', (data) => {
      const { channel, cmd, ref } = JSON.parse(String(data)) as Message
      if (cmd === 'subscribe' && answers(n)) ws.send(JSON.stringify({ channel, cmd: 'reply', param: { channel }, ref }))
    })
  })
  return { ...raw, subscribes: () => raw.received.items.filter((r) => r.message.cmd === 'subscribe').map((r) => r.n) }
}

t.test('a server that does not answer', async (t) => {
  t.test('subscribe() while open times out, and the channel is forgotten', async (t) => {
    const raw = await answering(t, () => false)
    const c = client(t, { url: raw.url, heartbeat: false })
    await inState(c.socket, 'open')
    t.match(await rejection(c.socket.subscribe('news', { timeout: 20 })), { code: 'FST_SOCKET_REQUEST_TIMEOUT', channel: 'news' })
    raw.connections.items[0]?.close(1001)
    await reconnected(c.socket)
    t.same(raw.subscribes(), [0], 'not asked for again')
  })

  t.test('the re-subscriptions are part of the connection\'s setup: unanswered, the attempt is given up at connectTimeout', async (t) => {
    const raw = await answering(t, (n) => n !== 1)
    const c = client(t, { url: raw.url, heartbeat: false, connectTimeout: 100 })
    await inState(c.socket, 'open')
    await c.socket.subscribe('news')
    raw.connections.items[0]?.close(1001)
    await inState(c.socket, 'reconnecting')
    c.socket.send('home', 'note', 'queued')
    await inState(c.socket, 'open')
    t.equal(raw.connections.items.length, 3)
    t.equal(c.socket.queued, 0, 'flushed on the connection that answered')
    t.ok(c.lines.items.includes('[forge-socket] no answer to the re-subscriptions within 100 ms'))
    t.same(raw.subscribes(), [0, 1, 2], 'asked on every connection until one answered')
    t.same(c.states.items, ['connecting>open', 'open>reconnecting', 'reconnecting>open'], 'never open in between')
    t.same(c.errors.items, [], 'a timed-out setup after `connected` is retried, not reported')
  })

  t.test('a subscribe() lost with its connection is asked for on the next one', async (t) => {
    const raw = await answering(t, (n) => n > 0)
    const c = client(t, { url: raw.url, heartbeat: false })
    await inState(c.socket, 'open')
    const subscribed = c.socket.subscribe('news')
    await raw.received.until((items) => items.some((r) => r.message.cmd === 'subscribe'))
    raw.connections.items[0]?.close(1001)
    t.same(await subscribed, { channel: 'news' })
    t.same(raw.subscribes(), [0, 1])
  })
})
