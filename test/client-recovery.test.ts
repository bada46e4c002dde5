// The client's positions and recovery: the Node client against real forge-socket servers that keep history (memory
// broker). After a lost connection it sends its positions back (the upgrade's `since`, a re-subscribe's
// `param.since`), reports each recovery through onRecover, hands the replay to the listeners once and in order, and
// drops what it has seen already; a channel without history is never deduped. Then Positions and encodeSince alone.
import t, { type Test } from 'tap'
import type { IncomingMessage } from 'node:http'
import type { FastifyInstance } from 'fastify'
import type { ForgeSocketOptions } from '../plugin.js'
import { MemoryBroker } from '../plugin.js'
import type { ChannelPosition, Message, RecoveryResult } from '../lib/client/index.js'
import { encodeSince, MAX_SINCE_CHANNELS, MAX_SINCE_LENGTH, Positions } from '../lib/client/positions.js'
import { build, room, serve, sign } from './helpers/server.js'
import { inState, reconnected, recordedClient, Seen, type RecordedClient } from './helpers/client-state.js'

const HISTORY = { size: 100, ttl: 60_000 }
const ann = sign({ sub: 'ann' })

type Since = Record<string, ChannelPosition>

/** The `since` of an upgrade's URL, decoded; null without one. */
function sinceOf (url: string): Since | null {
  const value = new URL(url, 'http://x').searchParams.get('since')
  return value === null ? null : JSON.parse(Buffer.from(value, 'base64url').toString('utf8')) as Since
}

/** Records the `since` of every upgrade `app` gets, in front of its other upgrade listeners. */
function upgradesOf (app: FastifyInstance): { since: Seen<Since | null>, lengths: number[] } {
  const since = new Seen<Since | null>()
  const lengths: number[] = []
  app.server.prependListener('upgrade', (req: IncomingMessage) => {
    lengths.push(new URL(req.url ?? '', 'http://x').searchParams.get('since')?.length ?? 0)
    since.push(sinceOf(req.url ?? ''))
  })
  return { since, lengths }
}

/** A server that keeps history on every channel (unless `options` says otherwise) and lets anyone subscribe. */
async function server (t: Test, options: ForgeSocketOptions = {}, setup?: (app: FastifyInstance) => void | Promise<void>): Promise<{ app: FastifyInstance, base: string, upgrades: ReturnType<typeof upgradesOf> }> {
  const { app, base } = await serve(t, { history: HISTORY, authorizeChannel: () => true, ...options }, setup)
  return { app, base, upgrades: upgradesOf(app) }
}

function publish (app: FastifyInstance, channel: string, from: number, to: number): void {
  for (let i = from; i <= to; i++) app.socket.broadcast(channel, { cmd: 'say', param: i })
}

interface Said { channel: string, seq: number | undefined, param: unknown }

interface RecoveringClient extends RecordedClient {
  /** Every `say` the listeners got. */
  says: Seen<Said>
  recoveries: Seen<[string, RecoveryResult]>
  /** Holds the next attempts (the token provider waits) until `release()`: the client stays down meanwhile. */
  hold: () => void
  release: () => void
}

function client (t: Test, url: string): RecoveringClient {
  let gate: Promise<void> = Promise.resolve()
  let open = (): void => {}
  const recorded = recordedClient(t, { url, token: async () => { await gate; return ann } })
  const says = new Seen<Said>()
  const recoveries = new Seen<[string, RecoveryResult]>()
  recorded.socket.on('say', (m: Message) => says.push({ channel: m.channel, seq: m.seq, param: m.param }))
  recorded.socket.onRecover((channel, result) => recoveries.push([channel, result]))
  return {
    ...recorded,
    says,
    recoveries,
    hold: () => { gate = new Promise((resolve) => { open = resolve }) },
    release: () => open()
  }
}

