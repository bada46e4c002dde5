// The types users get with the plugin: @fastify/websocket's route options (`websocket: true`) and @fastify/jwt's
// `app.jwt` / `request.jwtVerify`. Kept in the emitted plugin.d.ts (imports used only for their side effects are not).
/// <reference types="@fastify/websocket" preserve="true" />
/// <reference types="@fastify/jwt" preserve="true" />
import fp from 'fastify-plugin'
import fastifyWebsocket, { type WebsocketPluginOptions } from '@fastify/websocket'
import type { FastifyInstance } from 'fastify'
import { resolveOptions, type ForgeSocketOptions } from './lib/options.js'
import { SocketService } from './lib/service.js'
import { Authenticator, selectProtocol, stripQueryToken } from './lib/auth.js'
import { registerJwt } from './lib/jwt.js'
import { pendingPongsAllowed } from './lib/connection.js'
import { bufferedChunksAllowed } from './lib/frame.js'
import { errors } from './lib/errors.js'
import { kPlainRoute } from './lib/symbols.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** forge-socket's service: routes (`act`), sends, channels, commands and introspection. */
    socket: SocketService
  }
}

type PlainRouteConfig = { [kPlainRoute]?: true }

/** ws's options as forge-socket sets them: `maxPendingAutoPongs` (ws 8.21) is not in @types/ws yet. */
type WebSocketServerOptions = NonNullable<WebsocketPluginOptions['options']> & { maxPendingAutoPongs?: number }

type ChildLoggerFactory = FastifyInstance['childLoggerFactory']

/**
 * The child logger factory of a WebSocket route: `token` leaves the request's URL first. Fastify makes the request's
 * logger once the request is routed (so the route still gets the query it came with) and before it logs the
 * request line, which is what this is for: a plain HTTP request to a WebSocket route (refused with 426), which no
 * `upgrade` listener saw.
 */
function withoutQueryToken (factory: ChildLoggerFactory): ChildLoggerFactory {
  return function (logger, bindings, options, raw) {
    stripQueryToken(raw)
    return factory.call(this, logger, bindings, options, raw)
  }
}

/**
 * `app.injectWS` (@fastify/websocket 11.3) sends `Sec-WebSocket-Version` as the number 13, and ws 8.23.1 checks it
 * as a string: every injected upgrade was answered 400. A real request's headers are always strings.
 */
function fixInjectedVersion (headers: Record<string, unknown>): void {
  const version = headers['sec-websocket-version']
  if (typeof version === 'number') headers['sec-websocket-version'] = String(version)
}

/**
 * Real-time, channel-based messaging over WebSockets, with JWT-protected channels.
 *
 * @example
 * await app.register(forgeSocket, { jwt: { secret: process.env.JWT_SECRET } })
 * app.get('/ws/notifications', app.socket.act('notifications', (app, ps) => ps.upgrade(`user-${ps.profile.id}`)))
 */
