// Recovery on the memory broker: a client that comes back with the position it last saw (the upgrade's `since`, or
// a subscribe's `param.since`) gets exactly what it missed, in order, before anything live, or is told why not;
// never a partial replay. (Redis: test/redis-recovery.test.ts.)
import t from 'tap'
import { MemoryBroker, MemoryHub } from '../plugin.js'
import { refused, serve, sign, type Client } from './helpers/server.js'
import { open, positionOf, type Position } from './helpers/recovery.js'
import { Streams } from '../lib/broker/streams.js'
import { recover } from '../lib/recovery.js'
import type { OutboundMessage } from '../schemas/envelope.js'

const HISTORY = { size: 20, ttl: 60_000 }

/** Resolves once `frames` holds a frame for which `match` holds. */
async function until (client: Client, frames: OutboundMessage[], match: (m: OutboundMessage) => boolean): Promise<void> {
  if (frames.some(match)) return
  await client.next(match)
}

function publish (app: Awaited<ReturnType<typeof serve>>['app'], channel: string, from: number, to: number): void {
  for (let i = from; i <= to; i++) app.socket.broadcast(channel, { cmd: 'say', param: i })
}

function says (frames: OutboundMessage[]): Array<number | undefined> {
  return frames.filter((m) => m.cmd === 'say').map((m) => m.seq)
}

t.test('missed messages come back after connected, once and in order, with their seq and fields; then live ones', async (t) => {
  const { app, base } = await serve(t, { history: HISTORY })
  const first = open(base, 'lobby', 'ann')
  const start = positionOf(await first.connected, 'room-lobby')
  publish(app, 'room-lobby', 1, 5)
  await until(first.client, first.frames, (m) => m.seq === 5)
  first.client.close()
  await first.client.closed
  publish(app, 'room-lobby', 6, 10)

  const back = open(base, 'lobby', 'ann', { 'room-lobby': { epoch: start.epoch, seq: 5 } })
  const connected = await back.connected
  t.same((connected.param as { recovery: unknown }).recovery, { 'room-lobby': { recovered: true, epoch: start.epoch, seq: 10, replayed: 5 } })
  t.same(positionOf(connected, 'room-lobby'), { epoch: start.epoch, seq: 10 })
  publish(app, 'room-lobby', 11, 11)
  await until(back.client, back.frames, (m) => m.seq === 11)
  t.same(back.frames.map((m) => [m.cmd, m.seq]), [['connected', undefined], ...[6, 7, 8, 9, 10, 11].map((seq) => ['say', seq])],
    'connected first, the replay next, then the live message')
  t.same(back.frames[1], { channel: 'room-lobby', cmd: 'say', param: 6, seq: 6 }, 'a replayed message is the message as it was sent')
  back.client.close()
})

t.test('since at the top: recovered, nothing replayed; even after the messages expired, while the position is kept', async (t) => {
  const { app, base } = await serve(t, { history: { size: 20, ttl: 30, metaTtl: 60_000 } })
  const first = open(base, 'lobby', 'ann')
  const { epoch } = positionOf(await first.connected, 'room-lobby')
  publish(app, 'room-lobby', 1, 3)
  await until(first.client, first.frames, (m) => m.seq === 3)
  first.client.close()
  await first.client.closed
  // The stream's ttl is 30 ms after its last message: past it, its messages are gone and its position is not.
  await new Promise((resolve) => setTimeout(resolve, 50))
  const back = open(base, 'lobby', 'ann', { 'room-lobby': { epoch, seq: 3 } })
  const connected = await back.connected
  t.same(connected.param, {
    connectionId: (connected.param as { connectionId: string }).connectionId,
    channels: ['room-lobby'],
    positions: { 'room-lobby': { epoch, seq: 3 } },
    recovery: { 'room-lobby': { recovered: true, epoch, seq: 3, replayed: 0 } },
    dedupe: { window: 120000, scope: 'user' }
  })
  const behind = open(base, 'lobby', 'bob', { 'room-lobby': { epoch, seq: 1 } })
  t.same(((await behind.connected).param as { recovery: unknown }).recovery, { 'room-lobby': { recovered: false, epoch, seq: 3, replayed: 0, reason: 'expired' } },
    'behind the top once the messages are gone: expired')
  back.client.close()
  behind.client.close()
})