/** The seqs of the `say`s of `channel`, in the order the listeners got them. */
function seqs (c: RecoveringClient, channel: string): Array<number | undefined> {
  return c.says.items.filter((s) => s.channel === channel).map((s) => s.seq)
}

const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i)

/** Drops the client's connection from the server's side and keeps it down while `meanwhile` runs. */
async function dropWhile (app: FastifyInstance, c: RecoveringClient, meanwhile: () => void): Promise<void> {
  c.hold()
  app.socket.disconnect(c.socket.connectionId as string, 1001, 'test')
  await inState(c.socket, 'reconnecting')
  meanwhile()
  c.release()
  await inState(c.socket, 'open')
}

function refusedUpgrades (c: RecordedClient): string[] {
  return c.errors.items.map((e) => e.code).filter((code) => code === 'FST_SOCKET_UPGRADE_REFUSED')
}

t.test('a route channel: the missed messages come back after the reconnection, once and in order, then live ones', async (t) => {
  const s = await server(t)
  const c = client(t, `${s.base}/ws/x`)
  await c.opens.count(1)
  t.same(s.upgrades.since.items, [null], 'a first connection sends no since')
  const { epoch } = c.socket.positions['room-x'] as ChannelPosition
  t.same(c.socket.positions, { 'room-x': { epoch, seq: 0 } }, 'the position from connected')
  publish(s.app, 'room-x', 1, 3)
  await c.says.count(3)
  t.same(c.socket.positions, { 'room-x': { epoch, seq: 3 } }, 'each message moves it')

  await dropWhile(s.app, c, () => publish(s.app, 'room-x', 4, 6))
  t.same(s.upgrades.since.items[1], { 'room-x': { epoch, seq: 3 } }, 'the URL carries the last position')
  t.same(c.recoveries.items, [['room-x', { recovered: true, epoch, seq: 6, replayed: 3 }]], 'onRecover: 3 replayed')
  await c.says.count(6)
  publish(s.app, 'room-x', 7, 7)
  await c.says.count(7)
  t.same(seqs(c, 'room-x'), range(1, 7), 'the listeners saw 1…7 once each, in order')
  t.same(c.says.items.map((s) => s.param), range(1, 7))
  t.same(c.socket.positions, { 'room-x': { epoch, seq: 7 } })
  t.same(refusedUpgrades(c), [])
})

t.test('a subscribed channel recovers through its re-subscribe; the URL carries only the route channel', async (t) => {
  const s = await server(t)
  const c = client(t, `${s.base}/ws/x?via=test`)
  const answer = await c.socket.subscribe('news')
  const { epoch } = answer as ChannelPosition
  t.match(answer, { channel: 'news', epoch: String, seq: 0 }, 'subscribe() resolves with the server\'s answer')
  publish(s.app, 'news', 1, 3)
  await c.says.count(3)

  await dropWhile(s.app, c, () => publish(s.app, 'news', 4, 6))
  const room = (c.socket.positions['room-x'] as ChannelPosition)
  t.same(s.upgrades.since.items[1], { 'room-x': room }, 'not the subscribed channel')
  await c.recoveries.count(2)
  t.same(new Map(c.recoveries.items), new Map([
    ['room-x', { recovered: true, ...room, replayed: 0 }],
    ['news', { recovered: true, epoch, seq: 6, replayed: 3 }]
  ]), 'both reported; news replayed 3')
  publish(s.app, 'news', 7, 7)
  await c.says.count(7)
  t.same(seqs(c, 'news'), range(1, 7), '1…7 once each, in order')
  t.same(c.socket.positions.news, { epoch, seq: 7 })

  await c.socket.unsubscribe('news')
  t.same(Object.keys(c.socket.positions), ['room-x'], 'an unsubscribed channel\'s position is forgotten')
})

