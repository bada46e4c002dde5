// Recovery and gap healing over Redis, end to end: two forge-socket nodes on a redis-server this file spawns (and
// restarts, empties, reloads from an older snapshot, freezes), and WebSocket clients on both.
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { RedisBroker } from '../plugin.js'
import { until } from './helpers/cluster.js'
import { serve, type Client } from './helpers/server.js'
import { open, positionOf, type Position } from './helpers/recovery.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'
import type { OutboundMessage } from '../schemas/envelope.js'

const HISTORY = { size: 10_000, ttl: 60_000, maxRecover: 10_000 }

if (requireRedis(t)) {
  /** A node: an app on a RedisBroker on `redis`, with history on every channel and the room route. */
  async function node (t: Test, redis: RedisProcess, commandTimeout = 1000): Promise<{ app: FastifyInstance, base: string, broker: RedisBroker }> {
    const broker = new RedisBroker({ redis: redis.url, commandTimeout })
    // Room for a burst of 20,000 messages written to a client at once.
    const { app, base } = await serve(t, { broker, history: HISTORY, sendBufferLimit: 16 * 1024 * 1024 })
    return { app, base, broker }
  }

  const says = (frames: OutboundMessage[]): OutboundMessage[] => frames.filter((m) => m.cmd === 'say')
  const range = (from: number, to: number): number[] => Array.from({ length: to - from + 1 }, (_, i) => from + i)

  /** Broadcasts `count` messages from `app`, numbered `from` on, without waiting for anything. */
  function publish (app: FastifyInstance, channel: string, from: number, count: number, tag = ''): void {
    for (let i = from; i < from + count; i++) app.socket.broadcast(channel, { cmd: 'say', param: `${tag}${i}` })
  }

  /**
   * Resolves once the client has a frame with seq ≥ `seq`; fails after 20 s (what it has then is what the test's
   * assertions should show), so a lost message fails the test instead of hanging it.
   */
  async function upTo (c: { client: Client, frames: OutboundMessage[] }, seq: number): Promise<void> {
    if (c.frames.some((m) => (m.seq ?? 0) >= seq)) return
    let timer: NodeJS.Timeout | undefined
    const late = new Promise<void>((resolve) => { timer = setTimeout(resolve, 20_000) })
    await Promise.race([c.client.next((m) => (m.seq ?? 0) >= seq), late])
    clearTimeout(timer)
  }

  t.test('a client that drops on one node recovers on the other, with the seqs the first delivered', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const b = await node(t, redis)
    const first = open(a.base, 'lobby', 'ann')
    const { epoch } = positionOf(await first.connected, 'room-lobby')
    publish(a.app, 'room-lobby', 1, 3)
    await upTo(first, 3)
    first.client.close()
    await first.client.closed
    publish(b.app, 'room-lobby', 4, 2)
    publish(a.app, 'room-lobby', 6, 1)
    // The next test of position: b's stream says 6 once both nodes' appends are in.
    await until(async () => (await b.app.socket.history('room-lobby'))?.seq === 6)
    const back = open(b.base, 'lobby', 'ann', { 'room-lobby': { epoch, seq: 3 } })
    t.same(((await back.connected).param as { recovery: unknown }).recovery, { 'room-lobby': { recovered: true, epoch, seq: 6, replayed: 3 } })
    publish(a.app, 'room-lobby', 7, 1)
    await upTo(back, 7)
    t.same(says(back.frames).map((m) => [m.seq, m.param]), [[4, '4'], [5, '5'], [6, '6'], [7, '7']], 'the missed ones in order, then live')
    t.same(says(first.frames).map((m) => m.seq), [1, 2, 3])
    back.client.close()
  })

  t.test('two nodes each publish 10,000 to one channel at once: one order for every member on both, seqs contiguous', async (t) => {
    const redis = await RedisProcess.start(t)
    // 20,000 appends sent at once wait in line at Redis: more than a second, on this machine, for the last of them.
    const a = await node(t, redis, 5000)
    const b = await node(t, redis, 5000)
    const onA = open(a.base, 'busy', 'ann')
    const onB = open(b.base, 'busy', 'bob')
    await Promise.all([onA.connected, onB.connected])
    // Answered once each node's subscription is in place.
    await Promise.all([onA.client.request('room-busy', 'ping', null), onB.client.request('room-busy', 'ping', null)])
    publish(a.app, 'room-busy', 1, 10_000, 'a')
    publish(b.app, 'room-busy', 1, 10_000, 'b')
    await Promise.all([upTo(onA, 20_000), upTo(onB, 20_000)])
    const seenA = says(onA.frames)
    const seenB = says(onB.frames)
    t.same(seenA.map((m) => m.seq), range(1, 20_000), 'on A: 1…20,000, each once')
    t.same(seenB.map((m) => m.param), seenA.map((m) => m.param), 'on B: the same messages in the same order')
    for (const tag of ['a', 'b']) {
      const own = seenA.map((m) => m.param as string).filter((p) => p.startsWith(tag)).map((p) => Number(p.slice(1)))
      t.same(own, range(1, 10_000), `${tag}'s messages in the order ${tag} sent them`)
    }
    t.notOk([...onA.frames, ...onB.frames].some((m) => m.cmd === 'channel-reset'))
    onA.client.close()
    onB.client.close()
  })

  t.test('pub/sub connections killed while publishing (CLIENT KILL TYPE pubsub): the gap is filled, members see no hole', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const b = await node(t, redis)
    const member = open(a.base, 'gap', 'ann')
    await member.connected
    await member.client.request('room-gap', 'ping', null)
    const admin = redis.client(t)
    let sent = 0
    // B publishes while A's subscriber is killed, twice; the last message is published after the second kill, so it
    // too is missed unless A checks the stream when its subscriber is back.
    for (let round = 0; round < 2; round++) {
      publish(b.app, 'room-gap', sent + 1, 200)
      sent += 200
      await admin.client('KILL', 'TYPE', 'pubsub')
      publish(b.app, 'room-gap', sent + 1, 200)
      sent += 200
    }
    await upTo(member, sent)
    t.same(says(member.frames).map((m) => m.seq), range(1, sent), 'every seq once, in order')
    t.notOk(member.frames.some((m) => m.cmd === 'channel-reset'), 'no reset: nothing was lost for good')
    member.client.close()
  })

  t.test('Redis restarted empty: live members get channel-reset (epoch) before the next message; a returning client is told epoch', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const b = await node(t, redis)
    const live = open(a.base, 'lobby', 'ann')
    const { epoch } = positionOf(await live.connected, 'room-lobby')
    const away = open(b.base, 'lobby', 'bob')
    await away.connected
    publish(b.app, 'room-lobby', 1, 3)
    await Promise.all([upTo(live, 3), upTo(away, 3)])
    away.client.close()
    await redis.kill()
    await redis.restart()
    await Promise.all([a.broker.whenReady(), b.broker.whenReady()])
    publish(b.app, 'room-lobby', 4, 1)
    await live.client.next('channel-reset').then((reset) => {
      t.match(reset.param, { seq: 0, reason: 'epoch' })
      t.not((reset.param as Position).epoch, epoch, 'the new stream')
    })
    await live.client.next((m) => m.cmd === 'say' && m.param === '4')
    const after = live.frames.slice(live.frames.findIndex((m) => m.cmd === 'channel-reset'))
    t.same(after.map((m) => [m.cmd, m.seq]), [['channel-reset', undefined], ['say', 1]], 'the reset, then the next message (seq 1 of the new stream)')
    const back = open(a.base, 'lobby', 'bob', { 'room-lobby': { epoch, seq: 3 } })
    t.match(((await back.connected).param as { recovery: Record<string, unknown> }).recovery['room-lobby'], { recovered: false, reason: 'epoch', seq: 1, replayed: 0 })
    live.client.close()
    back.client.close()
  })

  t.test('Redis restarted from an older snapshot: never recovered: true over the hole', async (t) => {
    const redis = await RedisProcess.start(t, { snapshots: true })
    const a = await node(t, redis)
    const first = open(a.base, 'lobby', 'ann')
    const { epoch } = positionOf(await first.connected, 'room-lobby')
    publish(a.app, 'room-lobby', 1, 5)
    await upTo(first, 5)
    await redis.client(t).save()
    publish(a.app, 'room-lobby', 6, 5)
    await upTo(first, 10)
    first.client.close()
    await first.client.closed
    // Back at the snapshot: the stream at seq 5, under the old epoch, in a Redis with another run_id.
    await redis.kill()
    await redis.restart()
    await a.broker.whenReady()
    for (const seq of [5, 7, 10]) {
      const back = open(a.base, 'lobby', 'ann', { 'room-lobby': { epoch, seq } })
      const recovery = ((await back.connected).param as { recovery: Record<string, { recovered: boolean, reason: string, epoch: string }> }).recovery['room-lobby']
      t.match(recovery, { recovered: false, reason: 'epoch' }, `since seq ${seq}: told the stream is another`)
      t.not(recovery?.epoch, epoch)
      back.client.close()
    }
    publish(a.app, 'room-lobby', 11, 1)
    t.match((await a.app.socket.history('room-lobby'))?.messages.map((m) => m.param), ['11'], 'the new stream begins with what follows')
  })

  t.test('Redis frozen (SIGSTOP): broadcasts fail within commandTimeout and are never delivered twice; seqs stay unique', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis, 200)
    const member = open(a.base, 'lobby', 'ann')
    await member.connected
    publish(a.app, 'room-lobby', 1, 3)
    await upTo(member, 3)
    redis.freeze()
    t.after(() => redis.thaw())
    publish(a.app, 'room-lobby', 4, 3)
    // The three appends time out (commandTimeout 200 ms) while Redis sleeps, as this read after them does; they
    // are still in Redis's queue.
    await t.rejects(a.app.socket.history('room-lobby'), { code: 'FST_SOCKET_BROKER_UNAVAILABLE' }, 'a command after them times out')
    t.same(says(member.frames).map((m) => m.seq), [1, 2, 3], 'nothing was delivered without its seq')
    redis.thaw()
    publish(a.app, 'room-lobby', 7, 2)
    await upTo(member, 8)
    const seen = says(member.frames).map((m) => m.seq)
    t.same(seen, range(1, 8), 'each seq once: the frozen three came from the stream (Redis ran them when it woke)')
    const stream = await a.app.socket.history('room-lobby')
    t.same(stream?.messages.map((m) => m.seq), range(1, 8), 'the stream has each seq once')
    t.same(stream?.messages.map((m) => m.param), range(1, 8).map(String))
    member.client.close()
  })

  t.test('Redis down: a connection opens all the same, without a position or a recovery for the channel it can\'t read', async (t) => {
    const redis = await RedisProcess.start(t)
    const a = await node(t, redis)
    const first = open(a.base, 'lobby', 'ann')
    const { epoch } = positionOf(await first.connected, 'room-lobby')
    first.client.close()
    await redis.kill()
    await until(() => a.app.socket.status().broker === 'degraded')
    const back = open(a.base, 'lobby', 'ann', { 'room-lobby': { epoch, seq: 0 } })
    const param = (await back.connected).param as { positions?: unknown, recovery?: unknown }
    t.notOk('positions' in param, 'no position: the stream can\'t be read')
    t.same(param.recovery, {}, 'and no recovery: continuity is not proven')
    publish(a.app, 'room-lobby', 1, 1)
    t.match(await back.client.next('say'), { param: '1', seq: undefined }, 'local delivery goes on, without a seq')
    back.client.close()
  })
}
