import type { FastifyBaseLogger } from 'fastify'
import { errors } from './errors.js'
import { envelope } from './codec.js'
import type { Connection } from './connection.js'
import type { MembershipChange } from './channels.js'
import type { DirectMessage, Hub } from './hub.js'
import { PresenceAnnouncer, type PresenceMember } from './presence.js'
import type { Broker, BrokerHealth, BrokerMessage, Departure, HistorySettings, NodeReport, PresenceChange, PresenceEntry, StreamPage, StreamPosition } from './broker/broker.js'
import type { ResolvedOptions, ResolvedPresence } from './options.js'
import { recover, type Recovery } from './recovery.js'
import { Continuity } from './continuity.js'
import type { OutboundMessage } from '../schemas/envelope.js'

/** Where a channel's stream stands for a connection that joins it, and what its recovery replays (lib/recovery.ts). */
export interface CatchUp {
  position: StreamPosition
  /** Null when the client gave no position to recover from. */
  recovery: Recovery | null
  replay: OutboundMessage[]
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

/**
 * The broker, both ways (centrifuge's `Node`, socket.io's `ClusterAdapter`). Each operation does its local half
 * with the hub and publishes the rest; a message from another node (`receive`) calls the same hub methods, so the
 * remote side is never spelled twice. Channel membership lives here too, because joining a channel is a broker
 * subscription and a presence record as well as a local set. Channel history and recovery will live here next.
 */
export class Cluster {
  /** This node's id, tagged on everything it publishes. */
  readonly #nodeId: string
  readonly #hub: Hub
  readonly #broker: Broker
  readonly #log: FastifyBaseLogger
  readonly #presence: PresenceAnnouncer
  readonly #continuity: Continuity
  readonly #history: ResolvedOptions['history']
  /** When each kind of history trouble was last logged: once a minute at most, whatever the traffic. */
  readonly #warned = { settings: -Infinity, unread: -Infinity }

