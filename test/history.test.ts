// Channel history on the memory broker: one seq per channel for every node, a position that outlives the
// channel's members, kept messages read with the `history` command, and the settings checked at register.
import t, { type Test } from 'tap'
import Fastify from 'fastify'
import forgeSocket, { MemoryBroker, MemoryHub, type ForgeSocketOptions } from '../plugin.js'
import { Streams } from '../lib/broker/streams.js'
import { resolveOptions } from '../lib/options.js'
import { SECRET, closes, connect, idOf, listen, room, serve, sign, type Client } from './helpers/server.js'
import { LogSink } from './helpers/logs.js'
import { RecordingBroker } from './helpers/broker.js'
import type { OutboundMessage } from '../schemas/envelope.js'

const HISTORY = { size: 5, ttl: 60_000 }

async function node (t: Test, options: ForgeSocketOptions = {}): Promise<{ base: string, app: Awaited<ReturnType<typeof serve>>['app'] }> {
  return await serve(t, { history: HISTORY, ...options })
}

async function join (base: string, room: string, user: string): Promise<{ client: Client, connected: { param: unknown } }> {
  return await connect(`${base}/ws/${room}`, sign({ sub: user }))
}

/** The next `count` messages with `cmd` a client gets, in the order they came. */
async function collect (client: Client, cmd: string, count: number): Promise<OutboundMessage[]> {
  const got: OutboundMessage[] = []
  while (got.length < count) got.push(await client.next(cmd))
  return got
}

t.test('connected and the subscribe reply say where the channel\'s stream stands', async (t) => {
  const { app, base } = await node(t, { authorizeChannel: () => true })
  const { client, connected } = await join(base, 'lobby', 'ann')
  const start = (connected.param as { positions: Record<string, { epoch: string, seq: number }> }).positions['room-lobby']
  t.match(start, { epoch: /^[A-Za-z0-9_-]{16}$/, seq: 0 }, 'a new stream: an epoch, and no message yet')
  app.socket.broadcast('room-lobby', { cmd: 'say', param: 1 })
  t.equal((await client.next('say')).seq, 1)
  const reply = await client.request('news', 'subscribe', null)
  t.match(reply.param, { channel: 'news', epoch: String, seq: 0 })
  const again = await client.request('room-lobby', 'subscribe', null)
  t.same(again.param, { channel: 'room-lobby', epoch: start?.epoch, seq: 1 }, 'a channel it is in already: its position too')
  client.close()
})

t.test('without history, nothing changes: no positions, the subscribe reply is { channel }, seq is this node\'s', async (t) => {
  const { app, base } = await serve(t, { authorizeChannel: () => true })
  const { client, connected } = await join(base, 'lobby', 'ann')
  t.notOk('positions' in (connected.param as object))
  t.same((await client.request('news', 'subscribe', null)).param, { channel: 'news' })
  app.socket.broadcast('room-lobby', { cmd: 'say' })
  t.equal((await client.next('say')).seq, 1)
  t.match((await client.request('room-lobby', 'history', null)).param, { code: 'FST_SOCKET_BAD_REQUEST', message: /keeps no history/ })
  client.close()
})

t.test('two nodes publishing to one channel: one seq, the same order for every member on both', async (t) => {
  const hub = new MemoryHub()
  const a = await node(t, { broker: new MemoryBroker(hub) })
  const b = await node(t, { broker: new MemoryBroker(hub) })
  const ann = (await join(a.base, 'lobby', 'ann')).client
  const bob = (await join(b.base, 'lobby', 'bob')).client
  for (let i = 0; i < 20; i++) (i % 2 === 0 ? a : b).app.socket.broadcast('room-lobby', { cmd: 'n', param: i })
  const [onA, onB] = await Promise.all([collect(ann, 'n', 20), collect(bob, 'n', 20)])
  const expected = Array.from({ length: 20 }, (_, i) => i + 1)
  t.same(onA.map((m) => m.seq), expected, 'A\'s member: 1…20, in order')
  t.same(onB.map((m) => m.seq), expected, 'B\'s member: the same')
  t.same(onA.map((m) => m.param), onB.map((m) => m.param), 'the same message under each seq')
  ann.close()
  bob.close()
})

