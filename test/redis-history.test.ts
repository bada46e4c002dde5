// Channel history on the Redis broker: two brokers (two nodes, no app around them) on a redis-server this file
// spawns on a free port, and kills, freezes, restarts empty or restarts from an older snapshot.
import t, { type Test } from 'tap'
import { once } from 'node:events'
import { setTimeout as sleep } from 'node:timers/promises'
import { Redis } from 'ioredis'
import { RedisBroker, type BrokerMessage, type HistorySettings, type OutboundMessage, type StreamPosition } from '../plugin.js'
import type { ChannelBroadcast } from '../lib/broker/broker.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'

/** One node: its broker, and what the broker delivered to it and logged as errors. */
interface Node {
  nodeId: string
  broker: RedisBroker
  delivered: BrokerMessage[]
  errors: string[]
  /** Resolves once `count` messages have been delivered; rejects after 10 s, saying how many came. */
  received: (count: number) => Promise<void>
}

let nodes = 0

/** A RedisBroker started with a minimal host, closed after the test. */
async function node (t: Test, url: string, commandTimeout = 1000): Promise<Node> {
  const nodeId = `node-${++nodes}`
  const broker = new RedisBroker({ redis: url, commandTimeout })
  const delivered: BrokerMessage[] = []
  const errors: string[] = []
  const waiters = new Set<() => void>()
  await broker.start({
    nodeId,
    deliver: (message) => {
      delivered.push(message)
      for (const waiter of waiters) waiter()
    },
    log: { error: (_obj, msg) => { errors.push(msg) }, warn () {}, info () {} },
    counts: () => ({ connections: 0, channels: 0, messagesIn: 0, messagesOut: 0 }),
    presence: () => []
  })
  t.after(() => broker.close())
  const received = (count: number): Promise<void> => new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      waiters.delete(check)
      reject(new Error(`${nodeId}: ${delivered.length} messages delivered, not ${count}`))
    }, 10_000)
    const check = (): void => {
      if (delivered.length < count) return
      waiters.delete(check)
      clearTimeout(timer)
      resolve()
    }
    waiters.add(check)
    check()
  })
  return { nodeId, broker, delivered, errors, received }
}

/** History settings: generous ones, with `changes`. */
function settings (changes: Partial<HistorySettings> = {}): HistorySettings {
  return { size: 100, ttl: 60_000, metaTtl: 600_000, maxRecover: 1000, ...changes }
}

/** A channel message from `from`, as the cluster hands it to append. */
function say (from: Node, channel: string, param: unknown): ChannelBroadcast {
  return { type: 'channel', origin: from.nodeId, channel, message: { channel, cmd: 'say', param } }
}

/** Appends `count` messages (param 0, 1, …) one after the other; their positions. */
async function appendMany (from: Node, channel: string, count: number, s: HistorySettings): Promise<StreamPosition[]> {
  const positions: StreamPosition[] = []
  for (let i = 0; i < count; i++) positions.push(await from.broker.append(say(from, channel, i), s))
  return positions
}

/** 1, 2, … `to`. */
function range (from: number, to: number): number[] {
  return Array.from({ length: to - from + 1 }, (_, i) => from + i)
}

/** Checks `condition` every 10 ms until it holds; fails after 5 s. */
async function poll (what: string, condition: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 5000
  while (!(await condition())) {
    if (Date.now() > deadline) throw new Error(`${what}: not after 5 s`)
    await sleep(10)
  }
}

function seqs (messages: OutboundMessage[]): Array<number | undefined> {
  return messages.map((m) => m.seq)
}

function increasing (list: Array<number | undefined>): boolean {
  return list.every((n, i) => n !== undefined && (i === 0 || n > (list[i - 1] as number)))
}

async function runId (admin: Redis): Promise<string | undefined> {
  return /run_id:(\w+)/.exec(await admin.info('server'))?.[1]
}

const hs = (channel: string): string => `forge-socket:hs:{${channel}}`
const hm = (channel: string): string => `forge-socket:hm:{${channel}}`

