import { randomUUID } from 'node:crypto'
import type { ServerResponse } from 'node:http'
import type { Socket } from 'node:net'
import type { Duplex } from 'node:stream'
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest } from 'fastify'
import type { TSchema } from 'typebox'
import type { RawData, WebSocket } from 'ws'
import type {} from '@fastify/websocket'
import { CloseCode, errors, withRetryAfter } from './errors.js'
import { assertChannel, checkServerMessage, encode } from './codec.js'
import { isSendableCloseCode } from './protocol.js'
import { ChannelRegistry, type MembershipChange } from './channels.js'
import { CommandRegistry, type CommandDefinition } from './commands.js'
import { Connection, ConnectionState, type ConnectionInfo, type Metadata } from './connection.js'
import { Heartbeat } from './heartbeat.js'
import { Deadlines } from './deadlines.js'
import { corkTick, directStream, textFrame } from './frame.js'
import { Inbound } from './inbound.js'
import { ConnectionCounter, RateByKey, addressBlock } from './limits.js'
import { PageState, currentPageState, runAct, type ActHandler, type ActOptions, type ActRouteOptions, type UpgradePlan, type UpgradeTicket } from './act.js'
import { checkOrigin, type Authenticator } from './auth.js'
import type { BrokerHealth, BrokerMessage, Departure, NodeCounts, NodeReport, PresenceChange, PresenceEntry } from './broker/broker.js'
import { PresenceAnnouncer, type PresenceMember } from './presence.js'
import type { Profile, ResolvedOptions } from './options.js'
import type { OutboundMessage, ServerMessageData } from '../schemas/envelope.js'

const kPlan = Symbol('forge-socket.plan')
/** The Connection of a socket, for the listeners every socket shares. */
const kConnection = Symbol('forge-socket.connection')
type TaggedSocket = WebSocket & { [kConnection]?: Connection }

/** The connection a socket's event is for (the listeners are registered only after it is set). */
function connectionOf (socket: TaggedSocket): Connection {
  return socket[kConnection] as Connection
}
const kResponse = Symbol('forge-socket.response')
type RequestWithPlan = FastifyRequest & { [kPlan]?: UpgradePlan, [kResponse]?: ServerResponse }

/** Frames that may wait while a connection is being registered; more than this is abuse (1008). */
const MAX_PENDING_FRAMES = 256
/** …and the bytes they may hold, in frames of `maxPayload`. */
const MAX_PENDING_PAYLOADS = 4

/** `Retry-After` of a refusal for too many open connections: when one of them closes can't be known. */
const FULL_RETRY_AFTER = 5000

export type OpenHook = (conn: Connection) => void | Promise<void>
export type CloseHook = (conn: Connection, code: number) => void | Promise<void>

/** What `status()` reports: this node's counts. */
export interface SocketStatus extends NodeCounts {
  node: string
  closing: boolean
  /** `degraded` while the broker can't reach the other nodes. */
  broker: BrokerHealth
}

/** What `clusterStatus()` reports: every live node's last report, and their sums. */
export interface ClusterStatus {
  /** `degraded` while the broker can't reach the other nodes (`nodes` is then this node alone). */
  broker: BrokerHealth
  nodes: NodeReport[]
  connections: number
  messagesIn: number
  messagesOut: number
}

/** What `channels()` reports for each channel of this node. */
export interface ChannelInfo {
  name: string
  connections: number
  users: number
  seq: number
}

/**
 * `app.socket`: the registry of this node's connections and channels, and everything an application does with
 * them. Messages for channels and connections on other nodes travel through the broker.
 */
