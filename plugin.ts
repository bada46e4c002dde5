import fp from 'fastify-plugin'
import fastifyWebsocket from '@fastify/websocket'
import fastifyJwt from '@fastify/jwt'
import type { FastifyInstance } from 'fastify'
import { resolveOptions, type ForgeSocketOptions } from './lib/options.js'
import { SocketService } from './lib/service.js'
import { selectProtocol, stripQueryToken } from './lib/auth.js'
import { errors } from './lib/errors.js'

declare module 'fastify' {
  interface FastifyInstance {
    /** forge-socket's service: routes (`act`), sends, channels, commands and introspection. */
    socket: SocketService
  }
}

/**
 * Real-time, channel-based messaging over WebSockets, with JWT-protected channels.
 *
 * @example
 * await app.register(forgeSocket, { jwt: { secret: process.env.JWT_SECRET } })
 * app.get('/ws/notifications', app.socket.act('notifications', (app, ps) => ps.upgrade(`user-${ps.profile!.id}`)))
 */
async function forgeSocket (app: FastifyInstance, input: ForgeSocketOptions): Promise<void> {
  if (app.hasDecorator('socket')) throw new errors.FST_SOCKET_ALREADY_REGISTERED()
  const options = resolveOptions(input)

  // When forge-socket registers @fastify/jwt, the allow-list is built into its verifier; an app's own instance
  // gets the allow-list with every verify (which makes @fastify/jwt build a verifier each time).
  const ownJwt = !app.hasDecorator('jwt')
  if (ownJwt) {
    if (options.jwt === undefined) throw new errors.FST_SOCKET_INVALID_OPTIONS('/jwt/secret is required unless @fastify/jwt is already registered')
    await app.register(fastifyJwt, { secret: options.jwt.secret, verify: { algorithms: options.auth.algorithms } })
  }
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

  const service = new SocketService(app, options, ownJwt ? undefined : { algorithms: options.auth.algorithms }, ownWebsocket)
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
  name: 'forge-socket'
})

export default plugin
export { plugin as forgeSocket }
export { errors, CloseCode, forbidden, badRequest } from './lib/errors.js'
export { MemoryBroker, MemoryHub } from './lib/broker/memory.js'
export { RedisBroker, type RedisBrokerOptions } from './lib/broker/redis.js'
export { RESERVED_COMMANDS, SUBPROTOCOL } from './lib/protocol.js'
export type { Broker, BrokerHost, BrokerMessage, BrokerHealth, BrokerLogger, Departure, NodeCounts, NodeReport, PresenceChange, PresenceEntry } from './lib/broker/broker.js'
export type { ForgeSocketOptions, ForgeSocketProfile, Profile, TokenPayload } from './lib/options.js'
export type { SocketService, SocketStatus, ClusterStatus, ChannelInfo } from './lib/service.js'
export type { Connection, ConnectionInfo, Metadata } from './lib/connection.js'
export type { PageState, ActHandler, ActOptions, UpgradeTicket } from './lib/act.js'
export type { CommandContext, CommandDefinition } from './lib/commands.js'
export type { OutboundMessage, InboundMessage } from './schemas/envelope.js'
