// The client's resend against a node that dies at the worst moment: a forge-socket node in a child process (on a
// redis-server this file spawns) keeps the answer of a command in Redis and is killed (SIGKILL) before it writes
// the answer; restarted on the same port, it answers the client's resend from the record.
import t, { type Test } from 'tap'
import { spawn, type ChildProcess } from 'node:child_process'
import { once } from 'node:events'
import { createInterface } from 'node:readline'
import { freePort, ROOT } from './helpers/demo-process.js'
import { inState, recordedClient, within } from './helpers/client-state.js'
import { RedisProcess, requireRedis } from './helpers/redis.js'
import { SECRET, sign } from './helpers/server.js'

/**
 * A node whose `apply` counts its runs in Redis (INCR) and answers the count. With `die`, its broker kills the
 * process as soon as an answer is kept, before the node can send it.
 */
const NODE = `
  const { default: Fastify } = await import('fastify')
  const { default: forgeSocket, RedisBroker } = await import(new URL('dist/plugin.js', 'file://' + process.cwd() + '/').href)
  const { Redis } = await import('ioredis')
  const { REDIS_URL, PORT, SECRET, DIE } = process.env
  class DyingBroker extends RedisBroker {
    async finishCommand (...args) {
      await super.finishCommand(...args)
      if (DIE === '1') process.kill(process.pid, 'SIGKILL')
    }
  }
  const counter = new Redis(REDIS_URL, { commandTimeout: 1000 })
  counter.on('error', () => {})
  const app = Fastify()
  await app.register(forgeSocket, { jwt: { secret: SECRET }, broker: new DyingBroker({ redis: REDIS_URL }) })
  app.get('/ws/:room', app.socket.act('room', (app, ps) => ps.upgrade('room-' + ps.requestString('room', true))))
  app.socket.command('apply', { handler: async () => ({ runs: await counter.incr('runs') }) })
  await app.listen({ port: Number(PORT), host: '127.0.0.1' })
  console.log('listening')
`

if (requireRedis(t)) {
  /** Starts the node and resolves once it listens; killed after the test. */
  async function start (t: Test, redisUrl: string, port: number, die: boolean): Promise<ChildProcess> {
    const env = Object.fromEntries(Object.entries(process.env).filter(([key]) => key !== 'NODE_OPTIONS' && !key.startsWith('TAP') && !key.startsWith('_TAPJS_')))
    const child = spawn(process.execPath, ['--input-type=module', '-e', NODE], {
      cwd: ROOT,
      env: { ...env, REDIS_URL: redisUrl, PORT: String(port), SECRET, DIE: die ? '1' : '0' },
      stdio: ['ignore', 'pipe', 'inherit']
    })
    t.after(() => { child.kill('SIGKILL') })
    const lines = createInterface({ input: child.stdout as NodeJS.ReadableStream })
    const exited = once(child, 'exit').then(([code]) => { throw new Error(`the node exited (${String(code)}) before it listened`) })
    await within(Promise.race([once(lines, 'line'), exited]), 'the node to listen')
    return child
  }

  t.test('the node dies after keeping the answer, before sending it: the client resends, and the handler ran once', async (t) => {
    const redis = await RedisProcess.start(t)
    const port = await freePort()
    const dying = await start(t, redis.url, port, true)
    const { socket, lines } = recordedClient(t, { url: `ws://127.0.0.1:${port}/ws/lobby`, token: sign({ sub: 'ann' }) })
    await within(inState(socket, 'open'), 'the first connection')

    const answer = socket.request('room-lobby', 'apply', null, { timeout: 20_000 })
    const [, signal] = await within(once(dying, 'exit'), 'the node to die') as [number | null, string | null]
    t.equal(signal, 'SIGKILL', 'the node died with the answer kept and not sent')
    await start(t, redis.url, port, false)

    t.same(await within(answer, 'the answer'), { runs: 1 }, 'the caller got one answer: the first run\'s')
    t.equal(await redis.client(t).get('runs'), '1', 'the handler ran once')
    t.ok(lines.items.some((line) => line.includes('resend')), 'the client said it resent the request')
  })
}
