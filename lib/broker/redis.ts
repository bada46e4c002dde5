import { errors } from '../errors.js'
import type { Broker, BrokerHealth, BrokerHost, BrokerMessage, ChannelBroadcast, CommandRecord, Departure, HistorySettings, NodeReport, PresenceEntry, PresenceUpdate, StreamPage, StreamPosition } from './broker.js'
import { HEARTBEAT, REAP, SET_PRESENCE } from './redis-scripts.js'
import { openClients, ready, type RedisClient, type RedisConnectionOptions } from './redis-client.js'
import { CommandRecords } from './redis-dedupe.js'
import { appended, RedisStreams } from './redis-streams.js'

/** How the Redis broker is set up. */
export interface RedisBrokerOptions {
  /**
   * A `redis://` URL or ioredis options (both need ioredis installed: `npm install ioredis`), or a client of yours,
   * such as @fastify/redis's `app.redis` (forge-socket duplicates it and closes only what it created).
   */
  redis: string | RedisConnectionOptions | RedisClient
  /**
   * Prefix of every Redis key and channel the broker uses. Default `forge-socket:`. An ioredis `keyPrefix` (of
   * your client or options) goes in front of it: `app:` makes `app:forge-socket:`.
   */
  prefix?: string
  /** ms a Redis command may take before it fails (a frozen Redis must not hold anything up). Default 1000. */
  commandTimeout?: number
  /**
   * ms after a node's last report that it counts as dead: the next node to look removes its members from presence
   * and tells their channels `user-left`. Each node reports every `nodeTtl / 3`. Default 10000.
   */
  nodeTtl?: number
}

/** A removed node is remembered this long, so that if it was alive after all it announces its users again. */
const REAPED_MEMORY = 24 * 60 * 60 * 1000

/** The pub connection with the presence and node scripts defined on it (redis-streams.ts and redis-dedupe.ts define theirs). */
interface ScriptedRedis extends RedisClient {
  forgeSetPresence: (held: string, present: string, field: string, user: string, connections: number) => Promise<[number, number]>
  forgeHeartbeat: (nodeKey: string, nodes: string, reaped: string, id: string, report: string, ttl: number) => Promise<[number, number]>
  forgeReap: (nodes: string, prefix: string, remember: number) => Promise<string[]>
}

/**
 * Scale-out over Redis (ioredis 5 or 6). Each forge-socket channel is a Redis pub/sub channel (`<prefix>ch:<name>`),
 * subscribed while this node has members in it; messages for a connection or a user, wherever they are, go on one
 * control channel every node subscribes to. One publishing connection keeps each node's messages in order.
 *
 * Presence and node counts live in Redis hashes, changed by Lua scripts (one atomic step each). Every node reports
 * itself every `nodeTtl / 3`; a node whose report expired is removed by the next node to look, and its users'
 * channels are told `user-left`. A node that finds its report gone (Redis restarted, or it was removed while
 * frozen) writes its presence again.
 *
 * Channel history is a Redis stream per channel (`<prefix>hs:{<name>}`) and its position, a hash
 * (`<prefix>hm:{<name>}`: epoch, newest seq, and the run_id of the Redis that began the epoch). One script gives a
 * message its seq, keeps it and publishes it, so every node sees a channel's messages in one order. A Redis that
 * restarted, reloaded an older snapshot or was promoted from a replica has another run_id: the streams it holds
 * begin again there, with new epochs, and never go on from a position lower than one a client was told.
 *
 * Publishing never queues: while Redis is unreachable a publish fails at once with FST_SOCKET_BROKER_UNAVAILABLE,
 * and a frozen Redis fails it after `commandTimeout`. Subscriptions come back by themselves when Redis does. A node
 * that starts while Redis is down starts degraded, and joins the others when Redis answers.
 *
 * @example
 * await app.register(forgeSocket, { jwt, broker: new RedisBroker({ redis: 'redis://127.0.0.1:6379' }) })
 */
