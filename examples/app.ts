import Fastify, { type FastifyInstance, type FastifyServerOptions } from 'fastify'
import fastifyStatic from '@fastify/static'
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox'
import Type from 'typebox'
import { fileURLToPath } from 'node:url'
import { Registry, collectDefaultMetrics } from 'prom-client'
import forgeSocket, { forgeSocketAdmin, RedisBroker, badRequest, errors, forbidden, type Profile, type TokenPayload } from '../plugin.js'

/**
 * The demo's profile. An application would merge `rooms` into `ForgeSocketProfile` (docs/server.md); the demo is
 * compiled together with the library's tests, so it keeps its type to itself.
 */
interface DemoProfile extends Profile {
  rooms: string[]
}

function roomsOf (profile: Profile): string[] {
  return (profile as DemoProfile).rooms ?? []
}

/** The secret used when JWT_SECRET is not set. Anyone can read it here: never use it outside a demo. */
export const DEV_SECRET = 'forge-socket-demo-secret-do-not-use-in-production'

/** The compiled client: beside this file's folder once built (dist/examples → dist/lib/client), under dist/ from source. */
const CLIENT_DIR = fileURLToPath(new URL(import.meta.url.includes('/dist/examples/') ? '../lib/client/' : '../dist/lib/client/', import.meta.url))

const ROOM = /^[a-z0-9-]{1,32}$/
const DEFAULT_ROOMS = ['lobby', 'general']
/** Every notifications connection also joins this channel, so "notify everyone" is one broadcast on every node. */
const EVERYONE = 'notifications-all'

export interface DemoOptions {
  secret?: string
  /** A redis:// URL to run as one of several nodes; default `REDIS_URL`, else the in-memory broker. */
  redisUrl?: string
  /** With Redis: ms after which a silent node counts as dead (its users leave); default `NODE_TTL`, else 10000. */
  nodeTtl?: number
  logger?: FastifyServerOptions['logger']
  /**
   * ms a client has to send a request's headers, an upgrade's included; default `HEADERS_TIMEOUT`, else 10000.
   * Node's own (60 s, checked every 30 s) would let a client that never finishes them hold a socket for 90 s.
   */
  headersTimeout?: number
  /** The users who may open the admin page (/admin/sockets/); default `ADMIN_USERS` (comma-separated), else `admin`. */
  adminUsers?: string[]
}

/**
 * The demo app: login, per-user notifications, chat rooms, and a page to try them. See README "Quick start".
 */