if (requireRedis(t)) {
  t.test('append numbers 1, 2, 3… on every node; position and read agree; at most `size` are kept', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis.url)
    const b = await node(t, redis.url)
    const admin = redis.client(t)
    const s = settings({ size: 5 })

    const start = await b.broker.position('lobby', s)
    t.match(start, { epoch: /^[\w-]{16}$/, seq: 0 }, 'a channel without a stream begins at 0, with a new epoch')
    const { epoch } = start
    t.same(await admin.hgetall(hm('lobby')), { e: epoch, o: '0', r: await runId(admin) }, 'and its meta is written, with the run_id')
    t.ok(await admin.pttl(hm('lobby')) > 0, 'to expire after metaTtl')

    const message = say(a, 'lobby', { text: 'héllo ✓', n: 1 })
    message.message.ref = 'r-1'
    t.same(await a.broker.append(message, s), { epoch, seq: 1 }, 'the first append goes on in the epoch the position began')
    t.equal(message.message.seq, undefined, 'the message handed in is left as it was')
    const positions = [{ epoch, seq: 1 }]
    for (let i = 2; i <= 8; i++) positions.push(await (i % 2 === 0 ? b : a).broker.append(say(a, 'lobby', { n: i }), s))
    t.same(positions, range(1, 8).map((seq) => ({ epoch, seq })), 'one count for both nodes')
    t.same(await a.broker.position('lobby', s), { epoch, seq: 8 })
    t.equal(await admin.xlen(hs('lobby')), 5, 'the stream keeps `size`')
    const stored = await admin.xrange(hs('lobby'), '-', '+', 'COUNT', 1)
    t.same(stored, [['4-0', ['m', '{"channel":"lobby","cmd":"say","param":{"n":4}}']]], 'entry id <seq>-0, the message without its seq')
    const pttl = await admin.pttl(hs('lobby'))
    t.ok(pttl > 0 && pttl <= s.ttl, 'the stream expires after ttl')
    const metaPttl = await admin.pttl(hm('lobby'))
    t.ok(metaPttl > s.ttl && metaPttl <= s.metaTtl, 'the meta after metaTtl')

    const newest = await b.broker.read('lobby', undefined, 100, s)
    t.same(newest, { epoch, seq: 8, messages: range(4, 8).map((n) => ({ channel: 'lobby', cmd: 'say', param: { n }, seq: n })) }, 'no since: the newest, oldest first')
    t.same(seqs((await b.broker.read('lobby', undefined, 2, s)).messages), [7, 8], 'the newest `limit`')
    t.same(seqs((await b.broker.read('lobby', { epoch, seq: 5 }, 2, s)).messages), [6, 7], 'since: the next `limit`')
    t.same(seqs((await b.broker.read('lobby', { epoch, seq: 2 }, 100, s)).messages), [4, 5, 6, 7, 8], 'since a trimmed seq: what is kept after it')
    t.same(await b.broker.read('lobby', { epoch, seq: 8 }, 100, s), { epoch, seq: 8, messages: [] }, 'since the top: none')
    t.same(await b.broker.read('lobby', { epoch, seq: 80 }, 100, s), { epoch, seq: 8, messages: [] }, 'since past the top: none')
    t.same(await b.broker.read('lobby', { epoch, seq: 3 }, 0, s), { epoch, seq: 8, messages: [] }, 'limit 0: the position alone')
    const other = await b.broker.read('lobby', { epoch: 'another-epoch-xx', seq: 7 }, 2, s)
    t.same({ epoch: other.epoch, seq: other.seq, messages: seqs(other.messages) }, { epoch, seq: 8, messages: [7, 8] }, 'another epoch: the newest, in the current epoch')

    await a.broker.append(message, s)
    t.same((await a.broker.read('lobby', { epoch, seq: 8 }, 1, s)).messages, [{ channel: 'lobby', cmd: 'say', param: { text: 'héllo ✓', n: 1 }, ref: 'r-1', seq: 9 }], 'a message reads back as it was sent, with its seq')
  })

  t.test('two nodes append 2,000 messages each at once: one order, 1 to 4,000, on both', async (t) => {
    const redis = await RedisProcess.start(t)
    // Generous: 4,000 scripts are in flight at once on a machine that may be busy.
    const a = await node(t, redis.url, 10_000)
    const b = await node(t, redis.url, 10_000)
    await Promise.all([a.broker.subscribe('race'), b.broker.subscribe('race')])
    const s = settings({ size: 10_000 })
    const fromA: Array<Promise<StreamPosition>> = []
    const fromB: Array<Promise<StreamPosition>> = []
    for (let i = 0; i < 2000; i++) {
      fromA.push(a.broker.append(say(a, 'race', i), s))
      fromB.push(b.broker.append(say(b, 'race', i), s))
    }
    const mine = new Map([[a, await Promise.all(fromA)], [b, await Promise.all(fromB)]])
    const { epoch } = mine.get(a)?.[0] as StreamPosition
    await Promise.all([a.received(4000), b.received(4000)])

    for (const [self, other] of [[a, b], [b, a]] as const) {
      const appended = mine.get(self) as StreamPosition[]
      t.ok(appended.every((p) => p.epoch === epoch), `${self.nodeId}: every append in one epoch`)
      t.ok(increasing(appended.map((p) => p.seq)), `${self.nodeId}: its own messages keep their order`)
      const got = self.delivered as ChannelBroadcast[]
      t.equal(self.errors.length, 0, `${self.nodeId}: nothing unreadable`)
      t.ok(got.every((m) => m.type === 'channel' && m.epoch === epoch), `${self.nodeId}: every message delivered has the epoch`)
      const theirs = got.filter((m) => m.origin === other.nodeId)
      t.equal(theirs.length, 2000, `${self.nodeId}: all of ${other.nodeId}'s messages`)
      t.same(theirs.map((m) => m.message.param), range(0, 1999), `${self.nodeId}: in the order ${other.nodeId} sent them`)
      const received = theirs.map((m) => m.message.seq)
      t.ok(increasing(received), `${self.nodeId}: in increasing seq`)
      const merged = [...appended.map((p) => p.seq), ...received as number[]].sort((x, y) => x - y)
      t.same(merged, range(1, 4000), `${self.nodeId}: what it appended and what it received make 1…4,000, once each`)
    }
    // Redis sends a node its own messages too (the cluster drops them): both nodes saw the whole stream alike.
    t.same(a.delivered.map((m) => (m as ChannelBroadcast).message.seq), range(1, 4000), 'one order on every node')
    t.same(b.delivered, a.delivered)
    t.same(await a.broker.position('race', s), { epoch, seq: 4000 })
  })

  t.test('ttl: the messages are forgotten, the position is kept; metaTtl: a new epoch begins', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis.url)
    const b = await node(t, redis.url)
    const admin = redis.client(t)

    const short = settings({ ttl: 200, metaTtl: 60_000 })
    const [first] = await appendMany(a, 'ttl', 3, short)
    const { epoch } = first as StreamPosition
    await poll('the stream expired', async () => await admin.exists(hs('ttl')) === 0)
    t.same(await b.broker.read('ttl', undefined, 10, short), { epoch, seq: 3, messages: [] }, 'no messages; the same epoch and top')
    t.same(await b.broker.read('ttl', { epoch, seq: 3 }, 10, short), { epoch, seq: 3, messages: [] }, 'a client at the top is still in step')
    t.same(await b.broker.append(say(b, 'ttl', 'next'), short), { epoch, seq: 4 }, 'the next append goes on from there')
    t.same(seqs((await a.broker.read('ttl', undefined, 10, short)).messages), [4])

    const brief = settings({ ttl: 100, metaTtl: 300 })
    const [old] = await appendMany(a, 'meta', 2, brief)
    await poll('the meta expired', async () => await admin.exists(hm('meta')) === 0)
    const renewed = await b.broker.position('meta', brief)
    t.not(renewed.epoch, old?.epoch, 'a new epoch')
    t.equal(renewed.seq, 0, 'from 0')
    const pttl = await admin.pttl(hm('meta'))
    t.ok(pttl > 0 && pttl <= brief.metaTtl, 'the meta the read made expires after metaTtl')
    t.same(await a.broker.append(say(a, 'meta', 'again'), brief), { epoch: renewed.epoch, seq: 1 }, 'appends go on in the epoch the read began')
  })

  t.test('fencing: a Redis restarted empty begins every stream again, with a new epoch', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis.url)
    const b = await node(t, redis.url)
    const s = settings()
    const [before] = await appendMany(a, 'gone', 3, s)
    await appendMany(a, 'gone-too', 3, s)
    await redis.kill()
    await t.rejects(a.broker.append(say(a, 'gone', 'away'), s), { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'while Redis is away an append fails at once')
    await t.rejects(a.broker.read('gone', undefined, 10, s), { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'so does a read')
    await redis.restart()
    await Promise.all([a.broker.whenReady(), b.broker.whenReady()])

    const appended = await a.broker.append(say(a, 'gone', 'back'), s)
    t.not(appended.epoch, before?.epoch, 'a new epoch')
    t.equal(appended.seq, 1, 'seq begins again at 1')
    const read = await b.broker.read('gone-too', { epoch: before?.epoch as string, seq: 3 }, 10, s)
    t.not(read.epoch, before?.epoch, 'a read begins the stream too')
    t.same({ seq: read.seq, messages: read.messages }, { seq: 0, messages: [] })
  })

  t.test('fencing: a Redis restarted from an older snapshot never goes on in the old epoch', async (t) => {
    const redis = await RedisProcess.start(t, { snapshots: true })
    const a = await node(t, redis.url)
    const s = settings()
    const [p] = await appendMany(a, 'p', 5, s)
    const [q] = await appendMany(a, 'q', 5, s)
    const admin = redis.client(t)
    const oldRun = await runId(admin)
    await admin.save()
    await appendMany(a, 'p', 5, s)
    await appendMany(a, 'q', 5, s)
    t.same(await a.broker.position('p', s), { epoch: p?.epoch, seq: 10 }, 'clients were told seq 10')
    await redis.kill()
    await redis.restart()
    await a.broker.whenReady()

    const restored = redis.client(t)
    t.same(await restored.hgetall(hm('p')), { e: p?.epoch, o: '5', r: oldRun }, 'Redis is back at the snapshot: the old epoch at seq 5')
    t.not(await runId(restored), oldRun, 'under a new run_id')
    const position = await a.broker.position('p', s)
    t.not(position.epoch, p?.epoch, 'a read begins a new epoch')
    t.equal(position.seq, 0)
    t.equal(await restored.exists(hs('p')), 0, 'and drops the old epoch\'s messages')
    t.same((await a.broker.read('p', { epoch: p?.epoch as string, seq: 5 }, 10, s)).messages, [], 'nothing is read as if after the old seq 5')
    t.same(await a.broker.append(say(a, 'p', 'new'), s), { epoch: position.epoch, seq: 1 }, 'appends go on in the new epoch')

    const appended = await a.broker.append(say(a, 'q', 'new'), s)
    t.not(appended.epoch, q?.epoch, 'an append begins a new epoch too')
    t.equal(appended.seq, 1)
    const page = await a.broker.read('q', undefined, 100, s)
    t.same({ epoch: page.epoch, seq: page.seq, messages: page.messages.map((m) => m.param) }, { epoch: appended.epoch, seq: 1, messages: ['new'] }, 'with none of the old epoch\'s messages')
  })

  t.test('Redis frozen (SIGSTOP) during appends: they fail within the command timeout; after SIGCONT no seq is given twice', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis.url, 200)
    const b = await node(t, redis.url, 200)
    await b.broker.subscribe('frozen')
    const s = settings()
    await appendMany(a, 'frozen', 3, s)
    const inFlight = Array.from({ length: 10 }, (_, i) => a.broker.append(say(a, 'frozen', `in-flight-${i}`), s))
    redis.freeze()
    const frozen = Array.from({ length: 5 }, (_, i) => a.broker.append(say(a, 'frozen', `frozen-${i}`), s))
    const outcomes = await Promise.allSettled([...inFlight, ...frozen])
    const failed = outcomes.slice(inFlight.length)
    t.ok(failed.every((o) => o.status === 'rejected' && (o.reason as { code?: string }).code === 'FST_SOCKET_BROKER_UNAVAILABLE'), 'every append sent during the freeze rejected, coded')
    redis.thaw()
    await a.broker.whenReady()
    const after = await appendMany(a, 'frozen', 3, s)

    const page = await a.broker.read('frozen', undefined, 100, s)
    const kept = seqs(page.messages)
    t.ok(increasing(kept), 'the stream\'s seqs increase')
    t.same(kept, range(1, page.seq), 'each once, none missing')
    // What timed out was sent: Redis ran it when it woke (a timeout leaves the outcome unknown).
    t.equal(page.seq, 3 + 10 + 5 + 3, 'the timed-out appends ran when Redis woke')
    const given = [...outcomes, ...after.map((value) => ({ status: 'fulfilled', value }))]
      .flatMap((o) => o.status === 'fulfilled' ? [(o as PromiseFulfilledResult<StreamPosition>).value.seq] : [])
    t.equal(new Set(given).size, given.length, 'no seq answered twice')
    t.ok(increasing(after.map((p) => p.seq)) && (after[0]?.seq as number) > 18, 'the appends after SIGCONT come after every earlier one')
    await b.received(page.seq)
    t.same(b.delivered.map((m) => (m as ChannelBroadcast).message.seq), kept, 'the other node got each once, in order')
  })

  t.test('a plain publish of a channel message goes on beside history; the payload an append publishes', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis.url)
    const b = await node(t, redis.url)
    const listener = redis.client(t)
    const admin = redis.client(t)
    await b.broker.subscribe('mixed')
    const payloads: string[] = []
    listener.on('message', (_channel: string, payload: string) => { payloads.push(payload) })
    // ioredis sends a SUBSCRIBE made before 'ready' at once, ahead of its ready check, which then fails (the
    // connection is in subscriber mode): it reconnects, and what is published meanwhile is lost.
    if (listener.status !== 'ready') await once(listener, 'ready')
    await listener.subscribe('forge-socket:ch:mixed')
    const s = settings()

    const first = await a.broker.append(say(a, 'mixed', 'one'), s)
    const plain: BrokerMessage = { type: 'channel', origin: a.nodeId, channel: 'mixed', message: { channel: 'mixed', cmd: 'no-history', param: 2 }, except: 'conn-1' }
    await a.broker.publish(plain)
    await a.broker.append(say(a, 'mixed', 'three'), s)
    await b.received(3)
    t.same(b.delivered, [
      { type: 'channel', origin: a.nodeId, channel: 'mixed', message: { channel: 'mixed', cmd: 'say', param: 'one', seq: 1 }, epoch: first.epoch },
      plain,
      { type: 'channel', origin: a.nodeId, channel: 'mixed', message: { channel: 'mixed', cmd: 'say', param: 'three', seq: 2 }, epoch: first.epoch }
    ], 'in the order published: the appended ones with seq and epoch, the plain one as it was')
    await poll('the listener heard all three', async () => payloads.length === 3)
    t.equal(payloads[0], `h:1:${first.epoch}:{"type":"channel","origin":"${a.nodeId}","channel":"mixed","message":{"channel":"mixed","cmd":"say","param":"one"}}`, 'h:<seq>:<epoch>:<JSON>')
    t.same(JSON.parse(payloads[1] as string), plain, 'a plain publish is JSON, as before')

    for (const garbage of ['h:3:epoch-without-json', `h:3:${first.epoch}:{"type":`, `h:3:${first.epoch}:{"type":"channel"}`]) await admin.publish('forge-socket:ch:mixed', garbage)
    await admin.publish('forge-socket:ch:mixed', JSON.stringify(plain))
    await b.received(4)
    t.same(b.delivered.slice(3), [plain], 'an unreadable payload is not delivered')
    t.same(b.errors, ['unreadable message from Redis', 'unreadable message from Redis', 'unreadable message from Redis'], 'but logged')
  })

  t.test('a script that fails rejects, coded, and gives no seq away', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis.url)
    const admin = redis.client(t)
    const s = settings()
    const { epoch } = await a.broker.append(say(a, 'typed', 1), s)
    await admin.del(hs('typed'))
    await admin.set(hs('typed'), 'not a stream')
    await t.rejects(a.broker.append(say(a, 'typed', 2), s), { code: 'FST_SOCKET_BROKER_UNAVAILABLE', message: /WRONGTYPE/ }, 'append')
    await t.rejects(a.broker.read('typed', undefined, 10, s), { code: 'FST_SOCKET_BROKER_UNAVAILABLE', message: /WRONGTYPE/ }, 'read')
    t.same(await a.broker.position('typed', s), { epoch, seq: 1 }, 'the failed append took no seq')
    await admin.del(hs('typed'))
    t.same(await a.broker.append(say(a, 'typed', 3), s), { epoch, seq: 2 })
  })
}
