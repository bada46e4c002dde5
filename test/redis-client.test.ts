// Bring your own Redis: a client of the app's ioredis (5 or 6, @fastify/redis's `app.redis`) is taken by what it can
// do; ioredis is an optional peer, loaded only when a Redis broker is made from a URL or options.
import t, { type Test } from 'tap'
import { execFile } from 'node:child_process'
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { promisify } from 'node:util'
import Fastify, { type FastifyInstance } from 'fastify'
import fastifyRedis from '@fastify/redis'
import { Cluster, Redis } from 'ioredis'
import forgeSocket, { RedisBroker, type RedisClient, type RedisConnectionOptions } from '../plugin.js'
import { resolveOptions } from '../lib/options.js'
import { loadRedis } from '../lib/broker/redis-client.js'
import { SECRET, connect, listen, room, sign, type Client } from './helpers/server.js'
import { Redis6, RedisProcess, requireRedis } from './helpers/redis.js'
import { ROOT } from './helpers/demo-process.js'

function lazyClient (t: Test, Client: new (options: RedisConnectionOptions) => RedisClient): RedisClient {
  const client = new Client({ lazyConnect: true, commandTimeout: 1000 })
  client.on('error', () => {})
  t.after(() => client.disconnect())
  return client
}

/** A directory outside the repository (so resolution can't climb into its node_modules), removed after the test. */
function scratch (t: Test, tree: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'forge-socket-'))
  t.after(() => rmSync(dir, { recursive: true, force: true }))
  for (const [path, text] of Object.entries(tree)) {
    mkdirSync(join(dir, path, '..'), { recursive: true })
    writeFileSync(join(dir, path), text)
  }
  return dir
}

t.test('a client of ioredis 5 or 6 is taken by what it can do, duplicated, and left alone', async (t) => {
  const five = lazyClient(t, Redis)
  const six = lazyClient(t, Redis6)
  t.notOk(six instanceof Redis, 'an instanceof check against forge-socket\'s ioredis would refuse ioredis 6')
  for (const client of [five, six]) {
    const { broker } = resolveOptions({ broker: client })
    t.ok(broker instanceof RedisBroker, 'a RedisBroker')
    await broker.close()
    t.equal(client.status, 'wait', 'the client itself was never connected (only its duplicates would be)')
  }
  // Not ioredis, but with everything forge-socket uses: the key prefix is then the broker's own.
  const { broker } = resolveOptions({ broker: Object.assign(Object.create(five) as RedisClient, { options: undefined }) })
  await broker.close()
  t.pass('a client without `options` will do')
})

t.test('RedisBroker refuses a nodeTtl or commandTimeout that is not a whole number of ms', async (t) => {
  const redis = 'redis://127.0.0.1:1'
  t.throws(() => new RedisBroker({ redis, nodeTtl: 29 }), { code: 'FST_SOCKET_INVALID_OPTIONS', message: /RedisBroker nodeTtl must be an integer of at least 30 ms \(got 29\)/ })
  t.throws(() => new RedisBroker({ redis, commandTimeout: 0.5 }), { message: /RedisBroker commandTimeout must be an integer of at least 1 ms/ })
})