t.test('why not: expired (beyond size), too-many (over maxRecover), future, epoch; nothing replayed, live goes on', async (t) => {
  const { app, base } = await serve(t, { history: { size: 10, ttl: 60_000, maxRecover: 4 } })
  const cases: Array<[number | null, string]> = [
    [2, 'expired'], // 13 missing, 10 kept: 3…5 are gone
    [10, 'too-many'], // 5 missing, all kept, over maxRecover 4
    [16, 'future'],
    [null, 'epoch']
  ]
  for (const [seq, reason] of cases) {
    const room = `case-${reason}`
    const first = open(base, room, 'ann')
    const { epoch } = positionOf(await first.connected, `room-${room}`)
    first.client.close()
    publish(app, `room-${room}`, 1, 15)
    const back = open(base, room, 'ann', { [`room-${room}`]: seq === null ? { epoch: 'another-epoch-xx', seq: 12 } : { epoch, seq } })
    const connected = await back.connected
    t.same((connected.param as { recovery: unknown }).recovery, { [`room-${room}`]: { recovered: false, epoch, seq: 15, replayed: 0, reason } }, reason)
    publish(app, `room-${room}`, 16, 16)
    await until(back.client, back.frames, (m) => m.cmd === 'say')
    t.same(says(back.frames), [16], `${reason}: nothing replayed; the next live message comes`)
    back.client.close()
  }
})

t.test('the decision, on a stream of its own: never a partial replay', async (t) => {
  const streams = new Streams()
  const settings = { size: 5, ttl: 100, metaTtl: 1000, maxRecover: 3 }
  const say = (i: number): OutboundMessage => ({ channel: 'c', cmd: 'say', param: i })
  for (let i = 1; i <= 7; i++) streams.append('c', say(i), settings, 0)
  const page = (seq: number, now = 10): ReturnType<Streams['read']> => streams.read('c', { epoch: streams.position('c', settings, now).epoch, seq }, settings.maxRecover, settings, now)
  const { epoch } = streams.position('c', settings, 0)
  t.same(recover(page(4), { epoch, seq: 4 }, 3), { recovery: { recovered: true, epoch, seq: 7, replayed: 3 }, replay: [5, 6, 7].map((i) => ({ ...say(i), seq: i })) })
  t.same(recover(page(7), { epoch, seq: 7 }, 3).recovery, { recovered: true, epoch, seq: 7, replayed: 0 })
  t.same(recover(page(3), { epoch, seq: 3 }, 3).recovery.reason, 'too-many', '4 missing, over maxRecover 3 (though all are kept)')
  t.same(recover(page(1), { epoch, seq: 1 }, 10), { recovery: { recovered: false, epoch, seq: 7, replayed: 0, reason: 'expired' }, replay: [] }, '1…2 were trimmed (size 5): nothing at all')
  t.same(recover(page(6, 200), { epoch, seq: 6 }, 3).recovery.reason, 'expired', 'past ttl the messages are gone')
  t.same(recover(page(7, 200), { epoch, seq: 7 }, 3).recovery.recovered, true, '…and at the top that is no loss')
  t.same(recover(page(8), { epoch, seq: 8 }, 3).recovery.reason, 'future')
  t.same(recover(page(2), { epoch: 'other', seq: 2 }, 3).recovery.reason, 'epoch')
})

t.test('a malformed since is HTTP 400 FST_SOCKET_BAD_REQUEST before the upgrade', async (t) => {
  const { base } = await serve(t, { history: HISTORY })
  const headers = { authorization: `Bearer ${sign({ sub: 'ann' })}` }
  const encode = (value: unknown): string => Buffer.from(JSON.stringify(value)).toString('base64url')
  const cases: Array<[string, string]> = [
    ['not*base64url', 'not base64url'],
    [Buffer.from('{"a":').toString('base64url'), 'not JSON'],
    [encode([1]), 'not an object'],
    [encode({ 'room-lobby': { epoch: '', seq: 1 } }), 'an empty epoch'],
    [encode({ 'room-lobby': { epoch: 'e', seq: -1 } }), 'a negative seq'],
    [encode({ 'room-lobby': { epoch: 'e', seq: 1.5 } }), 'a fractional seq'],
    [encode({ 'room-lobby': { epoch: 'e' } }), 'no seq'],
    ['', 'empty'],
    ['a'.repeat(9000), 'too long']
  ]
  for (const [value, why] of cases) {
    const { status, body } = await refused(`${base}/ws/lobby?since=${value}`, { headers })
    t.same([status, body.code], [400, 'FST_SOCKET_BAD_REQUEST'], why)
  }
  const twice = await refused(`${base}/ws/lobby?since=${encode({})}&since=${encode({})}`, { headers })
  t.equal(twice.status, 400, 'given twice')
})