t.test('recovery refused (expired): reported, nothing replayed, the position reset, live messages flow', async (t) => {
  const s = await server(t, { history: { size: 2, ttl: 60_000 } })
  const c = client(t, `${s.base}/ws/x`)
  await c.opens.count(1)
  const { epoch } = c.socket.positions['room-x'] as ChannelPosition
  publish(s.app, 'room-x', 1, 3)
  await c.says.count(3)
  await dropWhile(s.app, c, () => publish(s.app, 'room-x', 4, 8))
  t.same(c.recoveries.items, [['room-x', { recovered: false, epoch, seq: 8, replayed: 0, reason: 'expired' }]])
  t.same(c.socket.positions, { 'room-x': { epoch, seq: 8 } }, 'the position is the top')
  publish(s.app, 'room-x', 9, 9)
  await c.says.count(4)
  t.same(seqs(c, 'room-x'), [1, 2, 3, 9], 'nothing replayed; the next live message comes')
})

t.test('a server restart (a new memory broker): reason epoch; the new stream\'s low seqs flow, and a channel without history is never deduped', async (t) => {
  const options: ForgeSocketOptions = { history: (channel) => channel === 'plain' ? false : HISTORY, authorizeChannel: () => true }
  const first = await build({ ...options, broker: new MemoryBroker() }, room)
  t.after(() => first.close())
  const address = await first.listen({ port: 0, host: '127.0.0.1' })
  const port = Number(new URL(address).port)
  const c = client(t, `ws://127.0.0.1:${port}/ws/x`)
  const plainAnswer = await c.socket.subscribe('plain')
  t.same(plainAnswer, { channel: 'plain' }, 'no position for a channel without history')
  const { epoch } = c.socket.positions['room-x'] as ChannelPosition
  publish(first, 'room-x', 1, 3)
  publish(first, 'plain', 1, 3)
  await c.says.count(6)
  t.same(seqs(c, 'plain'), [1, 2, 3], 'plain carries this node\'s seq')
  t.same(Object.keys(c.socket.positions), ['room-x'], 'plain is not tracked')

  c.hold()
  await first.close()
  await inState(c.socket, 'reconnecting')
  const second = await build({ ...options, broker: new MemoryBroker() }, room)
  t.after(() => second.close())
  const upgrades = upgradesOf(second)
  await second.listen({ port, host: '127.0.0.1' })
  c.release()
  await c.recoveries.count(1)
  const [channel, result] = c.recoveries.items[0] as [string, RecoveryResult]
  t.same(upgrades.since.items[0], { 'room-x': { epoch, seq: 3 } }, 'the old position went back')
  t.equal(channel, 'room-x')
  t.match(result, { recovered: false, seq: 0, replayed: 0, reason: 'epoch' }, 'another stream: not recovered')
  t.not(result.epoch, epoch, 'the new epoch')
  await inState(c.socket, 'open')
  t.same(c.socket.positions, { 'room-x': { epoch: result.epoch, seq: 0 } }, 'the position is the new stream\'s')

  publish(second, 'room-x', 1, 2)
  publish(second, 'plain', 1, 2)
  await c.says.count(10)
  t.same(seqs(c, 'room-x'), [1, 2, 3, 1, 2], 'the new stream\'s seqs 1, 2 are not taken for duplicates')
  t.same(seqs(c, 'plain'), [1, 2, 3, 1, 2], 'plain\'s per-node seq started again, and its messages still arrive')
})

