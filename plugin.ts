// The types users get with the plugin: @fastify/websocket's route options (`websocket: true`) and @fastify/jwt's
// `app.jwt` / `request.jwtVerify`. Kept in the emitted plugin.d.ts (imports used only for their side effects are not).
/// <reference types="@fastify/websocket" preserve="true" />
/// <reference types="@fastify/jwt" preserve="true" />
import fp from 'fastify-plugin'
import fastifyWebsocket from '@fastify/websocket'
import type { FastifyInstance } from 'fastify'
import { resolveOptions, type ForgeSocketOptions } from './lib/options.js'
import { SocketService } from './lib/service.js'
import { Authenticator, selectProtocol, stripQueryToken } from './lib/auth.js'
import { registerJwt } from './lib/jwt.js'
import { errors } from './lib/errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** forge-socket's service: routes (`act`), sends, channels, commands and introspection. */
    socket: SocketService
  }
}

/** Marks, in a route's config, a route that does not take WebSocket upgrades. */
const kPlainRoute = Symbol('forge-socket.plain-route')
type PlainRouteConfig = { [kPlainRoute]?: true }

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
  // Runs before @fastify/websocket's listener, so the token is gone from the URL before Fastify routes or logs it.
  if (options.auth.query) app.server.prependListener('upgrade', stripQueryToken)

  const ownWebsocket = !app.hasDecorator('websocketServer')
  if (ownWebsocket) {
    await app.register(fastifyWebsocket, {
      options: { maxPayload: options.maxPayload, handleProtocols: selectProtocol },
      // forge-socket drains its own connections with 1001 in its preClose hook below.
      preClose: (done) => done()
    })
  } else {
    // The app registered @fastify/websocket itself: keep its server options, but select our subprotocol.
    app.websocketServer.options.handleProtocols ??= selectProtocol
  }

  // An upgrade to a path with no route, or to a plain HTTP route (one registered after forge-socket: those are
  // marked here), is refused as plain HTTP 404 before any socket opens. Left to @fastify/websocket, it would be
  // upgraded and closed at once, with 1005. A callback hook, not an async one: it runs on every request of the
  // app, and costs no promise on any.
  app.addHook('onRoute', (route) => {
    if (route.websocket !== true && typeof route.wsHandler !== 'function') route.config = { ...route.config, [kPlainRoute]: true }
  })
  app.addHook('onRequest', (request, _reply, done) => {
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
    if (options.auth.query) app.server.removeListener('upgrade', stripQueryToken)
    await service.drain()
    app.websocketServer.close()
  })
  app.addHook('onClose', async () => {
    await service.stop()
    if (options.auth.query) app.server.removeListener('upgrade', stripQueryToken)
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
export { MemoryBroker, MemoryHub } from './lib/broker/memory.js'
export { RedisBroker, type RedisBrokerOptions } from './lib/broker/redis.js'
export type { RedisClient, RedisConnectionOptions, RedisConnectionSettings } from './lib/broker/redis-client.js'
export { RESERVED_COMMANDS, SUBPROTOCOL } from './lib/protocol.js'
export type { Broker, BrokerHost, BrokerMessage, BrokerHealth, BrokerLogger, Departure, NodeCounts, NodeReport, PresenceChange, PresenceEntry } from './lib/broker/broker.js'
export type { ForgeSocketOptions, ForgeSocketProfile, Profile, TokenPayload } from './lib/options.js'
export type { JwtOptions, JwtSecret, JwtKey, JwtKeyFunction } from './lib/jwt.js'
export type { SocketService, SocketStatus, ClusterStatus, ChannelInfo } from './lib/service.js'
export type { Connection, ConnectionInfo, Metadata } from './lib/connection.js'
export type { PageState, ActHandler, ActOptions, UpgradeTicket } from './lib/act.js'
export type { CommandContext, CommandDefinition } from './lib/commands.js'
export type { OutboundMessage, InboundMessage } from './schemas/envelope.js'