t.test('subscribe with param.since: the reply says how it went, the replay follows it, then live', async (t) => {
  const { app, base } = await serve(t, { history: HISTORY, authorizeChannel: () => true })
  const first = open(base, 'lobby', 'ann')
  await first.connected
  const joined = await first.client.request('news', 'subscribe', null)
  const { epoch } = joined.param as Position
  publish(app, 'news', 1, 3)
  await until(first.client, first.frames, (m) => m.seq === 3 && m.channel === 'news')
  first.client.close()
  publish(app, 'news', 4, 6)

  const back = open(base, 'lobby', 'ann')
  await back.connected
  const reply = await back.client.request('news', 'subscribe', { since: { epoch, seq: 3 } }, 'r1')
  t.same(reply.param, { channel: 'news', epoch, seq: 6, recovered: true, replayed: 3 })
  publish(app, 'news', 7, 7)
  await until(back.client, back.frames, (m) => m.seq === 7)
  t.same(back.frames.filter((m) => m.channel === 'news').map((m) => [m.cmd, m.seq]),
    [['reply', undefined], ['say', 4], ['say', 5], ['say', 6], ['say', 7]], 'the reply, the replay, then live')

  t.match((await back.client.request('other', 'subscribe', { since: { epoch: '', seq: 1 } })).param, { code: 'FST_SOCKET_BAD_REQUEST', message: /param\/since/ })
  t.match((await back.client.request('other', 'subscribe', { since: { epoch: 'e', seq: -1 } })).param, { code: 'FST_SOCKET_BAD_REQUEST' })
  t.notOk(back.frames.some((m) => m.channel === 'other' && m.cmd === 'reply'), 'refused: not subscribed')
  const gone = await back.client.request('old', 'subscribe', { since: { epoch: 'gone', seq: 2 } })
  t.match(gone.param, { channel: 'old', recovered: false, replayed: 0, reason: 'epoch' }, 'a channel whose stream is another: told so')
  back.client.close()
})

t.test('authorizeChannel runs on every recovery: a revoked user is refused and nothing is replayed', async (t) => {
  let allowed = true
  const { app, base } = await serve(t, { history: HISTORY, authorizeChannel: () => allowed })
  const first = open(base, 'lobby', 'ann')
  await first.connected
  const { epoch } = (await first.client.request('news', 'subscribe', null)).param as Position
  first.client.close()
  publish(app, 'news', 1, 3)
  allowed = false
  const back = open(base, 'lobby', 'ann')
  await back.connected
  t.match((await back.client.request('news', 'subscribe', { since: { epoch, seq: 0 } })).param, { code: 'FST_SOCKET_FORBIDDEN' })
  publish(app, 'news', 4, 4)
  await back.client.request('room-lobby', 'subscribe', null)
  t.same(back.frames.filter((m) => m.channel === 'news' && m.cmd === 'say'), [], 'nothing of the channel')
  back.client.close()
})

t.test('a reconnect to the other node recovers as well (memory hub: one store, as Redis is)', async (t) => {
  const hub = new MemoryHub()
  const a = await serve(t, { history: HISTORY, broker: new MemoryBroker(hub) })
  const b = await serve(t, { history: HISTORY, broker: new MemoryBroker(hub) })
  const first = open(a.base, 'lobby', 'ann')
  const { epoch } = positionOf(await first.connected, 'room-lobby')
  publish(a.app, 'room-lobby', 1, 2)
  await until(first.client, first.frames, (m) => m.seq === 2)
  first.client.close()
  publish(a.app, 'room-lobby', 3, 4)
  publish(b.app, 'room-lobby', 5, 6)
  const back = open(b.base, 'lobby', 'ann', { 'room-lobby': { epoch, seq: 2 } })
  t.match(((await back.connected).param as { recovery: unknown }).recovery, { 'room-lobby': { recovered: true, seq: 6, replayed: 4 } })
  await until(back.client, back.frames, (m) => m.seq === 6)
  t.same(says(back.frames), [3, 4, 5, 6])
  back.client.close()
})

t.test('onOpen channels recover too; a since for a channel the connection is not in, or that keeps no history, is ignored', async (t) => {
  const { app, base } = await serve(t, { history: (channel) => channel === 'plain' ? false : HISTORY }, (app) => {
    app.socket.onOpen(async (conn) => {
      await app.socket.join(conn.id, 'alerts')
      await app.socket.join(conn.id, 'plain')
    })
  })
  const first = open(base, 'lobby', 'ann')
  const connected = await first.connected
  const alerts = positionOf(connected, 'alerts')
  t.same(Object.keys((connected.param as { positions: object }).positions).sort(), ['alerts', 'room-lobby'], 'every channel with history, the route\'s and onOpen\'s')
  first.client.close()
  publish(app, 'alerts', 1, 2)
  const back = open(base, 'lobby', 'ann', { alerts, plain: { epoch: 'x', seq: 1 }, elsewhere: { epoch: 'y', seq: 1 } })
  t.match(((await back.connected).param as { recovery: unknown }).recovery, { alerts: { recovered: true, replayed: 2 } })
  t.same(Object.keys(((await back.connected).param as { recovery: object }).recovery), ['alerts'])
  await until(back.client, back.frames, (m) => m.seq === 2)
  t.same(back.frames.slice(0, 3).map((m) => [m.channel, m.cmd, m.seq]), [['room-lobby', 'connected', undefined], ['alerts', 'say', 1], ['alerts', 'say', 2]])
  back.client.close()
})