  constructor (nodeId: string, hub: Hub, broker: Broker, presence: Readonly<ResolvedPresence>, log: FastifyBaseLogger, history: ResolvedOptions['history'] = () => null) {
    this.#nodeId = nodeId
    this.#hub = hub
    this.#broker = broker
    this.#log = log
    this.#history = history
    this.#continuity = new Continuity({
      deliver: (channel, message) => this.#hub.deliver(channel, message, undefined, 'given'),
      read: (channel, since, limit) => this.read(channel, since, limit),
      position: (channel) => this.position(channel),
      log
    })
    this.#presence = new PresenceAnnouncer(presence, {
      broadcast: (channel, cmd, param, except) => { this.broadcast(envelope(channel, cmd, param), except) },
      deliver: (channel, cmd, param) => { this.#hub.deliver(channel, envelope(channel, cmd, param), undefined, this.#numbering(channel)) },
      present: (channel) => this.#users(channel),
      warn: (fields, message) => { log.warn(fields, message) }
    })
  }

  get health (): BrokerHealth {
    return this.#broker.health ?? 'ok'
  }

  /**
   * Starts the broker. One that is not ready (Redis down) leaves the node degraded until it is; with `wait` > 0,
   * the start waits that long for it, then refuses (FST_SOCKET_BROKER_UNAVAILABLE) with the broker closed.
   */
  async start (wait: number): Promise<void> {
    const broker = this.#broker
    await broker.start({
      nodeId: this.#nodeId,
      deliver: (message) => this.receive(message),
      log: this.#log.child({ broker: true }),
      counts: () => this.#hub.counts(),
      presence: () => this.#hub.presenceEntries(),
      resumed: () => { this.#continuity.resumed() }
    })
    if (wait <= 0 || broker.health !== 'degraded') return
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

  /**
   * A channel message to its members on every node; returns how many local connections it was written to. On a
   * channel with history, a message for every member gets the channel's next seq from the broker, which keeps it
   * and sends it on; where the broker answers later (Redis), this node's members get it then, and the count is of
   * the members it is for.
   */
  broadcast (message: OutboundMessage, except?: string): number {
    const channel = message.channel
    const settings = this.#settings(channel)
    if (settings !== null && except === undefined) return this.#append(channel, message, settings)
    const delivered = this.#hub.deliver(channel, message, except, settings === null ? 'node' : 'given')
    this.#publish({ type: 'channel', origin: this.#nodeId, channel, message, except })
    return delivered
  }

  /** Whether a channel keeps history (its settings say so now). */
  keepsHistory (channel: string): boolean {
    return this.#settings(channel) !== null
  }

  /** Where a channel's stream stands; null when it keeps no history. */
  async position (channel: string): Promise<StreamPosition | null> {
    const settings = this.#settings(channel)
    return settings === null ? null : await (this.#broker.position as NonNullable<Broker['position']>)(channel, settings)
  }

  /** Up to `limit` kept messages of a channel (after `since`, else the newest); null when it keeps no history. */
  async read (channel: string, since: StreamPosition | undefined, limit: number): Promise<StreamPage | null> {
    const settings = this.#settings(channel)
    return settings === null ? null : await (this.#broker.read as NonNullable<Broker['read']>)(channel, since, limit, settings)
  }

  /**
   * Where a channel's stream stands, and, given the client's last position, its recovery: the messages it missed
   * (at most `maxRecover`), or why they can't all be replayed. Null when the channel keeps no history, or when the
   * broker can't say now (Redis away): the connection goes on without a position for it, as if it kept none, and
   * its client, told nothing, takes continuity as not proven. That is logged, once a minute at most.
   */
  async catchUp (channel: string, since: StreamPosition | undefined): Promise<CatchUp | null> {
    const settings = this.#settings(channel)
    if (settings === null) return null
    try {
      const catchUp = await this.#catchUp(channel, since, settings)
      const recovery = catchUp.recovery
      if (recovery !== null) this.#hub.observer.recovery(recovery.recovered ? 'recovered' : recovery.reason as string)
      return catchUp
    } catch (err) {
      this.#warnOnceAMinute('unread', { err, channel }, 'history: the stream could not be read; connections join without a position')
      return null
    }
  }

  async #catchUp (channel: string, since: StreamPosition | undefined, settings: HistorySettings): Promise<CatchUp> {
    // At least one: the first message after the client's tells whether what it missed is still kept.
    const read = since === undefined
      ? { ...await (this.#broker.position as NonNullable<Broker['position']>)(channel, settings), messages: [] }
      : await (this.#broker.read as NonNullable<Broker['read']>)(channel, since, Math.max(1, settings.maxRecover), settings)
    this.#continuity.known(channel, read)
    const page = this.#asDelivered(channel, read, since)
    const position = { epoch: page.epoch, seq: page.seq }
    if (since === undefined) return { position, recovery: null, replay: [] }
    const { recovery, replay } = recover(page, since, settings.maxRecover)
    return { position, recovery, replay }
  }

  /**
   * The stream as this node's members have it: where this node has not delivered everything the stream holds yet (a
   * gap being filled, this node's own appends not answered), what follows comes live through continuity, so the
   * position and the replay stop where its members are (or where the client is, if it saw more on another node).
   */
  #asDelivered (channel: string, page: StreamPage, since: StreamPosition | undefined): StreamPage {
    const here = this.#continuity.delivered(channel)
    if (here === null || here.epoch !== page.epoch || here.seq >= page.seq) return page
    const seq = since !== undefined && since.epoch === page.epoch ? Math.max(here.seq, Math.min(since.seq, page.seq)) : here.seq
    return { epoch: page.epoch, seq, messages: page.messages.filter((message) => (message.seq as number) <= seq) }
  }

  /** A message to one connection, wherever it is; true when it is on this node and took it. */
  sendToConnection (connectionId: string, message: DirectMessage): boolean {
    const conn = this.#hub.get(connectionId)
    if (conn !== undefined) return this.#hub.send(conn, message)
    this.#publish({ type: 'connection', origin: this.#nodeId, connectionId, message: { channel: message.channel, cmd: message.cmd, param: message.param ?? null } })
    return false
  }

  /** Adds a connection on any node to a channel; true when it is on this node (once it is subscribed). */
  async joinConnection (connectionId: string, channel: string): Promise<boolean> {
    const conn = this.#hub.get(connectionId)
    if (conn !== undefined) await this.join(conn, channel)
    else await this.#publish({ type: 'join', origin: this.#nodeId, connectionId, channel })
    return conn !== undefined
  }

  /** Removes a connection on any node from a channel; true when it is on this node. */
  async leaveConnection (connectionId: string, channel: string): Promise<boolean> {
    const conn = this.#hub.get(connectionId)
    if (conn !== undefined) await this.leave(conn, channel)
    else await this.#publish({ type: 'leave', origin: this.#nodeId, connectionId, channel })
    return conn !== undefined
  }

  /** Closes a connection on any node; true when it is on this node. */
  disconnect (connectionId: string, code: number, reason: string): boolean {
    if (this.#hub.close(connectionId, code, reason)) return true
    this.#publish({ type: 'disconnect', origin: this.#nodeId, connectionId, code, reason })
    return false
  }

  /** Closes a user's connections on every node; returns how many were on this one. */
  disconnectUser (user: string, code: number, reason: string): number {
    const closed = this.#hub.closeUser(user, code, reason)
    this.#publish({ type: 'disconnect-user', origin: this.#nodeId, user, code, reason })
    return closed
  }

  /**
   * Adds one of this node's connections to a channel: the hub's member, the node's broker subscription (the
   * channel's first local member makes it; every joiner waits for it) and presence. A failed subscription leaves
   * the channel again, announced, so nobody sits in a channel whose other nodes' messages never arrive.
   */
  async join (conn: Connection, channel: string): Promise<void> {
    const change = this.#hub.join(conn, channel)
    if (change === null) return
    const announced = this.#announce(conn, change, 'user-joined')
    if (change.firstOrLast) {
      if (this.#settings(channel) !== null) this.#continuity.track(channel)
      change.channel.subscribed = this.#subscribe(channel)
    }
    try {
      await change.channel.subscribed
    } catch (err) {
      await announced
      await this.leave(conn, channel)
      throw err
    }
    await announced
  }

  /** Removes one of this node's connections from a channel; its last local member ends the subscription. */
  async leave (conn: Connection, channel: string): Promise<void> {
    const change = this.#hub.leave(conn, channel)
    if (change === null) return
    const announced = this.#announce(conn, change, 'user-left')
    if (change.firstOrLast) {
      this.#continuity.untrack(channel)
      await this.#broker.unsubscribe(channel)
    }
    await announced
  }

  /** A message from another node: the same hub methods as the operations above. */
  receive (message: BrokerMessage): void {
    // Its own messages, echoed back, were delivered here already; news about its own presence (it was taken for
    // dead while frozen, and is back) is not for its members, who never saw anyone go.
    if (message.origin === this.#nodeId) return
    switch (message.type) {
      case 'channel':
        // With history: in seq order, each once, gaps filled (lib/continuity.ts).
        if (message.epoch !== undefined && message.message.seq !== undefined) return this.#continuity.receive(message.channel, message.message, message.epoch)
        this.#hub.deliver(message.channel, message.message, message.except, message.message.seq === undefined ? this.#numbering(message.channel) : 'given')
        return
      case 'connection': {
        const conn = this.#hub.get(message.connectionId)
        if (conn !== undefined) this.#hub.send(conn, message.message)
        return
      }
      case 'join':
      case 'leave': {
        const conn = this.#hub.get(message.connectionId)
        if (conn === undefined) return
        const change = message.type === 'join' ? this.join(conn, message.channel) : this.leave(conn, message.channel)
        change.catch((err: unknown) => conn.log.error({ err }, `remote ${message.type} failed`))
        return
      }
      case 'disconnect':
        this.#hub.close(message.connectionId, message.code, message.reason)
        return
      case 'disconnect-user':
        this.#hub.closeUser(message.user, message.code, message.reason)
        return
      case 'node-presence':
        this.#nodePresence(message.node, message.joined, message.left)
    }
  }

  /**
   * Every live node's last report (Redis: every `nodeTtl / 3`); this node alone while the broker is unreachable
   * or has no cluster view.
   */
  async status (): Promise<ClusterStatus> {
    const broker = this.#broker
    let nodes: NodeReport[] = [{ node: this.#nodeId, ...this.#hub.counts(), at: Date.now() }]
    if (broker.nodes !== undefined) {
      try {
        nodes = await broker.nodes()
      } catch (err) {
        this.#log.warn({ err }, 'cluster status: the other nodes could not be asked')
      }
    }
    const total = (key: 'connections' | 'messagesIn' | 'messagesOut'): number => nodes.reduce((sum, node) => sum + node[key], 0)
    return {
      broker: this.health,
      nodes,
      connections: total('connections'),
      messagesIn: total('messagesIn'),
      messagesOut: total('messagesOut')
    }
  }

  /** The users present in a channel on every node; this node's with a broker that has no cluster view. */
  async presence (channel: string): Promise<PresenceEntry[]> {
    const broker = this.#broker
    return broker.presence === undefined ? this.#hub.presence(channel) : await broker.presence(channel)
  }

  /** Sends what presence has gathered, then closes the broker (the app's `onClose`). */
  async stop (): Promise<void> {
    // The other nodes' members hear this node's users leave: what is gathered goes out before the broker closes.
    await this.#presence.flush()
    this.#presence.stop()
    await this.#broker.close()
  }

  /**
   * A message for every member of a channel with history: the broker numbers it, keeps it and sends it to the other
   * nodes; this node's members get it with its seq, in seq order (lib/continuity.ts). A broker that could not reach
   * its store (`notSent`: Redis away) is logged, and this node's members get the message without a seq, as they
   * get every message while the other nodes can't be reached. One that failed otherwise (a timeout) may still keep
   * it: then it comes from the stream, with its seq, and is not delivered here without one (it would be twice).
   */
  #append (channel: string, message: OutboundMessage, settings: HistorySettings): number {
    const continuity = this.#continuity
    const deliver = (position: StreamPosition): number => continuity.appended(channel, Object.assign({}, message, { seq: position.seq }), position.epoch)
    const unnumbered = (err: unknown): number => {
      continuity.appended(channel, null, '')
      if ((err as { notSent?: unknown }).notSent !== true) {
        this.#log.error({ err, channel }, 'history: the broker did not answer; the message reaches the members if it kept it')
        return 0
      }
      this.#log.error({ err, channel }, 'history: the broker could not keep the message; delivered on this node only, without a seq')
      return this.#hub.deliver(channel, message, undefined, 'given')
    }
    continuity.appending(channel)
    let appended: StreamPosition | Promise<StreamPosition>
    try {
      appended = (this.#broker.append as NonNullable<Broker['append']>)({ type: 'channel', origin: this.#nodeId, channel, message }, settings)
    } catch (err) {
      return unnumbered(err)
    }
    if (!(appended instanceof Promise)) return deliver(appended)
    appended.then(deliver, unnumbered)
    return this.#hub.channel(channel)?.members.size ?? 0
  }

  /**
   * A channel's history settings, or null. A `history` function that throws, or answers wrong settings, is logged
   * (once a minute at most) and the channel keeps no history: it runs on every broadcast, connection and delivery
   * from another node, none of which may fail for it.
   */
  #settings (channel: string): HistorySettings | null {
    try {
      return this.#history(channel)
    } catch (err) {
      this.#warnOnceAMinute('settings', { err, channel }, 'history settings refused: the channel keeps no history')
      return null
    }
  }

  /** A warning that every broadcast or connection could repeat: logged once a minute at most, per kind. */
  #warnOnceAMinute (kind: 'settings' | 'unread', fields: object, message: string): void {
    const now = Date.now()
    if (now - this.#warned[kind] < 60_000) return
    this.#warned[kind] = now
    this.#log.warn(fields, message)
  }

  /** How the hub numbers a channel's messages: by this node, or (with history) as the cluster gave them. */
  #numbering (channel: string): 'node' | 'given' {
    return this.#settings(channel) === null ? 'node' : 'given'
  }

  /** The broker subscription as a promise, whether the broker is synchronous, asynchronous, or throws. */
  async #subscribe (channel: string): Promise<void> {
    await this.#broker.subscribe(channel)
  }

  #publish (message: BrokerMessage): Promise<void> | void {
    const observer = this.#hub.observer
    const started = observer.metrics === null ? 0 : performance.now()
    try {
      const result = this.#broker.publish(message)
      if (result instanceof Promise) {
        const published = started === 0 ? result : result.then(() => { observer.published((performance.now() - started) / 1000) })
        return published.catch((err: unknown) => { this.#log.error({ err, type: message.type }, 'broker publish failed') })
      }
      if (started !== 0) observer.published((performance.now() - started) / 1000)
    } catch (err) {
      this.#log.error({ err, type: message.type }, 'broker publish failed')
    }
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
    let cluster: PresenceChange = change.userFirstOrLast ? (cmd === 'user-joined' ? 'joined' : 'left') : null
    let present: number | null = null
    if (this.#broker.setPresence !== undefined) {
      try {
        // The count is read now, before any await, so concurrent changes are recorded in the order they happened.
        const update = await this.#broker.setPresence(name, user, users.get(user) ?? 0)
        if (update !== null && typeof update === 'object') ({ change: cluster, users: present } = update)
        else cluster = update
      } catch (err) {
        conn.log.warn({ err, channel: name }, 'presence not recorded with the broker: this node decides')
      }
    }
    if (cluster === null) return
    // The cap counts every node's users where the broker knows them, else this node's.
    this.#presence.change(name, { user, connectionId: conn.id }, cluster, present ?? this.#hub.channel(name)?.users.size ?? 0)
  }

  /** The users of a channel on every node, for the presence announcer's check; null without a cluster view. */
  async #users (channel: string): Promise<ReadonlySet<string> | null> {
    const broker = this.#broker
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
      const local = this.#hub.channel(channel)
      if (local !== undefined) this.#presence.nodeChange(channel, joins, leaves, local.users.size)
    }
  }
}