export class SocketService {
  /** This node's id, tagged on everything it publishes. */
  readonly nodeId = randomUUID()
  readonly #app: FastifyInstance
  readonly #options: Readonly<ResolvedOptions>
  readonly #auth: Authenticator
  readonly #ownWebsocket: boolean
  readonly #connections = new Map<string, Connection>()
  readonly #channels = new ChannelRegistry()
  readonly #commands = new CommandRegistry()
  readonly #inbound: Inbound
  readonly #heartbeat: Heartbeat
  readonly #openHooks: OpenHook[] = []
  readonly #closeHooks: CloseHook[] = []
  /** Token expiries: one queue and one timer for every connection (lib/deadlines.ts). */
  readonly #expiries = new Deadlines<Connection>((conn) => {
    conn.debug({}, 'token expired: closing')
    conn.close(CloseCode.UNAUTHORIZED, 'token expired')
  })
  readonly #perIp: ConnectionCounter
  readonly #perUser: ConnectionCounter
  readonly #ratePerIp: RateByKey
  readonly #ratePerUser: RateByKey
  readonly #presence: PresenceAnnouncer
  /** Close paths still leaving channels and running onClose hooks; shutdown waits for them. */
  readonly #closePaths = new Set<Promise<void>>()
  #closing = false
  #drained: (() => void) | null = null
  #messagesOut = 0

  /**
   * @param ownWebsocket forge-socket registered @fastify/websocket itself (with its default error handler), so the
   * upgraded socket's error listener may be replaced by one that keeps no request alive.
   */
  constructor (app: FastifyInstance, options: Readonly<ResolvedOptions>, auth: Authenticator, ownWebsocket = false) {
    this.#app = app
    this.#ownWebsocket = ownWebsocket
    this.#options = options
    this.#auth = auth
    this.#perIp = new ConnectionCounter(options.connectionLimits.perIp)
    this.#perUser = new ConnectionCounter(options.connectionLimits.perUser)
    const { ratePerIp, ratePerUser, burst } = options.connectionLimits
    this.#ratePerIp = new RateByKey(ratePerIp, burst)
    this.#ratePerUser = new RateByKey(ratePerUser, burst)
    this.#presence = new PresenceAnnouncer(options.presence, {
      broadcast: (channel, cmd, param, except) => { this.broadcast(channel, { cmd, param }, { except }) },
      deliver: (channel, cmd, param) => { this.#deliver(channel, { channel, cmd, param }, undefined) },
      present: (channel) => this.#clusterUsers(channel),
      warn: (fields, message) => { app.log.warn(fields, message) }
    })
    this.#heartbeat = new Heartbeat(() => this.#connections.values(), options.heartbeat.interval, options.heartbeat.timeout)
    this.#inbound = new Inbound(options, this.#commands, {
      join: (conn, channel) => this.#join(conn, channel),
      leave: (conn, channel) => this.#leave(conn, channel),
      reply: (conn, message) => this.#reply(conn, message),
      refresh: (conn, param) => this.#refresh(conn, param)
    })
  }

  /**
   * Starts the broker and the heartbeat. Called once by the plugin. A broker that is not ready (Redis down) leaves
   * the node degraded until it is; with `waitForBroker`, the start waits that long for it, then refuses.
   */
  async start (): Promise<void> {
    const broker = this.#options.broker
    await broker.start({
      nodeId: this.nodeId,
      deliver: (message) => this.#fromBroker(message),
      log: this.#app.log.child({ broker: true }),
      counts: () => this.#counts(),
      presence: () => this.#localPresence()
    })
    const wait = this.#options.waitForBroker
    if (wait > 0 && broker.health === 'degraded') {
      let timer: NodeJS.Timeout | undefined
      const late = new Promise<never>((_resolve, reject) => {
        timer = setTimeout(() => reject(new errors.FST_SOCKET_BROKER_UNAVAILABLE(`not ready after ${wait} ms (waitForBroker)`)), wait)
      })
      try {
        // A broker without whenReady cannot say when it is ready: the wait runs out.
        await Promise.race([broker.whenReady?.() ?? late, late])
      } catch (err) {
        // The app does not start, so its onClose hooks never run: nothing of the broker's may stay open.
        await broker.close()
        throw err instanceof errors.FST_SOCKET_BROKER_UNAVAILABLE ? err : new errors.FST_SOCKET_BROKER_UNAVAILABLE((err as Error).message, { cause: err })
      } finally {
        clearTimeout(timer)
      }
    }
    this.#heartbeat.start()
  }

  /**
   * Returns route options for `app.get(url, ...)`. The handler runs before the upgrade, from a hook: it sees the
   * verified profile and refuses by throwing (plain HTTP 400/401/403) or accepts with `ps.upgrade(channel)`.
   *
   * @example
   * app.get('/ws/chat/:room', app.socket.act('chat.room', async (app, ps) => {
   *   const room = ps.requestString('room', true)
   *   return ps.upgrade(`chat-room-${room}`, { room })
   * }))
   */
  act (name: string, handler: ActHandler<Profile>, options?: ActOptions & { auth?: 'required' }): ActRouteOptions
  act (name: string, handler: ActHandler<Profile | null>, options: ActOptions & { auth: 'optional' }): ActRouteOptions
  act (name: string, handler: ActHandler<Profile | null>, options: ActOptions): ActRouteOptions
  act (name: string, handler: ActHandler<Profile> | ActHandler<Profile | null>, options: ActOptions = {}): ActRouteOptions {
    if (typeof handler !== 'function') throw new errors.FST_SOCKET_INVALID_OPTIONS(`act "${name}" needs a handler function`)
    const required = (options.auth ?? 'required') === 'required'
    const service = this
    return {
      websocket: true,
      async preValidation (request, reply) {
        // A node that is going away sends its clients elsewhere soon: they may try again in a second. (Checked
        // first: once closing, @fastify/websocket no longer upgrades, and `request.ws` is false.)
        if (service.#closing) throw withRetryAfter(new errors.FST_SOCKET_SHUTTING_DOWN(), 1000)
        if (!request.ws) throw new errors.FST_SOCKET_UPGRADE_REQUIRED()
        checkOrigin(request, service.#options.origins)
        // Before authenticate: this refusal needs no token, and verifying one may cost a JWKS fetch.
        service.#admit(request.ip, 'IP address', service.#perIp, service.#ratePerIp, addressBlock(request.ip as string | undefined))
        const { profile, payload } = await service.#auth.authenticate(request, required)
        service.#admit(profile?.id ?? null, 'user', service.#perUser, service.#ratePerUser)
        const ps = new PageState(name, request, profile, payload, options.onBinary)
        // On a route whose auth is required, authenticate has refused every request without a profile.
        await runAct(ps, () => (handler as ActHandler<Profile | null>)(this, ps))
        if (ps.plan === null) throw new errors.FST_SOCKET_NOT_UPGRADED(name);
        const upgrading = request as RequestWithPlan
        upgrading[kPlan] = ps.plan
        upgrading[kResponse] = reply.raw
        // The upgrade completes in this tick: ws's 101 answer and the `connected` frame then leave in one write
        // (one system call instead of two). Under `app.injectWS` there is no TCP socket, and nothing to cork.
        const tcp = request.raw.socket as Socket | undefined
        if (tcp !== undefined) corkTick(tcp)
      },
      handler (socket, request) {
        const upgraded = request as RequestWithPlan
        // Nothing may keep the upgrade's request and response alive as long as the connection (a few KiB each):
        // the response @fastify/websocket gave the socket, to refuse with a status, is detached; and its 'error'
        // listener, which holds both, is replaced by ours (the same: log, terminate) where its handler is the default.
        const response = upgraded[kResponse]
        if (response?.socket != null) response.detachSocket(response.socket)
        // preValidation always sets the plan before @fastify/websocket upgrades.
        const plan = upgraded[kPlan] as UpgradePlan
        if (service.#ownWebsocket) {
          socket.removeAllListeners('error')
          socket.on('error', service.#onError)
        }
        // Without a TCP socket (`app.injectWS`), every frame goes through ws.
        service.#accept(socket, plan, directStream(socket.extensions, request.raw.socket as Socket | undefined))
      }
    }
  }

  /**
   * Project Forge's `upgrade(channel, profile, logger)`, called from inside an act handler: accepts the upgrade
   * into `channel`. Outside an act handler it throws FST_SOCKET_OUTSIDE_ACT.
   *
   * @example
   * app.get('/ws/notifications', app.socket.act('notifications', (app, ps) =>
   *   app.socket.upgrade(`user-${ps.profile.id}`, ps.profile, ps.logger)))
   */
  upgrade (channel: string, profile?: Profile | null, logger?: FastifyBaseLogger): UpgradeTicket {
    return currentPageState('app.socket.upgrade').upgrade(channel, undefined, profile, logger)
  }

  /** `upgrade` with metadata, reported by `connections()`. */
  upgradeWithMetadata (channel: string, profile: Profile | null | undefined, metadata: Metadata, logger?: FastifyBaseLogger): UpgradeTicket {
    return currentPageState('app.socket.upgradeWithMetadata').upgrade(channel, metadata, profile, logger)
  }

  /**
   * Sends a message to every member of a channel, on every node, serialized once. `except` skips one connection
   * (usually the sender). Returns how many local connections it was written to.
   *
   * @example
   * app.socket.broadcast('chat-room-lobby', { cmd: 'user-typing', param: { user: 'ann' } }, { except: conn.id })
   */
  broadcast (channel: string, message: ServerMessageData, options: { except?: string } = {}): number {
    assertChannel(channel)
    const outbound = toOutbound(channel, message)
    const delivered = this.#deliver(channel, outbound, options.except)
    this.#publish({ type: 'channel', origin: this.nodeId, channel, message: outbound, except: options.except })
    return delivered
  }

  /**
   * Sends a message to one channel or several (Project Forge's per-user idiom: `user-<id>` channels). Each channel
   * gets its own envelope; returns how many local connections were written to.
   *
   * @example
   * app.socket.sendToChannel(['user-ann', 'user-bob'], { cmd: 'notification', param: { title: 'Hi' } })
   */
  sendToChannel (channels: string | string[], message: ServerMessageData): number {
    const list = Array.isArray(channels) ? channels : [channels]
    list.forEach((name) => assertChannel(name))
    let delivered = 0
    for (const name of list) delivered += this.broadcast(name, message)
    return delivered
  }

  /**
   * Sends a message to one connection, wherever it is. The envelope's channel is `message.channel` or the channel
   * the connection started in. Returns true when the connection is on this node.
   *
   * @example
   * app.socket.sendToConnection(id, { cmd: 'kicked', param: { reason: 'spam' } })
   */
  sendToConnection (connectionId: string, message: ServerMessageData & { channel?: string }): boolean {
    checkServerMessage(message)
    if (message.channel !== undefined) assertChannel(message.channel)
    const conn = this.#connections.get(connectionId)
    if (conn === undefined) {
      this.#publish({ type: 'connection', origin: this.nodeId, connectionId, message: { channel: message.channel, cmd: message.cmd, param: message.param ?? null } })
      return false
    }
    return this.#reply(conn, { channel: message.channel ?? conn.home, cmd: message.cmd, param: message.param ?? null })
  }

  /**
   * Adds a connection to a channel (presence: `user-joined` to the others). Resolves true when the connection is
   * on this node, once the broker subscription is in place.
   *
   * @example
   * await app.socket.join(conn.id, 'announcements')
   */
  async join (connectionId: string, channel: string): Promise<boolean> {
    assertChannel(channel)
    const conn = this.#connections.get(connectionId)
    if (conn === undefined) {
      await this.#publish({ type: 'join', origin: this.nodeId, connectionId, channel })
      return false
    }
    await this.#join(conn, channel)
    return true
  }

  /**
   * Removes a connection from a channel (presence: `user-left` to the others). Resolves true when the connection
   * is on this node.
   *
   * @example
   * await app.socket.leave(conn.id, 'announcements')
   */
  async leave (connectionId: string, channel: string): Promise<boolean> {
    assertChannel(channel)
    const conn = this.#connections.get(connectionId)
    if (conn === undefined) {
      await this.#publish({ type: 'leave', origin: this.nodeId, connectionId, channel })
      return false
    }
    await this.#leave(conn, channel)
    return true
  }

  /**
   * Closes a connection with a close code (default 1000) and a reason; 4000 tells the client not to reconnect.
   * Returns true when the connection is on this node.
   *
   * @example
   * app.socket.disconnect(id, 4000, 'account suspended')
   */
  disconnect (connectionId: string, code: number = CloseCode.NORMAL, reason = ''): boolean {
    if (!isSendableCloseCode(code)) throw new errors.FST_SOCKET_INVALID_CLOSE_CODE(code)
    const conn = this.#connections.get(connectionId)
    if (conn === undefined) {
      this.#publish({ type: 'disconnect', origin: this.nodeId, connectionId, code, reason })
      return false
    }
    conn.close(code, reason)
    return true
  }

  /**
   * Closes every connection of a user (their profile id), on every node, with a close code (default 1000) and a
   * reason. Returns how many were on this node.
   *
   * @example
   * app.socket.disconnectUser('ann', 4000, 'signed out everywhere')
   */
  disconnectUser (user: string, code: number = CloseCode.NORMAL, reason = ''): number {
    if (!isSendableCloseCode(code)) throw new errors.FST_SOCKET_INVALID_CLOSE_CODE(code)
    const closed = this.#closeUser(user, code, reason)
    this.#publish({ type: 'disconnect-user', origin: this.nodeId, user, code, reason })
    return closed
  }

  /**
   * Registers the handler of an inbound command. The param is checked against `schema` (compiled once); the
   * handler's return value is sent as `reply` when the client set `ref`; a thrown error becomes an `error`
   * message and the connection stays open. Reserved or duplicate names throw at once.
   *
   * @example
   * app.socket.command('chat-message', {
   *   schema: Type.Object({ text: Type.String({ minLength: 1 }) }),
   *   handler: (param, { channel, connection }) => { app.socket.broadcast(channel, { cmd: 'chat-message', param }) }
   * })
   */
  command<S extends TSchema> (cmd: string, definition: CommandDefinition<S>): void {
    this.#commands.add(cmd, definition as unknown as CommandDefinition)
  }

  /** Runs after a connection is registered and has received `connected`, before its messages are handled. */
  onOpen (hook: OpenHook): void {
    this.#openHooks.push(hook)
  }

  /** Runs once a connection has closed, whatever closed it, with the close code. */
  onClose (hook: CloseHook): void {
    this.#closeHooks.push(hook)
  }

  /** Counts for this node. */
  status (): SocketStatus {
    return { node: this.nodeId, closing: this.#closing, broker: this.#options.broker.health ?? 'ok', ...this.#counts() }
  }

  /**
   * Counts for every live node, as each last reported them (Redis: every `nodeTtl / 3`; this node's are current).
   * While the broker is unreachable, or with a broker that has no cluster view, it reports this node alone.
   *
   * @example
   * const { nodes, connections } = await app.socket.clusterStatus()
   */
  async clusterStatus (): Promise<ClusterStatus> {
    const broker = this.#options.broker
    let nodes: NodeReport[] = [{ node: this.nodeId, ...this.#counts(), at: Date.now() }]
    if (broker.nodes !== undefined) {
      try {
        nodes = await broker.nodes()
      } catch (err) {
        this.#app.log.warn({ err }, 'cluster status: the other nodes could not be asked')
      }
    }
    const total = (key: 'connections' | 'messagesIn' | 'messagesOut'): number => nodes.reduce((sum, node) => sum + node[key], 0)
    return {
      broker: broker.health ?? 'ok',
      nodes,
      connections: total('connections'),
      messagesIn: total('messagesIn'),
      messagesOut: total('messagesOut')
    }
  }

  /** This node's channels with their member counts. */
  channels (): ChannelInfo[] {
    return [...this.#channels.all()].map((channel) => ({
      name: channel.name, connections: channel.members.size, users: channel.users.size, seq: channel.seq
    }))
  }

  /** This node's connections, all or those in one channel. */
  connections (channel?: string): ConnectionInfo[] {
    const conns = channel === undefined ? this.#connections.values() : (this.#channels.get(channel)?.members ?? [])
    return [...conns].map((conn) => conn.info())
  }

  /**
   * The users present in a channel on every node, with how many connections each has there. With a broker that
   * has no cluster view, this node's. Rejects with FST_SOCKET_BROKER_UNAVAILABLE while the broker is unreachable
   * (`localPresence` still answers).
   *
   * @example
   * const here = await app.socket.presence('chat-room-lobby')   // [{ user: 'ann', connections: 2 }]
   */
  async presence (channel: string): Promise<PresenceEntry[]> {
    const broker = this.#options.broker
    return broker.presence === undefined ? this.localPresence(channel) : await broker.presence(channel)
  }

  /** The users present in a channel on this node, with how many connections each has here. */
  localPresence (channel: string): PresenceEntry[] {
    const users = this.#channels.get(channel)?.users ?? new Map<string, number>()
    return [...users].map(([user, connections]) => ({ user, connections }))
  }

  /**
   * Graceful shutdown (from the app's `preClose`): refuses new upgrades (503), closes every connection with 1001,
   * waits for them up to `shutdownTimeout`, then terminates the rest.
   */
  async drain (): Promise<void> {
    this.#closing = true
    this.#heartbeat.stop()
    if (this.#connections.size === 0) return
    const drained = new Promise<void>((resolve) => { this.#drained = resolve })
    for (const conn of this.#connections.values()) conn.close(CloseCode.GOING_AWAY, 'server shutting down')
    const deadline = setTimeout(() => {
      // One line for all of them: a shutdown with thousands of stragglers must not write thousands of warnings.
      this.#app.log.warn({ connections: this.#connections.size }, 'connections still open at the shutdown deadline: terminating')
      for (const conn of this.#connections.values()) conn.terminate()
    }, this.#options.shutdownTimeout)
    await drained
    clearTimeout(deadline)
    await Promise.all(this.#closePaths)
  }

  /** Releases the broker (from the app's `onClose`). */
  async stop (): Promise<void> {
    this.#heartbeat.stop()
    this.#expiries.clear()
    await Promise.all(this.#closePaths)
    // The other nodes' members hear this node's users leave: what is gathered goes out before the broker closes.
    await this.#presence.flush()
    this.#presence.stop()
    await this.#options.broker.close()
  }

  /**
   * The connection limits of one IP address or user, before the upgrade: its open connections (429, try again in
   * a few seconds: when one closes is anyone's guess) and its new connections a second (429, when the next is
   * allowed). Every attempt counts against the rate, refused or not, so a loop of refused attempts stays refused.
   * An IP's rate counts its address block (`addressBlock`: IPv6 by /64).
   */
  #admit (key: string | null, what: 'IP address' | 'user', open: ConnectionCounter, rate: RateByKey, rateKey = key): void {
    const wait = rate.take(rateKey, Date.now())
    if (wait > 0) throw withRetryAfter(new errors.FST_SOCKET_CONNECTION_RATE_LIMITED(what), wait)
    if (!open.allows(key)) throw withRetryAfter(new errors.FST_SOCKET_TOO_MANY_CONNECTIONS(what), FULL_RETRY_AFTER)
  }

  #accept (socket: WebSocket, plan: UpgradePlan, stream: Duplex | null): void {
    // An act handler that was still running when app.close() began: its upgrade completes, and is told to go.
    if (this.#closing) return socket.close(CloseCode.GOING_AWAY, 'server shutting down')
    // Checked before the upgrade too (429); here again for upgrades that raced each other past that check.
    const user = plan.profile?.id ?? null
    if (!this.#perIp.allows(plan.ip) || !this.#perUser.allows(user)) return socket.close(CloseCode.TRY_AGAIN_LATER, 'too many connections')
    this.#perIp.add(plan.ip)
    this.#perUser.add(user)
    const id = randomUUID()
    const conn = new Connection({
      id,
      socket,
      stream,
      profile: plan.profile,
      metadata: plan.metadata,
      home: plan.channel,
      ip: plan.ip,
      log: plan.logger,
      onBinary: plan.onBinary,
      limits: this.#options
    })
    // Listeners go on before any await, so frames that arrive while the connection is registered wait in
    // `pending` instead of being lost. They are the service's, shared by every socket (no closures per connection).
    ;(socket as TaggedSocket)[kConnection] = conn
    socket.on('message', this.#onMessage)
    socket.on('pong', this.#onPong)
    socket.on('ping', this.#onPing)
    socket.on('close', this.#onClose)
    this.#connections.set(id, conn)
    this.#armExpiry(conn, plan.payload?.exp)
    // Through the upgrade's logger: the connection's own is made only when something logs through it.
    plan.logger.debug({ connId: id, channel: plan.channel }, 'connection open')
    this.#reply(conn, { channel: plan.channel, cmd: 'connected', param: { connectionId: id, channels: [plan.channel] } })
    void this.#open(conn)
  }

  /** A frame from a connection's socket: handled when it is open, kept in `pending` while it opens. */
  #message (conn: Connection, data: RawData, isBinary: boolean): void {
    conn.awaitingPong = false
    if (conn.state === ConnectionState.OPEN) return this.#inbound.handle(conn, data, isBinary)
    // Once a close has started, frames still in flight are dropped: none may jump ahead of `pending` (after a
    // 1008 for too many frames) or run handlers for a connection the server is closing.
    if (conn.state !== ConnectionState.OPENING) return
    const pending = (conn.pending ??= { frames: [], bytes: 0 })
    pending.bytes += (data as Buffer).length
    if (pending.frames.length >= MAX_PENDING_FRAMES || pending.bytes > this.#options.maxPayload * MAX_PENDING_PAYLOADS) {
      return conn.close(CloseCode.POLICY_VIOLATION, 'too many frames before open')
    }
    pending.frames.push([data, isBinary])
  }

  // The socket listeners, one of each for every socket: `this` is the socket.
  readonly #onMessage = ((service: SocketService) => function (this: TaggedSocket, data: RawData, isBinary: boolean): void {
    service.#message(connectionOf(this), data, isBinary)
  })(this)

  readonly #onPong = function (this: TaggedSocket): void {
    connectionOf(this).awaitingPong = false
  }

  readonly #onPing = function (this: TaggedSocket): void {
    connectionOf(this).pinged()
  }

  readonly #onClose = ((service: SocketService) => function (this: TaggedSocket, code: number): void {
    const closed = service.#closed(connectionOf(this), code)
    service.#closePaths.add(closed)
    void closed.finally(() => service.#closePaths.delete(closed))
  })(this)

  /** Replaces @fastify/websocket's default error listener (log, terminate) without keeping the request alive. */
  readonly #onError = ((service: SocketService) => function (this: TaggedSocket, err: Error): void {
    // A socket refused in #accept has no connection. ws's own WS_ERR_* errors are the peer breaking the protocol
    // (too big, bad UTF-8, too many fragments): ws has closed it with the matching code, and one line per such
    // client at error level would let any client write the log full.
    const conn = this[kConnection]
    const code = (err as { code?: unknown }).code
    if (typeof code === 'string' && code.startsWith('WS_ERR_')) {
      const fields = { code, message: err.message }
      if (conn !== undefined) conn.debug(fields, 'socket closed: the client broke the protocol')
      else service.#app.log.debug(fields, 'socket closed: the client broke the protocol')
    } else {
      (conn?.log ?? service.#app.log).error({ err }, 'socket error')
    }
    this.terminate()
  })(this)

  async #open (conn: Connection): Promise<void> {
    try {
      await this.#join(conn, conn.home)
      for (const hook of this.#openHooks) {
        // A connection that closed meanwhile has had its onClose hooks (or will): no onOpen may run after them.
        if (conn.state !== ConnectionState.OPENING) return
        await hook(conn)
      }
    } catch (err) {
      conn.log.error({ err }, 'connection setup failed')
      conn.close(CloseCode.INTERNAL_ERROR, 'internal error')
      return
    }
    if (conn.state !== ConnectionState.OPENING) return
    conn.state = ConnectionState.OPEN
    const pending = conn.pending
    conn.pending = null
    for (const [data, isBinary] of pending?.frames ?? []) this.#inbound.handle(conn, data, isBinary)
  }

  /** Closes the connection with 4001 `auth.expiryGrace` ms after `exp`; a refresh re-arms it. */
  #armExpiry (conn: Connection, exp: unknown): void {
    if (typeof exp === 'number') this.#expiries.set(conn, exp * 1000 + this.#options.auth.expiryGrace)
    else this.#expiries.delete(conn)
  }

  async #closed (conn: Connection, code: number): Promise<void> {
    conn.state = ConnectionState.CLOSED
    this.#connections.delete(conn.id)
    this.#perIp.remove(conn.ip)
    this.#perUser.remove(conn.profileId)
    this.#expiries.delete(conn)
    conn.debug({ code }, 'connection closed')
    if (this.#connections.size === 0) this.#drained?.()
    // Each step fails alone: a broker error must not keep the connection in its other channels (a leak), and one
    // application hook must not stop the others.
    await Promise.all([...conn.channels].map(async (channel) => {
      try {
        await this.#leave(conn, channel)
      } catch (err) {
        conn.log.error({ err, channel }, 'leaving a channel failed')
      }
    }))
    for (const hook of this.#closeHooks) {
      try {
        await hook(conn, code)
      } catch (err) {
        conn.log.error({ err }, 'close hook failed')
      }
    }
  }

  /**
   * `auth.refresh`: a fresh token for the same subject moves the connection's expiry. A bad token, or one for
   * another subject, closes the connection with 4001. @fastify/jwt's callbacks see a stand-in request (lib/jwt.ts).
   */
  async #refresh (conn: Connection, param: unknown): Promise<{ exp: number | null }> {
    const token = (param as { token?: unknown } | null)?.token
    if (typeof token !== 'string' || token.length === 0) throw new errors.FST_SOCKET_BAD_REQUEST('auth.refresh needs { token }')
    if (conn.profile === null) throw new errors.FST_SOCKET_FORBIDDEN('an anonymous connection has no token to refresh')
    // On failure the client gets the `error` first (it is sent as this call throws), then the 4001.
    const refuse = (err: Error, reason: string): Error => {
      setImmediate(() => conn.close(CloseCode.UNAUTHORIZED, reason))
      return err
    }
    let verified: Awaited<ReturnType<Authenticator['refresh']>>
    try {
      verified = await this.#auth.refresh(token, conn.ip, conn.log)
    } catch (err) {
      // No verdict on the token (its key could not be fetched): the connection keeps its expiry and may try again.
      if (err instanceof errors.FST_SOCKET_AUTH_UNAVAILABLE) throw err
      throw refuse(err as Error, 'refresh token refused')
    }
    if (verified.profile.id !== conn.profile.id) {
      throw refuse(new errors.FST_SOCKET_TOKEN_INVALID('the token is for another subject'), 'refresh token for another subject')
    }
    const exp = typeof verified.payload.exp === 'number' ? verified.payload.exp : null
    // It may have closed while the token was checked: a timer for it now would keep it alive for good.
    if (conn.state === ConnectionState.CLOSED) return { exp }
    this.#armExpiry(conn, exp)
    conn.log.debug('token refreshed')
    return { exp }
  }

  /** Answers one connection (`ref` left undefined is dropped by the encoder). */
  #reply (conn: Connection, message: OutboundMessage): boolean {
    const sent = conn.send(message)
    if (sent) this.#messagesOut++
    return sent
  }

  async #join (conn: Connection, channel: string): Promise<void> {
    // A connection that closed while a hook was still joining it somewhere must not be left behind in a channel.
    if (conn.state === ConnectionState.CLOSED) return
    const change = this.#channels.join(conn, channel)
    if (change === null) return
    const announced = this.#announce(conn, change, 'user-joined')
    // Every member that joins while the node's subscription is under way waits for it; if it fails, each of them
    // leaves again (announced), so nobody sits in a channel whose other nodes' messages never arrive.
    if (change.firstOrLast) change.channel.subscribed = this.#subscribe(channel)
    try {
      await change.channel.subscribed
    } catch (err) {
      await announced
      await this.#leave(conn, channel)
      throw err
    }
    await announced
  }

  /** The broker subscription as a promise, whether the broker is synchronous, asynchronous, or throws. */
  async #subscribe (channel: string): Promise<void> {
    await this.#options.broker.subscribe(channel)
  }

  async #leave (conn: Connection, channel: string): Promise<void> {
    const change = this.#channels.leave(conn, channel)
    if (change === null) return
    const announced = this.#announce(conn, change, 'user-left')
    if (change.firstOrLast) await this.#options.broker.unsubscribe(channel)
    await announced
  }

  /**
   * Records the user's connection count in the channel with the broker (presence on every node) and, when that
   * made the user present somewhere for the first time or absent everywhere, hands the change to the announcer
   * (lib/presence.ts), which tells the channel's members in its next round. Without a cluster view, or while the
   * broker is unreachable, this node's members decide. Never rejects.
   */
  async #announce (conn: Connection, change: MembershipChange, cmd: 'user-joined' | 'user-left'): Promise<void> {
    const user = conn.profileId
    if (user === null) return
    const { name, users } = change.channel
    const broker = this.#options.broker
    let cluster: PresenceChange = change.userFirstOrLast ? (cmd === 'user-joined' ? 'joined' : 'left') : null
    let present: number | null = null
    if (broker.setPresence !== undefined) {
      try {
        // The count is read now, before any await, so concurrent changes are recorded in the order they happened.
        const update = await broker.setPresence(name, user, users.get(user) ?? 0)
        if (update !== null && typeof update === 'object') ({ change: cluster, users: present } = update)
        else cluster = update
      } catch (err) {
        conn.log.warn({ err, channel: name }, 'presence not recorded with the broker: this node decides')
      }
    }
    if (cluster === null) return
    // The cap counts every node's users where the broker knows them, else this node's.
    this.#presence.change(name, { user, connectionId: conn.id }, cluster, present ?? this.#channels.get(name)?.users.size ?? 0)
  }

  /** The users of a channel on every node, for the presence announcer's check; null without a cluster view. */
  async #clusterUsers (channel: string): Promise<ReadonlySet<string> | null> {
    const broker = this.#options.broker
    if (broker.presence === undefined || broker.health === 'degraded') return null
    return new Set((await broker.presence(channel)).map((entry) => entry.user))
  }

  /** A node's users, gone with it or back: each channel of this node hears about them in one round. */
  #nodePresence (node: string, joined: Departure[], left: Departure[]): void {
    const byChannel = new Map<string, { joins: PresenceMember[], leaves: PresenceMember[] }>()
    for (const [list, key] of [[joined, 'joins'], [left, 'leaves']] as const) {
      for (const { channel, user } of list) {
        let entry = byChannel.get(channel)
        if (entry === undefined) byChannel.set(channel, (entry = { joins: [], leaves: [] }))
        entry[key].push({ user, node })
      }
    }
    for (const [channel, { joins, leaves }] of byChannel) {
      const local = this.#channels.get(channel)
      if (local !== undefined) this.#presence.nodeChange(channel, joins, leaves, local.users.size)
    }
  }

  /** This node's counts. */
  #counts (): NodeCounts {
    return { connections: this.#connections.size, channels: this.#channels.size, messagesIn: this.#inbound.messages, messagesOut: this.#messagesOut }
  }

  /** Every `[channel, user, connections]` on this node. */
  * #localPresence (): Iterable<[string, string, number]> {
    for (const channel of this.#channels.all()) {
      for (const [user, connections] of channel.users) yield [channel.name, user, connections]
    }
  }

  /** Closes this node's connections of `user`; returns how many. */
  #closeUser (user: string, code: number, reason: string): number {
    let closed = 0
    for (const conn of this.#connections.values()) {
      if (conn.profileId !== user || conn.state >= ConnectionState.CLOSING) continue
      conn.close(code, reason)
      closed++
    }
    return closed
  }

  /** Writes a channel message to this node's members: one encoding, the same bytes for each. */
  #deliver (name: string, message: OutboundMessage, except: string | undefined): number {
    const channel = this.#channels.get(name)
    if (channel === undefined) return 0
    // `seq` numbers the messages every member receives, so a gap in it always means a lost message; a message
    // with `except` skips someone and carries none.
    // Object.assign, not a spread: in Node 20 a spread's copies get a hidden class each after a few calls, which
    // made every broadcast allocate one and serialize about twice as slowly.
    const frame = textFrame(encode(except === undefined ? Object.assign({}, message, { seq: ++channel.seq }) : message))
    let delivered = 0
    for (const member of channel.members) {
      if (member.id !== except && member.sendFrame(frame)) delivered++
    }
    this.#messagesOut += delivered
    return delivered
  }

  #publish (message: BrokerMessage): Promise<void> | void {
    try {
      const result = this.#options.broker.publish(message)
      if (result instanceof Promise) {
        return result.catch((err: unknown) => { this.#app.log.error({ err, type: message.type }, 'broker publish failed') })
      }
    } catch (err) {
      this.#app.log.error({ err, type: message.type }, 'broker publish failed')
    }
  }

  #fromBroker (message: BrokerMessage): void {
    // Its own messages, echoed back, were delivered here already; news about its own presence (it was taken for
    // dead while frozen, and is back) is not for its members, who never saw anyone go.
    if (message.origin === this.nodeId) return
    switch (message.type) {
      case 'channel':
        this.#deliver(message.channel, message.message, message.except)
        return
      case 'connection': {
        const conn = this.#connections.get(message.connectionId)
        if (conn !== undefined) this.#reply(conn, Object.assign({}, message.message, { channel: message.message.channel ?? conn.home }))
        return
      }
      case 'join':
      case 'leave': {
        const conn = this.#connections.get(message.connectionId)
        if (conn === undefined) return
        const change = message.type === 'join' ? this.#join(conn, message.channel) : this.#leave(conn, message.channel)
        change.catch((err: unknown) => conn.log.error({ err }, `remote ${message.type} failed`))
        return
      }
      case 'disconnect':
        this.#connections.get(message.connectionId)?.close(message.code, message.reason)
        return
      case 'disconnect-user':
        this.#closeUser(message.user, message.code, message.reason)
        return
      case 'node-presence':
        this.#nodePresence(message.node, message.joined, message.left)
    }
  }
}

/** Builds the envelope of a channel message. */
function toOutbound (channel: string, message: ServerMessageData): OutboundMessage {
  checkServerMessage(message)
  return { channel, cmd: message.cmd, param: message.param ?? null }
}