t.test('a burst of broadcasts across two reconnections: the listeners see every seq once, strictly increasing', async (t) => {
  const s = await server(t, { history: { size: 10_000, ttl: 60_000, maxRecover: 10_000 } })
  const c = client(t, `${s.base}/ws/x`)
  await c.opens.count(1)
  let sent = 0
  const timer = setInterval(() => { for (let i = 0; i < 20; i++) s.app.socket.broadcast('room-x', { cmd: 'say', param: ++sent }) }, 2)
  t.after(() => clearInterval(timer))
  for (let round = 0; round < 2; round++) {
    await c.says.until((items) => items.length >= sent - 10 && items.length > 0)
    s.app.socket.disconnect(c.socket.connectionId as string, 1001, 'test')
    await reconnected(c.socket)
  }
  await c.says.until((items) => items.length >= 200)
  clearInterval(timer)
  publish(s.app, 'room-x', sent + 1, sent + 1)
  await c.says.until((items) => items.at(-1)?.param === sent + 1)
  const seen = seqs(c, 'room-x') as number[]
  t.same(seen, range(1, sent + 1), `all ${sent + 1} once, in order`)
  t.same(c.recoveries.items.map(([, r]) => r.recovered), [true, true], `both reconnections recovered (${c.recoveries.items.map(([, r]) => r.replayed).join(', ')} replayed)`)
  t.same(c.says.items.map((s) => s.param), seen, 'each message is the one its seq says')
})

t.test('more positions than the URL takes: the since is cut to fit, never refused; the rest are reported not recovered', async (t) => {
  const CHANNELS = 100
  const names = Array.from({ length: CHANNELS }, (_, i) => `a-channel-with-a-rather-long-name-of-its-own-${String(i).padStart(3, '0')}`)
  const s = await server(t, {}, (app) => {
    app.socket.onOpen(async (conn) => { for (const name of names) await app.socket.join(conn.id, name) })
  })
  const last = names[CHANNELS - 1] as string
  const c = client(t, `${s.base}/ws/x`)
  await c.opens.count(1)
  t.equal(Object.keys(c.socket.positions).length, CHANNELS + 1, 'a position for the route channel and each onOpen channel')
  publish(s.app, last, 1, 1)
  await c.says.count(1)

  await dropWhile(s.app, c, () => {})
  const since = s.upgrades.since.items[1] as Since
  const sent = Object.keys(since)
  t.notOk(sent.includes(last), 'the last channel did not fit')
  t.ok(sent.length > 10 && sent.length < CHANNELS + 1, `${sent.length} of ${CHANNELS + 1} positions fit`)
  t.ok((s.upgrades.lengths[1] as number) <= MAX_SINCE_LENGTH, `since is ${s.upgrades.lengths[1] as number} characters`)
  t.equal(sent[0], 'room-x', 'the route channel first')
  t.same(refusedUpgrades(c), [], 'the server took it')
  await c.recoveries.count(CHANNELS + 1)
  const recovered = c.recoveries.items.filter(([, r]) => r.recovered).map(([channel]) => channel)
  t.same(recovered.sort(), [...sent].sort(), 'those sent recovered')
  const left = c.recoveries.items.filter(([, r]) => !r.recovered)
  t.equal(left.length, CHANNELS + 1 - sent.length, 'the rest are reported')
  t.ok(left.every(([, r]) => r.reason === undefined && r.replayed === 0), '…not recovered, without a reason')
  t.ok(c.lines.items.some((line) => line.includes(`since: ${left.length} of ${CHANNELS + 1} channels left out`)), 'and logged')
  publish(s.app, last, 2, 2)
  await c.says.count(2)
  t.same(seqs(c, last), [1, 2], 'a channel left out gets its live messages')
})

