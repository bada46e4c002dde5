import { randomUUID } from 'node:crypto'
import type { FastifyBaseLogger, FastifyInstance } from 'fastify'
import type { TSchema } from 'typebox'
import type {} from '@fastify/websocket'
import { CloseCode, errors } from './errors.js'
import { assertChannel, checkServerMessage, envelope } from './codec.js'
import { isSendableCloseCode } from './protocol.js'
import { CommandRegistry, type CommandDefinition } from './commands.js'
import type { ConnectionInfo, Metadata } from './connection.js'
import { Hub, type ChannelInfo } from './hub.js'
import { Cluster, type ClusterStatus } from './cluster.js'
import { Expiry } from './expiry.js'
import { Inbound } from './inbound.js'
import { Dedupe, type DedupeCounts } from './dedupe.js'
import type { Observer } from './observer.js'
import { kAdmin } from './symbols.js'
import { registerMetrics, type NodeMetrics } from './metrics.js'
import { Lifecycle, type CloseHook, type OpenHook } from './lifecycle.js'
import { actRoute, currentPageState, type ActHandler, type ActOptions, type ActRouteOptions, type UpgradeTicket } from './act.js'
import type { Authenticator } from './auth.js'
import type { BrokerHealth, NodeCounts, PresenceEntry, StreamPage, StreamPosition } from './broker/broker.js'
import type { Profile, ResolvedOptions } from './options.js'
import type { ServerMessageData } from '../schemas/envelope.js'

export type { ChannelInfo } from './hub.js'
export type { ClusterStatus } from './cluster.js'
export type { CloseHook, OpenHook } from './lifecycle.js'

/** What the admin plugin is given of the node (`[kAdmin]()`). */
export interface AdminAccess {
  auth: Authenticator
  observer: Observer
}

/** What `status()` reports: this node's counts. */
export interface SocketStatus extends NodeCounts {
  node: string
  closing: boolean
  /** `degraded` while the broker can't reach the other nodes. */
  broker: BrokerHealth
  /** The in-process record of handled message ids (the memory broker's), when there is one. */
  dedupe?: DedupeCounts
}

/**
 * `app.socket`: everything an application does with this node's connections and channels and, through the broker,
 * with every node's. A facade: it checks its inputs and hands each call to its layer (docs/architecture.md) — the
 * upgrade route (lib/act.ts), the socket lifecycle (lib/lifecycle.ts), the cluster (lib/cluster.ts) and this node's
 * hub (lib/hub.ts).
 */
export class SocketService {
  /** This node's id, tagged on everything it publishes. */
  readonly nodeId = randomUUID()
  readonly #options: Readonly<ResolvedOptions>
  readonly #auth: Authenticator
  readonly #commands = new CommandRegistry()
  readonly #hub = new Hub()
  readonly #cluster: Cluster
  readonly #lifecycle: Lifecycle
  readonly #dedupe: Dedupe | null
  #metrics: NodeMetrics | null = null