export class RedisBroker implements Broker {
  readonly #pub: ScriptedRedis
  readonly #sub: RedisClient
  readonly #prefix: string
  readonly #control: string
  readonly #nodeTtl: number
  #host: BrokerHost | null = null
  #timer: NodeJS.Timeout | null = null
  #ticking: Promise<void> | null = null
  /** A presence change failed: Redis may hold an old count until the next report writes them all again. */
  #stale = false
  /** This node has reported itself once: until then, the others have never been told of its users. */
  #reported = false
  /**
   * Redis lost this node's entry (a restart without its data) and the rewrite after it has not yet succeeded: a
   * retry must not take the half-written presence for changes the others missed, and announces nothing either.
   */
  #lost = false
  /**
   * An outage is under way and was logged: ioredis fails again on every retry, and that is said once. True until
   * the start has connected (a start without Redis logs one warning of its own).
   */
  #away = true
  /** The last trouble ioredis reported, logged or not: what the start's warning names. */
  #trouble: Error | null = null
  /** Aborted by close(): whoever waits for readiness stops waiting. */
  readonly #closed = new AbortController()
  /** The control channel's subscription once sent (ioredis renews it after an outage); null again if it failed. */
  #controlSubscribed: Promise<unknown> | null = null
  readonly #streams: RedisStreams
  readonly #records: CommandRecords