t.test('channel-reset: reported as not recovered with its reason, the position is the reset\'s, listeners get it', async (t) => {
  const s = await server(t)
  const c = client(t, `${s.base}/ws/x`)
  await c.opens.count(1)
  const { epoch } = c.socket.positions['room-x'] as ChannelPosition
  const resets = new Seen<Message>()
  c.socket.on('channel-reset', (m) => resets.push(m))
  publish(s.app, 'room-x', 1, 3)
  await c.says.count(3)
  t.equal(s.app.socket.sendToConnection(c.socket.connectionId as string, { channel: 'room-x', cmd: 'channel-reset', param: { epoch, seq: 5, reason: 'gap' } }), true)
  await resets.count(1)
  t.same(resets.items[0], { channel: 'room-x', cmd: 'channel-reset', param: { epoch, seq: 5, reason: 'gap' } }, 'on(\'channel-reset\') gets it')
  t.same(c.recoveries.items, [['room-x', { recovered: false, epoch, seq: 5, replayed: 0, reason: 'gap' }]])
  t.same(c.socket.positions, { 'room-x': { epoch, seq: 5 } })
  publish(s.app, 'room-x', 4, 6)
  await c.says.until((items) => items.some((s) => s.seq === 6))
  t.same(seqs(c, 'room-x'), [1, 2, 3, 6], 'what is at or below the reset\'s position is dropped')
  t.ok(c.lines.items.some((line) => line.endsWith('duplicate room-x:5 dropped')), 'and logged')

  const off = c.socket.onRecover(() => t.fail('removed'))
  off()
  await dropWhile(s.app, c, () => {})
  t.same(s.upgrades.since.items[1], { 'room-x': { epoch, seq: 6 } })
  await c.recoveries.count(2)
  t.same(c.recoveries.items[1], ['room-x', { recovered: true, epoch, seq: 6, replayed: 0 }])
})

t.test('an onRecover listener may close the socket: it stays closed', async (t) => {
  const s = await server(t)
  const c = client(t, `${s.base}/ws/x`)
  await c.opens.count(1)
  c.socket.onRecover(() => c.socket.close())
  s.app.socket.disconnect(c.socket.connectionId as string, 1001, 'test')
  await c.recoveries.count(1)
  await inState(c.socket, 'closed')
  t.same(c.states.items, ['connecting>open', 'open>reconnecting', 'reconnecting>closed'], 'never open again')
  t.equal(c.opens.items.length, 1)
})

/** A host for Positions alone, that keeps what it is told. */
function host (): { positions: Positions, reports: Array<[string, RecoveryResult]>, lines: string[] } {
  const reports: Array<[string, RecoveryResult]> = []
  const lines: string[] = []
  const positions = new Positions({
    recovered: (channel, result) => reports.push([channel, result]),
    log: (line) => lines.push(line)
  })
  return { positions, reports, lines }
}

const say = (channel: string, seq?: number): Message => seq === undefined ? { channel, cmd: 'say', param: null } : { channel, cmd: 'say', param: null, seq }
const decode = (value: string | undefined): unknown => value === undefined ? undefined : JSON.parse(Buffer.from(value, 'base64url').toString('utf8'))