  /**
   * @param ownWebsocket forge-socket registered @fastify/websocket itself (with its default error handler), so the
   * upgraded socket's error listener may be replaced by one that keeps no request alive.
   */
  constructor (app: FastifyInstance, options: Readonly<ResolvedOptions>, auth: Authenticator, ownWebsocket = false) {
    this.#options = options
    this.#auth = auth
    this.#cluster = new Cluster(this.nodeId, this.#hub, options.broker, options.presence, app.log, options.history)
    const expiry = new Expiry(auth, options.auth.expiryGrace)
    this.#dedupe = options.dedupe === null ? null : new Dedupe(options.dedupe, options.broker)
    const inbound = new Inbound(options, this.#commands, this.#cluster, expiry, this.#dedupe)
    this.#lifecycle = new Lifecycle({ hub: this.#hub, cluster: this.#cluster, inbound, expiry, options, log: app.log, ownWebsocket, dedupe: this.#dedupe })
  }

  /**
   * Starts the broker and the heartbeat. Called once by the plugin. A broker that is not ready (Redis down) leaves
   * the node degraded until it is; with `waitForBroker`, the start waits that long for it, then refuses.
   */
  async start (): Promise<void> {
    if (this.#options.metrics !== null) {
      this.#metrics = await registerMetrics(this.#options.metrics, { hub: this.#hub, health: () => this.#cluster.health })
      this.#hub.observer.metrics = this.#metrics.recorder
    }
    try {
      await this.#cluster.start(this.#options.waitForBroker)
    } catch (err) {
      this.#metrics?.remove()
      throw err
    }
    this.#lifecycle.start()
  }

  /**
   * Returns route options for `app.get(url, ...)`. The handler runs before the upgrade, from a hook: it sees the
   * verified profile and refuses by throwing (plain HTTP 400/401/403) or accepts with `ps.upgrade(channel)`.
   *
   * @example
   * app.get('/ws/chat/:room', app.socket.act('chat.room', (app, ps) => {
   *   const room = ps.requestString('room', true)
   *   return ps.upgrade(`chat-room-${room}`, { room })
   * }))
   */
  act (name: string, handler: ActHandler<Profile>, options?: ActOptions & { auth?: 'required' }): ActRouteOptions
  act (name: string, handler: ActHandler<Profile | null>, options: ActOptions & { auth: 'optional' }): ActRouteOptions
  act (name: string, handler: ActHandler<Profile | null>, options: ActOptions): ActRouteOptions
  act (name: string, handler: ActHandler<Profile> | ActHandler<Profile | null>, options: ActOptions = {}): ActRouteOptions {
    if (typeof handler !== 'function') throw new errors.FST_SOCKET_INVALID_OPTIONS(`act "${name}" needs a handler function`)
    return actRoute(this.#lifecycle, this.#auth, this.#options.origins, name, handler as ActHandler<Profile | null>, options)
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
    checkServerMessage(message)
    return this.#cluster.broadcast(envelope(channel, message.cmd, message.param), options.except)
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
   * the connection started in. Returns true when the connection is on this node and took it (false when it is
   * elsewhere, or closing).
   *
   * @example
   * app.socket.sendToConnection(id, { cmd: 'kicked', param: { reason: 'spam' } })
   */
  sendToConnection (connectionId: string, message: ServerMessageData & { channel?: string }): boolean {
    checkServerMessage(message)
    if (message.channel !== undefined) assertChannel(message.channel)
    return this.#cluster.sendToConnection(connectionId, message)
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
    return await this.#cluster.joinConnection(connectionId, channel)
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
    return await this.#cluster.leaveConnection(connectionId, channel)
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
    return this.#cluster.disconnect(connectionId, code, reason)
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
    return this.#cluster.disconnectUser(user, code, reason)
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
    this.#lifecycle.onOpen(hook)
  }

  /** Runs once a connection has closed, whatever closed it, with the close code. */
  onClose (hook: CloseHook): void {
    this.#lifecycle.onClose(hook)
  }

  /** What the admin plugin (lib/admin/) uses of this node: token checks as for act routes, and the taps. */
  [kAdmin] (): AdminAccess {
    return { auth: this.#auth, observer: this.#hub.observer }
  }

  /** Counts for this node. */
  status (): SocketStatus {
    const status: SocketStatus = { node: this.nodeId, closing: this.#lifecycle.closing, broker: this.#cluster.health, ...this.#hub.counts() }
    const dedupe = this.#dedupe?.counts ?? null
    if (dedupe !== null) status.dedupe = dedupe
    return status
  }

  /**
   * Counts for every live node, as each last reported them (Redis: every `nodeTtl / 3`; this node's are current).
   * While the broker is unreachable, or with a broker that has no cluster view, it reports this node alone.
   *
   * @example
   * const { nodes, connections } = await app.socket.clusterStatus()
   */
  async clusterStatus (): Promise<ClusterStatus> {
    return await this.#cluster.status()
  }

  /** This node's channels with their member counts. */
  channels (): ChannelInfo[] {
    return this.#hub.channels()
  }

  /** This node's connections, all or those in one channel. */
  connections (channel?: string): ConnectionInfo[] {
    return this.#hub.connections(channel)
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
    return await this.#cluster.presence(channel)
  }

  /**
   * What a channel with history keeps, on every node: up to `limit` messages (default 100, at most 10,000), those
   * after `since` when it is of the channel's epoch (oldest first), else the newest; with the channel's position.
   * Null when the channel keeps no history. The same as the `history` command a member sends, for server code
   * (a page rendered with the room's last messages, say).
   *
   * @example
   * const page = await app.socket.history('chat-room-lobby', { limit: 50 })   // { epoch, seq, messages }
   */
  async history (channel: string, options: { since?: StreamPosition, limit?: number } = {}): Promise<StreamPage | null> {
    assertChannel(channel)
    const limit = options.limit ?? 100
    if (!Number.isInteger(limit) || limit < 0 || limit > 10_000) throw new errors.FST_SOCKET_BAD_REQUEST(`history: limit must be an integer from 0 to 10000 (got ${limit})`)
    return await this.#cluster.read(channel, options.since, limit)
  }

  /** The users present in a channel on this node, with how many connections each has here. */
  localPresence (channel: string): PresenceEntry[] {
    return this.#hub.presence(channel)
  }

  /**
   * Graceful shutdown (from the app's `preClose`): refuses new upgrades (503), closes every connection with 1001,
   * waits for them up to `shutdownTimeout`, then terminates the rest.
   */
  async drain (): Promise<void> {
    await this.#lifecycle.drain()
  }

  /** Releases the broker (from the app's `onClose`), once every close path has run. */
  async stop (): Promise<void> {
    await this.#lifecycle.stop()
    await this.#cluster.stop()
    this.#metrics?.remove()
    this.#metrics = null
    this.#hub.observer.metrics = null
  }
}