export async function buildDemo (options: DemoOptions = {}): Promise<FastifyInstance> {
  const headersTimeout = options.headersTimeout ?? Number(process.env.HEADERS_TIMEOUT ?? 10_000)
  const app = Fastify({
    logger: options.logger ?? false,
    // Slow clients are Node's to cut (docs/limits.md): headers within headersTimeout, checked at least every second,
    // and a whole request, body included, within 30 s.
    http: { headersTimeout, connectionsCheckingInterval: Math.min(headersTimeout, 1000) },
    requestTimeout: Math.max(headersTimeout, 30_000)
  }).withTypeProvider<TypeBoxTypeProvider>()
  const secret = options.secret ?? process.env.JWT_SECRET ?? DEV_SECRET
  if (secret === DEV_SECRET) {
    app.log.warn('JWT_SECRET is not set: signing tokens with the PUBLIC DEMO SECRET. Never run this outside development.')
  }

  const redisUrl = options.redisUrl ?? process.env.REDIS_URL
  const nodeTtl = options.nodeTtl ?? (process.env.NODE_TTL === undefined ? undefined : Number(process.env.NODE_TTL))
  // Chat rooms and each user's notifications keep their last messages (HISTORY_SIZE, for HISTORY_TTL ms after the
  // last one), in memory or in Redis: a client that reconnects gets what it missed.
  const history = { size: Number(process.env.HISTORY_SIZE ?? 100), ttl: Number(process.env.HISTORY_TTL ?? 300_000) }
  // Prometheus metrics, this process's and forge-socket's, at GET /metrics (open, as a scrape target usually is;
  // put it behind your network's rules in production).
  const registry = new Registry()
  collectDefaultMetrics({ register: registry })
  await app.register(forgeSocket, {
    jwt: { secret },
    metrics: { registry },
    broker: redisUrl === undefined ? 'memory' : new RedisBroker({ redis: redisUrl, nodeTtl }),
    // Chat rooms announce who comes and goes; the notification channels (one of them holds everyone) do not.
    presence: { announce: (channel) => channel.startsWith('chat-room-') ? 'events' : 'none' },
    history: (channel) => channel.startsWith('chat-room-') || channel.startsWith('user-') ? history : false,
    // Opening and closing connections in a loop is work too: 429 with Retry-After past these.
    connectionLimits: { perUser: 50, ratePerIp: 20, ratePerUser: 10, burst: 40 },
    auth: {
      profile: (claims: TokenPayload): DemoProfile => {
        if (typeof claims.sub !== 'string') throw new errors.FST_SOCKET_TOKEN_INVALID('the token has no subject')
        const rooms = Array.isArray(claims.rooms) ? claims.rooms.filter((r): r is string => typeof r === 'string') : []
        return { id: claims.sub, rooms }
      }
    }
  })
  app.get('/metrics', async (_request, reply) => {
    reply.type(registry.contentType)
    return await registry.metrics()
  })
  // The admin page, its API and tap, for the users named in ADMIN_USERS (they log in with the demo's login).
  const admins = new Set(options.adminUsers ?? (process.env.ADMIN_USERS ?? 'admin').split(',').map((name) => name.trim()).filter((name) => name !== ''))
  await app.register(forgeSocketAdmin, { prefix: '/admin/sockets', login: '/api/login', authorize: (_request, profile) => admins.has(profile.id) })
  await app.register(fastifyStatic, { root: fileURLToPath(new URL('public', import.meta.url)) })
  // The page imports the compiled client (`npm run build`) as ES modules from /client/.
  await app.register(fastifyStatic, { root: CLIENT_DIR, prefix: '/client/', decorateReply: false })

  const Login = Type.Object({
    name: Type.String({ pattern: '^[A-Za-z0-9_-]{1,32}$' }),
    rooms: Type.Optional(Type.Array(Type.String({ pattern: ROOM.source }), { maxItems: 32 }))
  }, { additionalProperties: false })
  app.post('/api/login', { schema: { body: Login } }, async (request) => {
    const { name, rooms = DEFAULT_ROOMS } = request.body
    return { token: app.jwt.sign({ sub: name, rooms }, { expiresIn: '1h' }) }
  })

  // Notifications: each user in their own channel, and everyone in one more.
  app.get('/ws/notifications', app.socket.act('notifications', (app, ps) =>
    ps.upgradeWithMetadata(`user-${ps.profile.id}`, { kind: 'notifications' })))
  app.socket.onOpen(async (conn) => {
    if (conn.metadata.kind === 'notifications') await app.socket.join(conn.id, EVERYONE)
  })

  const authenticated = { onRequest: async (request: { jwtVerify: () => Promise<unknown> }) => { await request.jwtVerify() } }

  const Notify = Type.Object({
    to: Type.Optional(Type.String({ pattern: '^[A-Za-z0-9_-]{1,32}$' })),
    title: Type.String({ minLength: 1, maxLength: 200 }),
    message: Type.String({ minLength: 1, maxLength: 2000 })
  }, { additionalProperties: false })
  app.post('/api/notify', { ...authenticated, schema: { body: Notify } }, async (request) => {
    const { to, title, message } = request.body
    const from = (request.user as { sub: string }).sub
    const param = { from, title, message, at: new Date().toISOString() }
    const delivered = app.socket.sendToChannel(to === undefined ? EVERYONE : `user-${to}`, { cmd: 'notification', param })
    return { delivered }
  })

  const System = Type.Object({
    message: Type.String({ minLength: 1, maxLength: 2000 }),
    rooms: Type.Optional(Type.Array(Type.String({ pattern: ROOM.source }), { maxItems: 32 }))
  }, { additionalProperties: false })
  app.post('/api/system', { ...authenticated, schema: { body: System } }, async (request) => {
    const { message, rooms = DEFAULT_ROOMS } = request.body
    const channels = [EVERYONE, ...rooms.map((room) => `chat-room-${room}`)]
    const delivered = app.socket.sendToChannel(channels, { cmd: 'system-update', param: { message, at: new Date().toISOString() } })
    return { delivered, channels }
  })

  // Chat rooms: the room must be well formed (400) and in the token's `rooms` claim (403), before the upgrade.
  app.get('/ws/chat/:room', app.socket.act('chat.room', (app, ps) => {
    const room = ps.requestString('room', true)
    if (!ROOM.test(room)) throw badRequest('a room is 1-32 characters of a-z, 0-9 and -')
    if (!roomsOf(ps.profile).includes(room)) throw forbidden(`room "${room}"`)
    return ps.upgradeWithMetadata(`chat-room-${room}`, { room, user: ps.profile.id })
  }))

  app.socket.command('chat-message', {
    schema: Type.Object({ text: Type.String({ minLength: 1, maxLength: 2000 }) }),
    handler: ({ text }, { channel, connection }) => {
      if (!channel.startsWith('chat-room-')) throw forbidden('chat messages go to chat rooms')
      app.socket.broadcast(channel, { cmd: 'chat-message', param: { from: connection.profileId, text, at: new Date().toISOString() } })
    }
  })

  return app
}