t.test('Positions: dedupe, gaps, and which answers move a position', async (t) => {
  const { positions, reports, lines } = host()
  t.equal(positions.query(), undefined, 'nothing to send at first')
  t.equal(positions.heard(say('a', 1)), true, 'untracked: anything goes')
  t.equal(positions.heard(say('a', 1)), true, '…even the same seq again')

  positions.connected({ connectionId: 'c1', channels: ['a'], positions: { a: { epoch: 'e1', seq: 5 }, bad: { epoch: '', seq: 1 }, worse: { epoch: 'e', seq: 1.5 } } })
  t.same(positions.snapshot, { a: { epoch: 'e1', seq: 5 } }, 'malformed positions are not kept')
  t.same([5, 6, 8, 7, 8, 9].map((seq) => positions.heard(say('a', seq))), [false, true, true, false, false, true])
  t.ok(lines.includes('gap a: 6 to 8'))
  t.equal(positions.heard(say('a')), true, 'a message without seq (sent with except) passes')
  t.equal(positions.heard({ channel: 'a', cmd: 'say', param: null, seq: 9.5 }), true, 'a seq that is no integer is not compared')
  t.same(positions.snapshot, { a: { epoch: 'e1', seq: 9 } })

  const snapshot = positions.snapshot as Record<string, { seq: number }>
  ;(snapshot.a as { seq: number }).seq = 100
  t.same(positions.snapshot.a, { epoch: 'e1', seq: 9 }, 'the snapshot is a copy')

  t.same(decode(positions.query()), { a: { epoch: 'e1', seq: 9 } }, 'the URL: the channels the server gave')
  positions.connected({ connectionId: 'c2', channels: ['a'], positions: { a: { epoch: 'e1', seq: 12 } }, recovery: { a: { recovered: true, epoch: 'e1', seq: 12, replayed: 3 } } })
  t.same(reports, [['a', { recovered: true, epoch: 'e1', seq: 12, replayed: 3 }]])
  t.same(positions.snapshot.a, { epoch: 'e1', seq: 9 }, 'recovered: the position waits for the replay')
  t.same([10, 11, 12, 12].map((seq) => positions.heard(say('a', seq))), [true, true, true, false], 'the replay moves it')

  // A subscribed channel: its answers.
  t.equal(positions.from('sub'), undefined)
  positions.subscribed({ channel: 'sub', epoch: 's1', seq: 4 })
  t.same(positions.from('sub'), { epoch: 's1', seq: 4 }, 'a plain answer: where it starts')
  t.equal(positions.heard(say('sub', 4)), false)
  positions.subscribed({ channel: 'sub', epoch: 's1', seq: 2 })
  t.same(positions.from('sub'), { epoch: 's1', seq: 4 }, 'tracked in the same stream: a later plain answer does not move it back')
  positions.subscribed({ channel: 'sub', epoch: 's2', seq: 1 })
  t.same(positions.from('sub'), { epoch: 's2', seq: 1 }, '…another stream does')
  positions.subscribed({ channel: 'sub', epoch: 's2', seq: 7, recovered: false, replayed: 0, reason: 'too-many' })
  t.same(reports.at(-1), ['sub', { recovered: false, epoch: 's2', seq: 7, replayed: 0, reason: 'too-many' }])
  t.same(positions.from('sub'), { epoch: 's2', seq: 7 }, 'not recovered: the top')
  positions.subscribed({ channel: 'sub', epoch: 's2', seq: 9, recovered: true, replayed: 20 })
  t.same(reports.at(-1), ['sub', { recovered: false, epoch: 's2', seq: 9, replayed: 0 }], 'a recovery that does not add up is not trusted')
  positions.subscribed({ channel: 'sub' })
  t.equal(positions.from('sub'), undefined, 'an answer without a position: no history, forgotten')
  t.equal(positions.heard(say('sub', 1)), true)

  // channel-reset
  t.equal(positions.heard({ channel: 'a', cmd: 'channel-reset', param: { epoch: 'e1', seq: 20, reason: 'gap' } }), true, 'a reset goes on to the listeners')
  t.same(reports.at(-1), ['a', { recovered: false, epoch: 'e1', seq: 20, replayed: 0, reason: 'gap' }])
  t.equal(positions.heard({ channel: 'a', cmd: 'channel-reset', param: { epoch: 'e2', seq: 3 } }), true)
  t.same(reports.at(-1), ['a', { recovered: false, epoch: 'e2', seq: 3, replayed: 0 }], 'without a reason')
  const count = reports.length
  t.equal(positions.heard({ channel: 'a', cmd: 'channel-reset', param: null }), true, 'a malformed reset is passed on…')
  t.equal(reports.length, count, '…and changes nothing')
  t.same(positions.snapshot.a, { epoch: 'e2', seq: 3 })
})