t.test('the position outlives every member; a message that skips someone has no seq and is not kept', async (t) => {
  const { app, base } = await node(t)
  const closed = closes(app)
  const first = await join(base, 'lobby', 'ann')
  const epoch = (first.connected.param as { positions: Record<string, { epoch: string }> }).positions['room-lobby']?.epoch
  app.socket.broadcast('room-lobby', { cmd: 'say', param: 1 })
  app.socket.broadcast('room-lobby', { cmd: 'say', param: 2 })
  app.socket.broadcast('room-lobby', { cmd: 'typing' }, { except: idOf(first.connected) })
  await first.client.next((m) => m.param === 2)
  first.client.close()
  await closed.wait(idOf(first.connected))
  t.same(app.socket.channels(), [], 'nobody in the channel any more')
  const second = await join(base, 'lobby', 'bob')
  t.same((second.connected.param as { positions: unknown }).positions, { 'room-lobby': { epoch, seq: 2 } }, 'the same epoch, seq where it was')
  app.socket.broadcast('room-lobby', { cmd: 'say', param: 3 })
  t.equal((await second.client.next('say')).seq, 3, 'and it goes on from there')
  const page = (await second.client.request('room-lobby', 'history', null)).param as { epoch: string, seq: number, messages: Array<{ seq: number, cmd: string }> }
  t.same(page.messages.map((m) => [m.seq, m.cmd]), [[1, 'say'], [2, 'say'], [3, 'say']], 'the typing message was not kept')
  second.client.close()
})

t.test('the history command: the newest, or those after a position; at most size kept; checked', async (t) => {
  const { app, base } = await node(t)
  const { client } = await join(base, 'lobby', 'ann')
  for (let i = 1; i <= 8; i++) app.socket.broadcast('room-lobby', { cmd: 'n', param: i })
  await client.next((m) => m.param === 8)
  const read = async (param: unknown): Promise<{ epoch: string, seq: number, messages: Array<{ seq: number, param: unknown }> }> =>
    (await client.request('room-lobby', 'history', param)).param as { epoch: string, seq: number, messages: Array<{ seq: number, param: unknown }> }
  const all = await read(null)
  t.equal(all.seq, 8)
  t.same(all.messages.map((m) => m.seq), [4, 5, 6, 7, 8], 'size 5: the newest five are kept')
  t.same(all.messages[0], { channel: 'room-lobby', cmd: 'n', param: 4, seq: 4 }, 'each as it was sent')
  t.same((await read({ limit: 2 })).messages.map((m) => m.seq), [7, 8], 'limit: the newest')
  t.same((await read({ since: { epoch: all.epoch, seq: 5 }, limit: 2 })).messages.map((m) => m.seq), [6, 7], 'since: those after it, oldest first')
  t.same((await read({ since: { epoch: all.epoch, seq: 8 } })).messages, [], 'since the top: none')
  t.same((await read({ since: { epoch: 'another-epoch', seq: 2 } })).messages.map((m) => m.seq), [4, 5, 6, 7, 8], 'another epoch: the newest, with this epoch')
  t.same((await read({ limit: 0 })).messages, [], 'limit 0: the position alone')
  for (const bad of [{ limit: 101 }, { since: { epoch: '', seq: 1 } }, { since: { epoch: 'e', seq: -1 } }, { since: { epoch: 'e', seq: 1.5 } }, { other: 1 }, 'x']) {
    t.match((await client.request('room-lobby', 'history', bad)).param, { code: 'FST_SOCKET_BAD_REQUEST' }, JSON.stringify(bad))
  }
  t.match((await client.request('elsewhere', 'history', null)).param, { code: 'FST_SOCKET_NOT_SUBSCRIBED' }, 'only a member reads')
  client.close()
})