t.test('a publish storm during recoveries: no duplicate and no hole where the replay meets live messages', async (t) => {
  // The storm must meet the recoveries while they wait: each onOpen hook, and each node's subscription to the
  // channel, takes 15 ms (as a Redis round trip would, at worst), so live messages are held meanwhile.
  class SlowBroker extends MemoryBroker {
    override async subscribe (channel: string): Promise<void> {
      await new Promise((resolve) => setTimeout(resolve, 15))
      super.subscribe(channel)
    }
  }
  const slowOpen = (app: Awaited<ReturnType<typeof serve>>['app']): void => app.socket.onOpen(() => new Promise((resolve) => setTimeout(resolve, 15)))
  const hub = new MemoryHub()
  const options = { history: { size: 10_000, ttl: 60_000, maxRecover: 10_000 }, authorizeChannel: () => true }
  const a = await serve(t, { ...options, broker: new SlowBroker(hub) }, slowOpen)
  const b = await serve(t, { ...options, broker: new SlowBroker(hub) }, slowOpen)
  const first = open(a.base, 'storm', 'ann')
  const { epoch } = positionOf(await first.connected, 'room-storm')
  first.client.close()
  // About 5,000 a second from each node, until the test is done.
  let sent = 0
  const timer = setInterval(() => {
    for (let i = 0; i < 25; i++) {
      a.app.socket.broadcast('room-storm', { cmd: 'say', param: ++sent })
      b.app.socket.broadcast('room-storm', { cmd: 'say', param: ++sent })
    }
  }, 10)
  t.after(() => clearInterval(timer))
  const checks: Array<Promise<void>> = []
  for (let round = 0; round < 6; round++) {
    const node = round % 2 === 0 ? a : b
    const from = Math.max(0, sent - 50)
    const upgrade = round < 3
    checks.push((async () => {
      const client = open(node.base, 'storm', `u${round}`, upgrade ? { 'room-storm': { epoch, seq: from } } : undefined)
      const connected = await client.connected
      if (!upgrade) {
        const reply = await client.client.request('room-storm', 'unsubscribe', null)
        t.same(reply.param, { channel: 'room-storm' })
        const answer = await client.client.request('room-storm', 'subscribe', { since: { epoch, seq: from } }, 'again')
        t.match(answer.param, { recovered: true }, `round ${round}: subscribe recovered`)
      } else {
        t.match((connected.param as { recovery: Record<string, unknown> }).recovery['room-storm'], { recovered: true }, `round ${round}: upgrade recovered`)
      }
      await until(client.client, client.frames, (m) => (m.seq ?? 0) >= from + 400)
      // After the subscribe's reply, for the rounds that subscribe again.
      const after = upgrade ? client.frames : client.frames.slice(client.frames.findIndex((m) => m.ref === 'again') + 1)
      const seqs = after.filter((m) => m.cmd === 'say').map((m) => m.seq as number)
      const expected = Array.from({ length: (seqs.at(-1) as number) - from }, (_, i) => from + 1 + i)
      t.same(seqs, expected, `round ${round}: every seq after ${from} once, in order`)
      client.client.close()
    })())
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
  await Promise.all(checks)
})

t.test('frames held while a connection opens count against sendBufferLimit: past it, the connection is closed (4008)', async (t) => {
  let opened: () => void = () => {}
  let opening: () => void = () => {}
  const waiting = new Promise<void>((resolve) => { opening = resolve })
  const { app, base } = await serve(t, { history: HISTORY, sendBufferLimit: 4096 }, (app) => {
    app.socket.onOpen(() => new Promise<void>((resolve) => {
      opened = resolve
      opening()
    }))
  })
  const held = open(base, 'lobby', 'ann')
  await waiting
  for (let i = 0; i < 100; i++) app.socket.broadcast('room-lobby', { cmd: 'say', param: 'x'.repeat(100) })
  opened()
  t.equal((await held.client.closed).code, 4008)
  t.same(held.frames, [], 'nothing was sent: not connected, not the messages')
})
