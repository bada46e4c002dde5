// Message dedupe across nodes, end to end: two forge-socket nodes on a redis-server this file spawns (and kills),
// WebSocket clients of one user on both, and a command that counts its runs.
import t, { type Test } from 'tap'
import type { FastifyInstance } from 'fastify'
import { RedisBroker, type ForgeSocketOptions, type OutboundMessage } from '../plugin.js'
import { until } from './helpers/cluster.js'
import { connect, serve, sign, type Client } from './helpers/server.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'

const ANN = sign({ sub: 'ann' })

if (requireRedis(t)) {
  /** Shared by the nodes of one test, as a database would be: each run of `apply`, and the gates `slow` waits on. */
  interface World { runs: number, gates: Array<() => void> }

  /** A node on `redis`: `apply` counts a run in `world` and answers the count; `slow` also waits for the test's gate. */
  async function node (t: Test, redis: RedisProcess, world: World, options: ForgeSocketOptions = {}): Promise<{ app: FastifyInstance, base: string }> {
    const broker = new RedisBroker({ redis: redis.url, commandTimeout: 300 })
    return await serve(t, { broker, ...options }, (app) => {
      app.socket.command('apply', { handler: () => ({ runs: ++world.runs }) })
      app.socket.command('slow', {
        handler: async () => {
          const runs = ++world.runs
          await new Promise<void>((resolve) => world.gates.push(resolve))
          return { runs }
        }
      })
    })
  }

  async function ask (client: Client, cmd: string, id: string, ref: string): Promise<OutboundMessage & { dup?: boolean }> {
    const answer = client.next((m) => m.ref === ref)
    client.send({ channel: 'room-lobby', cmd, param: null, id, ref })
    return await answer
  }

  t.test('a resend to the other node is not run again: the first answer, with dup', async (t) => {
    const redis = await RedisProcess.start(t)
    const world: World = { runs: 0, gates: [] }
    const a = await node(t, redis, world)
    const b = await node(t, redis, world)
    const onA = await connect(`${a.base}/ws/lobby`, ANN)
    t.strictSame(await ask(onA.client, 'apply', 'inst.1', 'r1'), { channel: 'room-lobby', cmd: 'reply', param: { runs: 1 }, ref: 'r1' })
    onA.client.close()
    const onB = await connect(`${b.base}/ws/lobby`, ANN)
    t.strictSame(await ask(onB.client, 'apply', 'inst.1', 'r2'), { channel: 'room-lobby', cmd: 'reply', param: { runs: 1 }, ref: 'r2', dup: true })
    t.equal(world.runs, 1, 'the handler ran once, on one node')
    const bob = await connect(`${b.base}/ws/lobby`, sign({ sub: 'bob' }))
    t.same((await ask(bob.client, 'apply', 'inst.1', 'r3')).param, { runs: 2 }, 'the same id from another user runs')
    onB.client.close()
    bob.client.close()
  })

  t.test('a repeat on the other node while the first run is under way: one run, both answered', async (t) => {
    const redis = await RedisProcess.start(t)
    const world: World = { runs: 0, gates: [] }
    const a = await node(t, redis, world)
    const b = await node(t, redis, world)
    const onA = await connect(`${a.base}/ws/lobby`, ANN)
    const onB = await connect(`${b.base}/ws/lobby`, ANN)
    const first = ask(onA.client, 'slow', 'inst.2', 's1')
    await until(() => world.gates.length === 1)
    const repeat = ask(onB.client, 'slow', 'inst.2', 's2')
    // Another at once, while b's claim of the first repeat is on its way to Redis: it waits with it.
    const another = ask(onB.client, 'slow', 'inst.2', 's3')
    // b has the repeats (it polls the record): a ping after it on the same connection is answered first.
    await onB.client.request('room-lobby', 'ping', null)
    world.gates[0]?.()
    t.strictSame(await first, { channel: 'room-lobby', cmd: 'reply', param: { runs: 1 }, ref: 's1' })
    t.strictSame(await repeat, { channel: 'room-lobby', cmd: 'reply', param: { runs: 1 }, ref: 's2', dup: true })
    t.strictSame(await another, { channel: 'room-lobby', cmd: 'reply', param: { runs: 1 }, ref: 's3', dup: true })
    t.equal(world.runs, 1)
    onA.client.close()
    onB.client.close()
  })

  t.test('a node that dies mid-run: a retry on the other node waits out the lease, then runs (at-least-once)', async (t) => {
    const redis = await RedisProcess.start(t)
    const world: World = { runs: 0, gates: [] }
    const a = await node(t, redis, world, { dedupe: { lease: 300 } })
    const b = await node(t, redis, world, { dedupe: { lease: 300 } })
    const onA = await connect(`${a.base}/ws/lobby`, ANN)
    onA.client.send({ channel: 'room-lobby', cmd: 'slow', param: null, id: 'inst.3', ref: 'd1' })
    await until(() => world.gates.length === 1)
    // a's run never ends: as far as the record knows, a died with the command under way.
    const onB = await connect(`${b.base}/ws/lobby`, ANN)
    const retry = ask(onB.client, 'slow', 'inst.3', 'd2')
    // Past the lease (300 ms): checked every 10 ms, for at most 10 s.
    for (let i = 0; i < 1000 && world.gates.length < 2; i++) await new Promise((resolve) => setTimeout(resolve, 10))
    t.equal(world.runs, 2, 'the retry ran once the lease had ended')
    world.gates[1]?.()
    t.strictSame(await retry, { channel: 'room-lobby', cmd: 'reply', param: { runs: 2 }, ref: 'd2' })
    world.gates[0]?.()
    onA.client.close()
    onB.client.close()
  })

  t.test('Redis away: a message with an id is refused with FST_SOCKET_DEDUPE_UNAVAILABLE and does not run; back, it runs once', async (t) => {
    const redis = await RedisProcess.start(t)
    const world: World = { runs: 0, gates: [] }
    const a = await node(t, redis, world, { dedupe: { lease: 500 } })
    const onA = await connect(`${a.base}/ws/lobby`, ANN)
    // Answered once the connection is open (its channel joined, through Redis): only then is Redis taken away.
    await onA.client.request('room-lobby', 'ping', null)
    await redis.kill()
    const refused = await ask(onA.client, 'apply', 'inst.4', 'u1')
    t.match(refused, { cmd: 'error', ref: 'u1', param: { code: 'FST_SOCKET_DEDUPE_UNAVAILABLE' } })
    t.equal(world.runs, 0, 'nothing ran')
    t.same((await onA.client.request('room-lobby', 'apply', null)).param, { runs: 1 }, 'a message without an id still runs')
    await redis.restart()
    // Refused until the broker is back (every 20 ms, for at most 10 s).
    for (let i = 0; i < 500 && (await ask(onA.client, 'apply', 'inst.4', `u-${i}`)).cmd !== 'reply'; i++) await new Promise((resolve) => setTimeout(resolve, 20))
    t.equal(world.runs, 2)
    t.equal((await ask(onA.client, 'apply', 'inst.4', 'u-last')).dup, true, 'and once only')
    t.equal(world.runs, 2)
    onA.client.close()
  })
}