t.test('Positions across connections: what the URL carries, what is reported, what is forgotten', async (t) => {
  const { positions, reports } = host()
  positions.connected({ connectionId: 'c1', channels: ['home'], positions: { home: { epoch: 'h', seq: 1 }, hooked: { epoch: 'k', seq: 2 }, sub: { epoch: 's', seq: 3 }, gone: { epoch: 'g', seq: 4 } }, recovery: { home: { recovered: true } as unknown as RecoveryResult } })
  t.same(reports, [], 'a malformed answer to a since never sent: nothing to report')
  // `sub` is one the server put the connection in, and the app subscribed to as well.
  positions.subscribed({ channel: 'sub', epoch: 's', seq: 3 })
  t.same(decode(positions.query()), { home: { epoch: 'h', seq: 1 }, hooked: { epoch: 'k', seq: 2 }, sub: { epoch: 's', seq: 3 }, gone: { epoch: 'g', seq: 4 } })
  // The next connection: home recovered, hooked not answered, sub and gone no longer given.
  positions.connected({ connectionId: 'c2', channels: ['home'], positions: { home: { epoch: 'h', seq: 1 }, hooked: { epoch: 'k', seq: 9 } }, recovery: { home: { recovered: true, epoch: 'h', seq: 1, replayed: 0 }, hooked: { recovered: true } as unknown as RecoveryResult } })
  t.same(reports, [['home', { recovered: true, epoch: 'h', seq: 1, replayed: 0 }], ['hooked', { recovered: false, epoch: 'k', seq: 9, replayed: 0 }]],
    'a channel the URL carried without an answer (or a malformed one): not recovered')
  t.same(positions.snapshot, { home: { epoch: 'h', seq: 1 }, hooked: { epoch: 'k', seq: 9 }, sub: { epoch: 's', seq: 3 } },
    'a channel no longer given is forgotten, unless subscribed')
  t.same(positions.from('sub'), { epoch: 's', seq: 3 }, 'kept for the re-subscribe')
  t.equal(positions.heard(say('sub', 3)), true, 'not tracked on this connection until its answer')
  positions.forget('home')
  t.same(decode(positions.query()), { hooked: { epoch: 'k', seq: 9 } }, 'a forgotten channel is not sent')
  positions.connected({ connectionId: 'c3', channels: ['home'] })
  t.equal(positions.query(), undefined, 'no positions given, nothing to send')
})

t.test('encodeSince: base64url of the positions, cut to 128 channels and 8192 characters', async (t) => {
  const one = encodeSince([['chat-room-lobby', { epoch: 'Zx3-_aB', seq: 41 }]])
  t.match(one.value, /^[A-Za-z0-9_-]+$/, 'base64url, no padding')
  t.same(decode(one.value), { 'chat-room-lobby': { epoch: 'Zx3-_aB', seq: 41 } })
  t.same(one.left, [])
  t.same(decode(encodeSince([['ünïcødé-☃', { epoch: 'e', seq: 0 }]]).value), { 'ünïcødé-☃': { epoch: 'e', seq: 0 } }, 'UTF-8')

  const many = Array.from({ length: 150 }, (_, i) => [`c${i}`, { epoch: 'e', seq: i }] as const)
  const cut = encodeSince(many)
  t.equal(Object.keys(decode(cut.value) as object).length, MAX_SINCE_CHANNELS, '128 channels at most')
  t.same(cut.left, many.slice(MAX_SINCE_CHANNELS).map(([channel]) => channel), 'the rest are left out, in order')

  for (const width of [200, 201, 202, 255]) {
    const long = Array.from({ length: 120 }, (_, i) => [`${'x'.repeat(width - 4)}${String(i).padStart(4, '0')}`, { epoch: 'E'.repeat(64), seq: Number.MAX_SAFE_INTEGER }] as const)
    const { value, left } = encodeSince(long)
    const kept = Object.keys(decode(value) as object)
    t.ok(value.length <= MAX_SINCE_LENGTH, `channels of ${width}: ${value.length} characters`)
    t.equal(encodeSince(long.slice(0, kept.length + 1)).left.length, 1, '…and one more would not fit')
    t.equal(kept.length + left.length, long.length, `${kept.length} kept, ${left.length} left`)
  }
  t.same(encodeSince([['x'.repeat(7000), { epoch: 'e', seq: 1 }]]), { value: '', left: ['x'.repeat(7000)] }, 'one that can never fit')
  t.same(encodeSince([]), { value: '', left: [] })
})