t.test('what is half a client or half a broker is refused, naming what it lacks', async (t) => {
  const invalid = { code: 'FST_SOCKET_INVALID_OPTIONS' }
  t.throws(() => resolveOptions({ broker: { duplicate () {} } as unknown as RedisClient }), {
    ...invalid, message: /\/broker has no status, defineCommand, connect, quit, disconnect, publish, subscribe, unsubscribe, ping, del, hgetall, smembers, mget, on, off, once \(an ioredis 5 or 6 client is needed\)/
  })
  const noHgetall = Object.assign(Object.create(lazyClient(t, Redis)) as RedisClient, { hgetall: undefined })
  t.throws(() => resolveOptions({ broker: noHgetall }), { ...invalid, message: /\/broker has no hgetall \(/ }, 'a client lacking one method')
  t.throws(() => new RedisBroker({ redis: { status: 'ready' } as unknown as RedisClient }),
    { ...invalid, message: /the Redis client has no duplicate, / }, 'RedisBroker checks the same')

  const cluster = new Cluster([{ host: '127.0.0.1', port: 1 }], { lazyConnect: true })
  cluster.on('error', () => {})
  t.after(() => cluster.disconnect())
  t.throws(() => resolveOptions({ broker: cluster as unknown as RedisClient }), { ...invalid, message: /\/broker is a Redis Cluster client, which is not supported/ })

  t.throws(() => resolveOptions({ broker: { start () {}, publish () {}, subscribe () {}, close () {} } }),
    { ...invalid, message: /\/broker looks like a Broker but has no method unsubscribe$/ })
  t.throws(() => resolveOptions({ broker: { start: true } }), { ...invalid, message: /has no method start, publish, subscribe, unsubscribe, close$/ })
  t.throws(() => resolveOptions({ broker: new Map() as unknown as RedisClient }), { ...invalid, message: /\/broker must be "memory", a redis:\/\/ URL/ }, 'an object of another kind')
})

t.test('ioredis is loaded from the app\'s side, and its absence says `npm install ioredis`', async (t) => {
  t.equal(loadRedis(), Redis, 'by default: the ioredis beside forge-socket (here, the repository\'s own)')
  const fake = (body: string): Record<string, string> => ({
    'node_modules/ioredis/package.json': JSON.stringify({ name: 'ioredis', version: '6.0.0', main: 'index.js' }),
    'node_modules/ioredis/index.js': body
  })
  const none = `${scratch(t, {})}/`
  const app = `${scratch(t, fake('exports.Redis = class AppsRedis {}'))}/`
  const odd = `${scratch(t, fake('module.exports = {}'))}/`

  t.equal(loadRedis([none, app]).name, 'AppsRedis', 'not found beside forge-socket: the app\'s copy, from its directory')
  const missing = t.throws(() => loadRedis([none]), {
    code: 'FST_SOCKET_INVALID_OPTIONS',
    message: /a Redis broker made from a URL or options needs ioredis \(5 or 6\), an optional peer dependency: npm install ioredis \(Error: Cannot find module 'ioredis'/
  })
  t.match((missing as Error).cause, { code: 'MODULE_NOT_FOUND' }, 'the resolution error is the cause')
  t.throws(() => loadRedis([odd]), { message: /npm install ioredis \(Error: the ioredis found beside .* has no Redis class\)/ })
})

t.test('the published package', async (t) => {
  const dist = join(ROOT, 'dist')
  if (!existsSync(join(dist, 'plugin.js'))) return t.fail('dist/ is missing: run `npm run build` first (npm test does it in pretest)')

  t.test('its type declarations never refer to the ioredis module (a consumer without it type-checks)', async (t) => {
    const files = ['plugin.d.ts', ...['lib', 'schemas'].flatMap((dir) =>
      (readdirSync(join(dist, dir), { recursive: true }) as string[]).filter((f) => f.endsWith('.d.ts')).map((f) => join(dir, f)))]
    t.ok(files.includes(join('lib', 'broker', 'redis-client.d.ts')), `${files.length} declaration files, the client's among them`)
    // Any quoted "ioredis" is a module reference (an import, import("…") or reference types); the doc comments only
    // name it in prose.
    t.same(files.filter((f) => /['"]ioredis(\/[^'"]*)?['"]/.test(readFileSync(join(dist, f), 'utf8'))), [])
  })

  t.test('loads and runs on the memory broker without ioredis; a Redis URL then asks for it by name', async (t) => {
    // The child makes ioredis unresolvable, both for require() (createRequire included) and for import, and records
    // every require of it: were the plugin to load ioredis at import, importing it would fail.
    const script = `
      import Module, { createRequire, register } from 'node:module'
      const asked = []
      const resolveFilename = Module._resolveFilename
      Module._resolveFilename = function (request, ...rest) {
        if (request === 'ioredis' || request.startsWith('ioredis/')) {
          asked.push(request)
          throw Object.assign(new Error("Cannot find module '" + request + "'"), { code: 'MODULE_NOT_FOUND' })
        }
        return resolveFilename.call(this, request, ...rest)
      }
      register('data:text/javascript,' + encodeURIComponent(\`export async function resolve (specifier, context, next) {
        if (specifier === 'ioredis' || specifier.startsWith('ioredis/')) throw Object.assign(new Error('no ioredis'), { code: 'ERR_MODULE_NOT_FOUND' })
        return next(specifier, context)
      }\`))
      const root = ${JSON.stringify(`${ROOT}/`)}
      const require = createRequire(root)
      const { default: forgeSocket, RedisBroker } = await import(root + 'dist/plugin.js')
      const Fastify = require('fastify')
      const jwt = { secret: 'a-secret-that-is-long-enough-for-hs256' }
      const memory = Fastify()
      await memory.register(forgeSocket, { jwt })
      await memory.ready()
      const status = memory.socket.status().broker
      await memory.close()
      const afterMemory = [...asked]
      const refusals = []
      const redis = Fastify()
      redis.register(forgeSocket, { jwt, broker: 'redis://127.0.0.1:6379' })
      await redis.ready().catch((err) => refusals.push({ code: err.code, message: err.message }))
      try { new RedisBroker({ redis: { host: '127.0.0.1' } }) } catch (err) { refusals.push({ code: err.code, message: err.message }) }
      const loaded = Object.keys(require.cache).filter((file) => /[\\\\/]ioredis[\\\\/]/.test(file))
      console.log(JSON.stringify({ status, afterMemory, asked, refusals, loaded }))
    `
    const { stdout } = await promisify(execFile)(process.execPath, ['--no-warnings', '--input-type=module', '-e', script],
      { cwd: tmpdir(), env: { PATH: process.env.PATH }, timeout: 20_000 })
    const report = JSON.parse(stdout) as { status: string, afterMemory: string[], asked: string[], refusals: Array<{ code: string, message: string }>, loaded: string[] }
    t.equal(report.status, 'ok', 'an app on the memory broker ran')
    t.same(report.afterMemory, [], 'and nothing ever asked for ioredis')
    t.ok(report.asked.length > 0 && report.asked.every((r) => r === 'ioredis'), 'a broker from a URL or options did')
    t.equal(report.refusals.length, 2)
    for (const refusal of report.refusals) t.match(refusal, { code: 'FST_SOCKET_INVALID_OPTIONS', message: /npm install ioredis/ })
    t.same(report.loaded, [], 'no ioredis module is loaded')
  })
})

t.test('with @fastify/redis', async (t) => {
  if (!requireRedis(t)) return

  /** CLIENT LIST: the connections named `name` (a client's duplicates carry its connectionName). */
  async function named (admin: Redis, name: string): Promise<number> {
    const list = await admin.client('LIST') as string
    return list.split('\n').filter((line) => line.includes(` name=${name} `)).length
  }

  /** An app that registers @fastify/redis on `redis`, then forge-socket with `broker: app.redis`. */
  async function node (t: Test, redis: RedisProcess, name: string, setup: (app: FastifyInstance) => void = () => {}, keyPrefix?: string): Promise<{ app: FastifyInstance, base: string }> {
    const app = Fastify({ logger: false })
    t.after(() => app.close())
    await app.register(fastifyRedis, { url: redis.url, commandTimeout: 1000, connectionName: name, ...(keyPrefix === undefined ? {} : { keyPrefix }) })
    app.redis.on('error', () => {})
    setup(app)
    await app.register(forgeSocket, { jwt: { secret: SECRET }, broker: app.redis })
    room(app)
    return { app, base: await listen(app) }
  }

  async function join (base: string, room: string, user: string): Promise<Client> {
    const { client } = await connect(`${base}/ws/${room}`, sign({ sub: user }))
    // Answered after the connection's join, its Redis subscription included.
    await client.request(`room-${room}`, 'ping', null)
    return client
  }

  t.test('two apps on app.redis (ioredis 6) see each other\'s broadcasts; app.close() leaves @fastify/redis its own client', async (t) => {
    const redis = await RedisProcess.start(t)
    const admin = redis.client(t)
    let duringClose: { pong: unknown, open: number } | undefined
    // Runs after forge-socket's onClose and before @fastify/redis's (onClose hooks run last-added first).
    const a = await node(t, redis, 'node-a', (app) => app.addHook('onClose', async () => {
      duringClose = { pong: await app.redis.ping(), open: await named(admin, 'node-a') }
    }))
    const b = await node(t, redis, 'node-b')
    t.notOk(a.app.redis instanceof Redis, 'app.redis is not forge-socket\'s ioredis')
    t.equal(await named(admin, 'node-a'), 3, 'A: @fastify/redis\'s client and forge-socket\'s two duplicates')

    const ann = await join(a.base, 'lobby', 'ann')
    const bob = await join(b.base, 'lobby', 'bob')
    t.match((await ann.next('user-joined')).param, { user: 'bob' }, 'presence crosses nodes')
    b.app.socket.broadcast('room-lobby', { cmd: 'from-b', param: 1 })
    t.match(await ann.next('from-b'), { channel: 'room-lobby', param: 1 }, 'B → A')
    a.app.socket.broadcast('room-lobby', { cmd: 'from-a', param: 2 })
    t.match(await bob.next('from-a'), { channel: 'room-lobby', param: 2 }, 'A → B')
    t.same((await a.app.socket.presence('room-lobby')).map((p) => p.user).sort(), ['ann', 'bob'])

    await a.app.close()
    t.same(duringClose, { pong: 'PONG', open: 1 }, 'once forge-socket closed, app.redis still works and is the only connection left')
    t.equal(await named(admin, 'node-a'), 0, 'then @fastify/redis closed it: nothing of A is left open')
    t.match((await bob.next('user-left')).param, { user: 'ann' }, 'B heard A go')
    bob.close()
  })

  t.test('an ioredis keyPrefix on app.redis goes in front of the broker\'s prefix, for every key and channel', async (t) => {
    const redis = await RedisProcess.start(t)
    const admin = redis.client(t)
    const a = await node(t, redis, 'node-a', undefined, 'app:')
    const ann = await join(a.base, 'lobby', 'ann')
    t.same((await admin.pubsub('CHANNELS', '*') as string[]).sort(), ['app:forge-socket:ch:room-lobby', 'app:forge-socket:control'])
    const keys = (await admin.keys('*')).sort()
    t.ok(keys.length > 0 && keys.every((key) => key.startsWith('app:forge-socket:')), `keys: ${keys.join(', ')}`)
    t.same(await a.app.socket.presence('room-lobby'), [{ user: 'ann', connections: 1 }])
    ann.close()
    await a.app.close()
    t.same(await admin.keys('*'), [`app:forge-socket:reaped:${a.app.socket.nodeId}`],
      'a clean exit clears them (the keys its scripts compute included) but the note that the node was removed')
  })
})