async function forgeSocket (app: FastifyInstance, input: ForgeSocketOptions): Promise<void> {
  if (app.hasDecorator('socket')) throw new errors.FST_SOCKET_ALREADY_REGISTERED()
  const options = resolveOptions(input)

  // Registers @fastify/jwt (with the allow-list built into its verifier) unless the app did.
  const authenticator = new Authenticator(options.auth, await registerJwt(app, options))
  if (options.auth.cookie !== false && !app.hasRequestDecorator('cookies')) {
    throw new errors.FST_SOCKET_INVALID_OPTIONS('/auth/cookie needs @fastify/cookie registered before forge-socket')
  }
  // `?token=` on an upgrade is forge-socket's, whatever auth.query says: this runs before @fastify/websocket's
  // listener, so the token is gone from the URL before Fastify routes or logs it. It is used only with auth.query on.
  app.server.prependListener('upgrade', stripQueryToken)

  const ownWebsocket = !app.hasDecorator('websocketServer')
  if (ownWebsocket) {
    const wsOptions: WebSocketServerOptions = {
      maxPayload: options.maxPayload,
      // What one unfinished message may hold: its fragments, and the reads its last frame came in so far.
      maxFragments: options.maxFragments,
      maxBufferedChunks: bufferedChunksAllowed(options.maxPayload),
      // ws terminates a peer (1006) with this many of its pings not answered yet: room for what the rate limit
      // lets through before it closes with 1008 (lib/connection.ts).
      maxPendingAutoPongs: pendingPongsAllowed(options),
      handleProtocols: selectProtocol
    }
    await app.register(fastifyWebsocket, {
      options: wsOptions,
      // forge-socket drains its own connections with 1001 in its preClose hook below.
      preClose: (done) => done()
    })
  } else {
    // The app registered @fastify/websocket itself: keep its server options (its maxPayload, maxFragments and
    // maxPendingAutoPongs too), but select our subprotocol.
    app.websocketServer.options.handleProtocols ??= selectProtocol
  }

  // An upgrade to a path with no route, or to a plain HTTP route (one registered after forge-socket: those are
  // marked here), is refused as plain HTTP 404 before any socket opens. Left to @fastify/websocket, it would be
  // upgraded and closed at once, with 1005. A callback hook, not an async one: it runs on every request of the
  // app, and costs no promise on any. A WebSocket route's requests lose `?token=` before their request line is
  // logged, plain HTTP ones included (withoutQueryToken).
  app.addHook('onRoute', function (route) {
    if (route.websocket === true || typeof route.wsHandler === 'function') {
      route.childLoggerFactory = withoutQueryToken(route.childLoggerFactory ?? this.childLoggerFactory)
    } else {
      route.config = { ...route.config, [kPlainRoute]: true }
    }
  })
  app.addHook('onRequest', (request, _reply, done) => {
    if (request.ws) fixInjectedVersion(request.raw.headers)
    const refused = request.ws && (request.is404 || (request.routeOptions.config as PlainRouteConfig)[kPlainRoute] === true)
    done(refused ? new errors.FST_SOCKET_NO_ROUTE(request.method, request.url.split('?')[0]) : undefined)
  })

  const service = new SocketService(app, options, authenticator, ownWebsocket)
  app.decorate('socket', service)
  await service.start()

  app.addHook('preClose', async () => {
    // @fastify/websocket has removed its upgrade listener by now (its preClose runs first). Were ours left alone,
    // an upgrade arriving during the drain would reach no one and hang, and hold app.close() with it; without any
    // listener, Node hands it to Fastify as a plain request, refused with 503.
    app.server.removeListener('upgrade', stripQueryToken)
    await service.drain()
    app.websocketServer.close()
  })
  app.addHook('onClose', async () => {
    await service.stop()
    app.server.removeListener('upgrade', stripQueryToken)
  })
}

const plugin = fp(forgeSocket, {
  fastify: '5.x',
  // The npm name, so other plugins can list it in their `dependencies`.
  name: 'fastify-forge-socket'
})

export default plugin
export { plugin as forgeSocket }
export { errors, CloseCode, forbidden, badRequest } from './lib/errors.js'
// TypeBox, for command schemas, without a dependency of the app's own (the same copy forge-socket compiles with).
export { Type, type Static, type TSchema } from 'typebox'
export { forgeSocketAdmin, type AdminOptions } from './lib/admin/plugin.js'
export { MemoryBroker, MemoryHub } from './lib/broker/memory.js'
export { RedisBroker, type RedisBrokerOptions } from './lib/broker/redis.js'
export type { RedisClient, RedisConnectionOptions, RedisConnectionSettings } from './lib/broker/redis-client.js'
export { RESERVED_COMMANDS, SUBPROTOCOL } from './lib/protocol.js'
export type { Broker, BrokerHost, BrokerMessage, BrokerHealth, BrokerLogger, CommandRecord, Departure, HistorySettings, NodeCounts, NodeReport, PresenceChange, PresenceEntry, PresenceUpdate, StreamPage, StreamPosition } from './lib/broker/broker.js'
export type { DedupeOptions, MetricsOptions, MetricsRegistry, ForgeSocketOptions, ForgeSocketProfile, HistoryOptions, PresenceMode, PresenceOptions, Profile, TokenPayload } from './lib/options.js'
export type { JwtOptions, JwtSecret, JwtKey, JwtKeyFunction } from './lib/jwt.js'
export type { SocketService, SocketStatus, ClusterStatus, ChannelInfo } from './lib/service.js'
export type { DedupeCounts } from './lib/dedupe.js'
export type { Connection, ConnectionInfo, Metadata } from './lib/connection.js'
export type { PageState, ActHandler, ActOptions, UpgradeTicket } from './lib/act.js'
export type { CommandContext, CommandDefinition } from './lib/commands.js'
export type { OutboundMessage, InboundMessage } from './schemas/envelope.js'
