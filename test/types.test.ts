// Compile-time checks: `npm test` runs `tsc --noEmit` over this file, so every `@ts-expect-error` below must be a
// real type error (a user's mistake the types catch) or the type-check fails. The runtime part checks the same
// calls behave as typed.
import t from 'tap'
import Type from 'typebox'
import { build, listen, serve, sign, connect } from './helpers/server.js'
import type { PageState, UpgradeTicket } from '../plugin.js'
import type { FastifyInstance } from 'fastify'
import type fastifyRedis from '@fastify/redis'
import type { Redis as Redis5, RedisOptions as RedisOptions5 } from 'ioredis'
import { RedisBroker, type ForgeSocketOptions, type RedisBrokerOptions, type RedisClient } from '../plugin.js'
import { resolveOptions } from '../lib/options.js'

t.test('the public API is typed', async (t) => {
  const app = await build()
  t.after(() => app.close())

  app.socket.command('typed', {
    schema: Type.Object({ n: Type.Number() }),
    handler: (param) => {
      const n: number = param.n
      // @ts-expect-error param is typed from the schema: there is no `m`
      void param.m
      return n * 2
    }
  })

  // @ts-expect-error a message needs a cmd
  t.throws(() => app.socket.broadcast('room', { param: 1 }), { code: 'FST_SOCKET_INVALID_MESSAGE' })
  // @ts-expect-error channels are strings
  t.throws(() => app.socket.broadcast(42, { cmd: 'x' }), { code: 'FST_SOCKET_INVALID_CHANNEL' })

  app.get('/ws/:room', app.socket.act('typed', (_app, ps: PageState): UpgradeTicket => {
    const room: string = ps.requestString('room', true)
    // @ts-expect-error without `required`, the value may be undefined
    const maybe: string = ps.requestString('other')
    void maybe
    return ps.upgrade(`room-${room}`)
  }))
  const base = await listen(app)
  const { client } = await connect(`${base}/ws/a`, sign({ sub: 'ann' }))
  const reply = await client.request('room-a', 'typed', { n: 21 })
  t.same(reply.param, 42)
  client.close()
  await client.closed
})

declare module '../lib/client/types.js' {
  interface ClientCommands { 'typed-note': { text: string } }
  interface ServerCommands { 'typed-note': { from: string, text: string } }
}

t.test('the client checks declared command params on send and types them on `on`', async (t) => {
  const { base } = await serve(t, {}, (app) => {
    app.socket.command('typed-note', {
      handler: (param, { channel, connection }) => {
        app.socket.broadcast(channel, { cmd: 'typed-note', param: { from: connection.profileId, text: (param as { text: string }).text } })
      }
    })
  })
  const { Socket } = await import('../lib/client/index.js')
  const { default: WebSocket } = await import('ws')
  const socket = new Socket({ url: `${base}/ws/a`, token: sign({ sub: 'ann' }), WebSocket })
  t.after(() => socket.close())
  const received = new Promise<string>((resolve) => {
    socket.on('typed-note', (m) => {
      const from: string = m.param.from
      // @ts-expect-error the declared server param has no `nope`
      void m.param.nope
      resolve(`${from}: ${m.param.text}`)
    })
  })
  // @ts-expect-error the declared client param needs `text: string`
  if (socket.state === 'closed') socket.send('room-a', 'typed-note', { txt: 'hi' })
  socket.send('room-a', 'typed-note', { text: 'hi' })
  t.equal(await received, 'ann: hi')
})

/** ioredis 6's options, as @fastify/redis takes them (its types resolve its own ioredis 6). */
type RedisOptions6 = Exclude<fastifyRedis.FastifyRedisPluginOptions, { client: unknown }>

t.test('ioredis 5 and 6 clients and options fit the broker option, whose types need no ioredis', async (t) => {
  // ioredis 5's Redis, ioredis 6's (@fastify/redis's app.redis, and what its duplicate() makes), and either's options.
  const five = (client: Redis5): RedisClient => client
  const six = (app: FastifyInstance): ForgeSocketOptions => ({ broker: app.redis })
  const sixCopy = (app: FastifyInstance): RedisBrokerOptions => ({ redis: app.redis.duplicate() })
  const fiveOptions = (redis: RedisOptions5): ForgeSocketOptions => ({ broker: redis })
  const sixOptions = (redis: RedisOptions6): RedisBrokerOptions => ({ redis })
  void [five, six, sixCopy, fiveOptions, sixOptions]
  // @ts-expect-error half a client is no RedisClient
  const half: RedisClient = { status: 'ready', duplicate: () => half }
  void half

  const options: ForgeSocketOptions = { broker: { host: '10.0.0.5', port: 6380, retryStrategy: (times: number) => times * 50 } }
  const { broker } = resolveOptions(options)
  t.ok(broker instanceof RedisBroker, 'ioredis options, unknown keys and all, make a RedisBroker')
  await broker.close()
  // @ts-expect-error a port is no broker
  const port: ForgeSocketOptions = { broker: 6379 }
  t.throws(() => resolveOptions(port), { code: 'FST_SOCKET_INVALID_OPTIONS' })
})

t.test("ps.profile is a Profile where a token is required, and may be null on auth: 'optional' routes", async (t) => {
  const app = await build()
  t.after(() => app.close())
  app.get('/ws/required', app.socket.act('required', (_app, ps) => ps.upgrade(`user-${ps.profile.id}`)))
  app.get('/ws/optional', app.socket.act('optional', (_app, ps) => {
    // @ts-expect-error without a token there is no profile on an optional route
    const unchecked = (): string => ps.profile.id
    void unchecked
    return ps.upgrade(`user-${ps.profile?.id ?? 'anonymous'}`)
  }, { auth: 'optional' }))
  const base = await listen(app)
  const { client, connected } = await connect(`${base}/ws/required`, sign({ sub: 'ann' }))
  t.equal(connected.channel, 'user-ann')
  client.close()
  const anonymous = await connect(`${base}/ws/optional`)
  t.equal(anonymous.connected.channel, 'user-anonymous')
  anonymous.client.close()
})