  constructor (options: RedisBrokerOptions) {
    this.#nodeTtl = options.nodeTtl ?? 10_000
    const commandTimeout = options.commandTimeout ?? 1000
    for (const [name, value, min] of [['nodeTtl', this.#nodeTtl, 30], ['commandTimeout', commandTimeout, 1]] as const) {
      if (!Number.isInteger(value) || value < min) throw new errors.FST_SOCKET_INVALID_OPTIONS(`RedisBroker ${name} must be an integer of at least ${min} ms (got ${value})`)
    }
    // Publishes fail fast while Redis is away (no offline queue); the subscriber keeps its queue, so a subscribe
    // made during an outage is sent when Redis is back (and ioredis re-subscribes the rest by itself). A client of
    // the user's is only duplicated: its own settings (an offline queue, say) must not change how the broker fails.
    // ioredis's keyPrefix is off (it is in #prefix): the scripts compute keys, which ioredis would not prefix.
    // disconnectTimeout: a client closed while ioredis waits to retry is left with a timer that long (2 s by
    // default), which would hold up the exit of a process that gave up on Redis.
    const common = { lazyConnect: true, commandTimeout, keyPrefix: '', disconnectTimeout: 0 }
    const pubOptions = { ...common, enableOfflineQueue: false, maxRetriesPerRequest: 1 }
    const subOptions = { ...common, maxRetriesPerRequest: null }
    const { pub, sub, keyPrefix } = openClients(options.redis, pubOptions, subOptions)
    this.#pub = pub as ScriptedRedis
    this.#sub = sub
    this.#prefix = `${keyPrefix}${options.prefix ?? 'forge-socket:'}`
    this.#control = `${this.#prefix}control`
    this.#pub.defineCommand('forgeSetPresence', { numberOfKeys: 2, lua: SET_PRESENCE })
    this.#pub.defineCommand('forgeHeartbeat', { numberOfKeys: 3, lua: HEARTBEAT })
    this.#pub.defineCommand('forgeReap', { numberOfKeys: 1, lua: REAP })
    const run = <T>(command: () => Promise<T>): Promise<T> => this.#command(command)
    this.#streams = new RedisStreams(this.#pub, this.#prefix, run)
    this.#records = new CommandRecords(this.#pub, this.#prefix, run)
    for (const client of [this.#pub, this.#sub]) client.on('error', this.#reportError)
    this.#sub.on('message', this.#receive)
    // Back after an outage: report at once (and write presence again if Redis lost it).
    this.#pub.on('ready', () => { if (this.#host !== null) void this.#tick() })
  }

  /** `ok` while both connections are ready, `degraded` while either is not (local delivery goes on meanwhile). */
  get health (): BrokerHealth {
    return this.#pub.status === 'ready' && this.#sub.status === 'ready' ? 'ok' : 'degraded'
  }

  /**
   * Resolves once both connections are ready, the subscriber's queued subscriptions are in place (a PING answered
   * on the subscriber comes after every SUBSCRIBE sent before it) and this node has reported itself: from then on,
   * cross-node delivery and presence work. However long Redis takes; rejects with FST_SOCKET_BROKER_UNAVAILABLE when
   * the broker is closed first.
   *
   * @example
   * await broker.whenReady()   // after an outage
   */
  async whenReady (): Promise<void> {
    await Promise.all([this.#pub, this.#sub].map((client) => ready(client, this.#closed.signal)))
    // Ahead of the PING, if the subscriber's 'ready' (after a start without Redis) has not been handled yet.
    void this.#subscribeControl()
    await this.#sub.ping()
    // A report begun while Redis was away may have failed: make one that starts now.
    await this.#ticking
    await this.#tick()
  }

  /**
   * Connects, subscribes the control channel and reports this node. When Redis does not answer the first attempt
   * (a node restarted during an outage), ioredis's connect() fails but ioredis goes on trying by its retryStrategy:
   * the start resolves all the same, degraded, with one warning. The subscriber's first 'ready' then subscribes the
   * control channel, and the publisher's reports this node and writes its presence (#tick).
   */
  async start (host: BrokerHost): Promise<void> {
    this.#host = host
    await Promise.all([this.#pub, this.#sub].map(async (client) => {
      // A failed attempt was told to the 'error' listener already (connect() only says "Connection is closed.").
      if (client.status === 'wait') await client.connect().catch(() => {})
    }))
    this.#timer = setInterval(() => { void this.#tick() }, Math.max(1, Math.floor(this.#nodeTtl / 3))).unref()
    // On every ready, not once: a subscription that failed is sent again when the subscriber next connects (one
    // that succeeded is remembered, and ioredis renews it itself).
    this.#sub.on('ready', this.#subscribeControl)
    this.#sub.on('ready', this.#resubscribed)
    if (this.health === 'ok') {
      this.#away = false
      await this.#subscribeControl()
      await this.#tick()
      return
    }
    // Not queued while Redis is away: a queued command would keep its timeout running after a close.
    if (this.#sub.status === 'ready') void this.#subscribeControl()
    const cause = this.#trouble === null ? '' : ` (${this.#trouble.message})`
    host.log.warn({ err: new errors.FST_SOCKET_BROKER_UNAVAILABLE(`Redis is not ready at start${cause}`) },
      'redis broker: local delivery only until Redis answers')
  }

  async publish (message: BrokerMessage): Promise<void> {
    const channel = message.type === 'channel' ? this.#key(`ch:${message.channel}`) : this.#control
    await this.#command(() => this.#pub.publish(channel, JSON.stringify(message)))
  }

  async subscribe (channel: string): Promise<void> {
    const subscribing = this.#sub.subscribe(this.#key(`ch:${channel}`))
    // While Redis is away the subscription waits in the subscriber's queue: the join goes on without it (local
    // members are served) and the subscription takes effect when Redis is back.
    if (this.#sub.status !== 'ready') {
      subscribing.catch(this.#reportError)
      return
    }
    await subscribing
  }

  async unsubscribe (channel: string): Promise<void> {
    if (this.#sub.status !== 'ready') {
      this.#sub.unsubscribe(this.#key(`ch:${channel}`)).catch(this.#reportError)
      return
    }
    await this.#sub.unsubscribe(this.#key(`ch:${channel}`))
  }

  async setPresence (channel: string, user: string, connections: number): Promise<PresenceUpdate> {
    const node = this.#host?.nodeId ?? ''
    try {
      const [change, users] = await this.#command(() => this.#pub.forgeSetPresence(
        this.#key(`node-presence:${node}`), this.#key(`presence:${channel}`), `${channel} ${user}`, user, connections))
      return { change: change === 1 ? 'joined' : change === -1 ? 'left' : null, users }
    } catch (err) {
      this.#stale = true
      throw err
    }
  }

  async presence (channel: string): Promise<PresenceEntry[]> {
    const users = await this.#command(() => this.#pub.hgetall(this.#key(`presence:${channel}`)))
    return Object.entries(users).map(([user, connections]) => ({ user, connections: Number(connections) }))
  }

  async nodes (): Promise<NodeReport[]> {
    const self = this.#host
    const others = (await this.#command(() => this.#pub.smembers(this.#key('nodes')))).filter((id) => id !== self?.nodeId)
    const reports = others.length === 0 ? [] : await this.#command(() => this.#pub.mget(others.map((id) => this.#key(`node:${id}`))))
    const nodes: NodeReport[] = self === null ? [] : [{ node: self.nodeId, ...self.counts(), at: Date.now() }]
    // A report that expired since SMEMBERS belongs to a node that is gone.
    for (const report of reports) if (report !== null) nodes.push(JSON.parse(report) as NodeReport)
    return nodes
  }

  /**
   * Gives the message its channel's next seq, keeps it and publishes it to the other nodes with that seq and the
   * stream's epoch: one script, so the order is the same on every node. Resolves with the position it gave.
   *
   * @example
   * const { epoch, seq } = await broker.append({ type: 'channel', origin: nodeId, channel, message }, settings)
   */
  append (message: ChannelBroadcast, settings: HistorySettings): Promise<StreamPosition> {
    return this.#streams.append(message, settings)
  }

  /**
   * Where the channel's stream stands. A stream that does not exist yet begins here, at seq 0, with a new epoch
   * that the next append goes on in.
   *
   * @example
   * const { epoch, seq } = await broker.position('room-lobby', settings)
   */
  async position (channel: string, settings: HistorySettings): Promise<StreamPosition> {
    const { epoch, seq } = await this.read(channel, undefined, 0, settings)
    return { epoch, seq }
  }

  /**
   * Up to `limit` kept messages of the channel, oldest first: those after `since` when it is of the stream's epoch,
   * else the newest. `limit` 0 reads the position alone.
   *
   * @example
   * const page = await broker.read('room-lobby', { epoch, seq: 41 }, 100, settings)   // from seq 42
   */
  read (channel: string, since: StreamPosition | undefined, limit: number, settings: HistorySettings): Promise<StreamPage> {
    return this.#streams.read(channel, since, limit, settings)
  }

  /** The record of handled client commands (Broker): one key per `(scope, id)`, `<prefix>cmd:{<scope>}:<id>`. */
  claimCommand (scope: string, id: string, lease: number): Promise<CommandRecord | null> {
    return this.#records.claim(this.#host?.nodeId ?? '', scope, id, lease)
  }

  commandRecord (scope: string, id: string): Promise<CommandRecord | null> {
    return this.#records.read(scope, id)
  }

  finishCommand (scope: string, id: string, answer: string, window: number): Promise<void> {
    return this.#records.finish(scope, id, answer, window)
  }

  releaseCommand (scope: string, id: string): Promise<void> {
    return this.#records.release(this.#host?.nodeId ?? '', scope, id)
  }

  async close (): Promise<void> {
    this.#closed.abort()
    if (this.#timer !== null) clearInterval(this.#timer)
    this.#timer = null
    await this.#ticking
    // A clean exit: this node's members have left already; take its report down and clear whatever is left of it
    // (a presence change that failed during an outage) the way a dead node's is cleared.
    const host = this.#host
    if (host !== null && this.#pub.status === 'ready') {
      await this.#pub.del(this.#key(`node:${host.nodeId}`)).then(() => this.#reap()).catch(this.#reportError)
    }
    this.#host = null
    this.#sub.off('message', this.#receive)
    this.#sub.off('ready', this.#subscribeControl)
    this.#sub.off('ready', this.#resubscribed)
    await Promise.all([this.#pub, this.#sub].map(async (client) => {
      client.off('error', this.#reportError)
      // quit() waits for Redis; a client that is not connected is just disconnected.
      if (client.status === 'ready') await client.quit().catch(() => client.disconnect())
      else client.disconnect()
    }))
  }

  /** Subscribes the channel every node hears (messages for a connection or a user, wherever they are), until it succeeds. */
  readonly #subscribeControl = (): Promise<unknown> =>
    (this.#controlSubscribed ??= this.#sub.subscribe(this.#control).catch((err: Error) => {
      // Tried again with the next ready: a subscription that failed (a timeout, an ACL) must not be taken for done.
      this.#controlSubscribed = null
      this.#reportError(err)
    }))

  /**
   * The subscriber is connected (again, after an outage or a killed connection): pub/sub lost whatever was published
   * meanwhile. (At start, no channel has members yet, and this costs nothing.) Once ioredis's renewed subscriptions are in place (it sends them right after 'ready'; a PING answered
   * after them says they are), the cluster checks each channel with history against its stream.
   */
  readonly #resubscribed = (): void => {
    setImmediate(() => {
      this.#sub.ping().then(() => this.#host?.resumed?.(), this.#reportError)
    })
  }

  /** A prefixed key or channel name. */
  #key (name: string): string {
    return `${this.#prefix}${name}`
  }

  /** Runs a command on the pub connection; while Redis is away it fails at once, and every failure is coded. */
  async #command<T> (run: () => Promise<T>): Promise<T> {
    if (this.#pub.status !== 'ready') throw unsent(new errors.FST_SOCKET_BROKER_UNAVAILABLE(`Redis is ${this.#pub.status}`))
    try {
      return await run()
    } catch (err) {
      const coded = new errors.FST_SOCKET_BROKER_UNAVAILABLE((err as Error).message)
      // ioredis refuses at once, without an offline queue, what it can't write: that was never sent either. A
      // timeout was sent, and Redis may still run it.
      return Promise.reject(/enableOfflineQueue/.test((err as Error).message) ? unsent(coded) : coded)
    }
  }

  /**
   * Reports this node, then removes nodes whose reports expired. One at a time; failures are logged (once an
   * outage: a report that gets through with both connections up ends it).
   */
  #tick (): Promise<void> {
    this.#ticking ??= this.#report().then(() => this.#reap())
      .then(() => {
        if (this.health !== 'ok' || !this.#away) return
        this.#away = false
        // Said once per outage, as its start was: at start too, so a log shows when a node joined the cluster.
        this.#host?.log.info?.({}, 'redis broker: connected to the other nodes')
      }, this.#reportError)
      .finally(() => { this.#ticking = null })
    return this.#ticking
  }

  async #report (): Promise<void> {
    const host = this.#host
    if (host === null) return
    const report: NodeReport = { node: host.nodeId, ...host.counts(), at: Date.now() }
    const [added, reaped] = await this.#command(() => this.#pub.forgeHeartbeat(
      this.#key(`node:${host.nodeId}`), this.#key('nodes'), this.#key(`reaped:${host.nodeId}`), host.nodeId, JSON.stringify(report), this.#nodeTtl))
    const first = !this.#reported
    this.#reported = true
    const stale = this.#stale
    if (added === 0 && !stale) return
    this.#stale = false
    if (added === 1 && reaped !== 1 && !first) this.#lost = true
    try {
      await this.#rewritePresence(host, reaped === 1 || (stale && added === 0 && !this.#lost) || first)
      this.#lost = false
    } catch (err) {
      this.#stale = true
      throw err
    }
  }

  /**
   * Makes this node's presence in Redis match its members again: after Redis lost it, after this node was removed
   * as dead, or after a presence change failed (`#stale`). The changes are announced to the other nodes (not to
   * this node's own members, who saw them happen) when they had been told otherwise: this node's users were
   * reported gone, changes made during an outage never reached them, or the node started while Redis was away
   * (its first report). After Redis merely lost its data, every user would look new, and nothing is announced.
   */
  async #rewritePresence (host: BrokerHost, announce: boolean): Promise<void> {
    const heldKey = this.#key(`node-presence:${host.nodeId}`)
    const held = await this.#command(() => this.#pub.hgetall(heldKey))
    // Taken after the read, so a change made meanwhile is in it; later changes are sent after these.
    const entries = [...host.presence()]
    const present = new Set(entries.map(([channel, user]) => `${channel} ${user}`))
    for (const field of Object.keys(held)) {
      if (present.has(field)) continue
      const space = field.indexOf(' ')
      entries.push([field.slice(0, space), field.slice(space + 1), 0])
    }
    const changes = await Promise.all(entries.map(async ([channel, user, connections]) => (await this.setPresence(channel, user, connections)).change))
    const joined: Departure[] = []
    const left: Departure[] = []
    changes.forEach((change, i) => {
      const entry = entries[i]
      if (change === null || entry === undefined) return
      ;(change === 'joined' ? joined : left).push({ channel: entry[0], user: entry[1] })
    })
    if (announce && joined.length + left.length > 0) {
      await this.publish({ type: 'node-presence', origin: host.nodeId, node: host.nodeId, joined, left })
    }
  }

  /** Removes the nodes whose reports expired; their users' channels, on every node, are told who left. */
  async #reap (): Promise<void> {
    const host = this.#host
    if (host === null) return
    const flat = await this.#command(() => this.#pub.forgeReap(this.#key('nodes'), this.#prefix, REAPED_MEMORY))
    const byNode = new Map<string, Departure[]>()
    for (let i = 0; i + 2 < flat.length; i += 3) {
      const node = flat[i] as string
      const left = byNode.get(node) ?? []
      left.push({ channel: flat[i + 1] as string, user: flat[i + 2] as string })
      byNode.set(node, left)
    }
    // Sent as if from the dead node: every node, this one included, gets it once, through Redis.
    for (const [node, left] of byNode) await this.publish({ type: 'node-presence', origin: node, node, joined: [], left })
  }

  readonly #receive = (_channel: string, payload: string): void => {
    let message: BrokerMessage
    try {
      message = payload.startsWith('h:') ? appended(payload) : JSON.parse(payload) as BrokerMessage
    } catch (err) {
      return this.#host?.log.error({ err }, 'unreadable message from Redis')
    }
    this.#host?.deliver(message)
  }

  // ioredis reconnects by itself, and every attempt that fails says so here: logged once an outage.
  readonly #reportError = (err: Error): void => {
    this.#trouble = err
    if (this.#away) return
    this.#away = true
    this.#host?.log.warn({ err: { message: err.message, code: (err as { code?: string }).code } }, 'redis broker: connection trouble')
  }
}

/** Marks a command's error as one that never reached Redis (`notSent`: an append or a claim of it kept nothing). */
function unsent<E extends Error> (err: E): E & { notSent: true } {
  return Object.assign(err, { notSent: true as const })
}