t.test('a history function that throws or answers wrong settings: logged once, and that channel keeps none', async (t) => {
  const logs = new LogSink()
  const app = Fastify({ logger: { level: 'info', stream: logs.stream } })
  await app.register(forgeSocket, { jwt: { secret: SECRET }, history: (channel) => channel === 'room-odd' ? { size: -1 } : (() => { throw new Error('no idea') })() })
  room(app)
  t.after(() => app.close())
  const base = await listen(app)
  const { client, connected } = await join(base, 'odd', 'ann')
  t.notOk('positions' in (connected.param as object), 'the connection is accepted, without a position')
  app.socket.broadcast('room-odd', { cmd: 'n' })
  t.equal((await client.next('n')).seq, 1, 'and served, numbered by this node as without history')
  t.match((await client.request('room-odd', 'history', null)).param, { code: 'FST_SOCKET_BAD_REQUEST', message: /keeps no history/ })
  t.match(await logs.next('history settings refused: the channel keeps no history'), { level: 40, channel: 'room-odd', err: { code: 'FST_SOCKET_INVALID_OPTIONS' } })
  app.socket.broadcast('room-thrown', { cmd: 'n' })
  t.equal(logs.lines.filter((line) => line.msg.startsWith('history settings refused')).length, 1, 'once a minute at most')
  client.close()
})

t.test('a function picks the settings per channel; wrong settings are a coded error', async (t) => {
  const { app, base } = await serve(t, { history: (channel) => channel === 'room-kept' ? { size: 2 } : false })
  const kept = await join(base, 'kept', 'ann')
  const other = await join(base, 'other', 'bob')
  t.ok('positions' in (kept.connected.param as object))
  t.notOk('positions' in (other.connected.param as object))
  app.socket.broadcast('room-kept', { cmd: 'n', param: 1 })
  t.equal((await kept.client.next('n')).seq, 1)
  kept.client.close()
  other.client.close()

  const wrong = resolveOptions({ jwt: { secret: SECRET }, history: () => ({ size: 0 }) })
  t.throws(() => wrong.history('x'), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /\/history\("x"\)\/size/ })
})

t.test('the settings are checked at register', async (t) => {
  const options = (history: unknown): ForgeSocketOptions => ({ jwt: { secret: SECRET }, history: history as ForgeSocketOptions['history'] })
  for (const [history, message] of [
    [{ size: 0 }, /\/history\/size/],
    [{ ttl: -1 }, /\/history\/ttl/],
    [{ ttl: 1000, metaTtl: 10 }, /metaTtl \(10\) must be at least \/ttl \(1000\)/],
    [{ sizes: 3 }, /\/history/],
    ['yes', /\/history/]
  ] as const) {
    t.throws(() => resolveOptions(options(history)), { code: 'FST_SOCKET_INVALID_OPTIONS', message }, JSON.stringify(history))
  }
  t.throws(() => resolveOptions({ jwt: { secret: SECRET }, broker: new RecordingBroker(), history: HISTORY }),
    { code: 'FST_SOCKET_INVALID_OPTIONS', message: /needs a broker that keeps history/ })
  t.same(resolveOptions(options({ ttl: 1000 })).history('x'), { size: 100, ttl: 1000, metaTtl: 10_000, maxRecover: 1000 }, 'defaults: size 100, metaTtl 10 × ttl, maxRecover 1000')
  t.equal(resolveOptions(options(false)).history('x'), null)
})

t.test('streams: messages go after ttl, the position after metaTtl (then a new epoch); abandoned ones are swept', async (t) => {
  const streams = new Streams()
  const settings = { size: 3, ttl: 100, metaTtl: 1000, maxRecover: 1000 }
  const m = (param: number): { channel: string, cmd: string, param: number } => ({ channel: 'c', cmd: 'n', param })
  const first = streams.append('c', m(1), settings, 0)
  streams.append('c', m(2), settings, 50)
  t.same(streams.read('c', undefined, 10, settings, 120).messages.map((x) => x.seq), [1, 2], 'within ttl of the last append')
  t.same(streams.read('c', undefined, 10, settings, 151), { epoch: first.epoch, seq: 2, messages: [] }, 'past ttl: no messages, the position kept')
  t.same(streams.append('c', m(3), settings, 500), { epoch: first.epoch, seq: 3 }, 'and seq goes on')
  const later = streams.position('c', settings, 1501)
  t.not(later.epoch, first.epoch, 'past metaTtl: a new epoch')
  t.equal(later.seq, 0)
  streams.append('d', m(1), settings, 1600)
  streams.append('e', m(1), settings, 20_000)
  t.equal(streams.size, 1, 'the sweep (at most every 10 s, on an append) forgot c and d, whose positions had expired')
})
