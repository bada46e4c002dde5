import { once } from 'node:events'
import { Redis, type RedisOptions } from 'ioredis'
import { errors } from '../errors.js'
import type { Broker, BrokerHealth, BrokerLogger, BrokerMessage } from './broker.js'

/** How the Redis broker is set up. */
export interface RedisBrokerOptions {
  /** A `redis://` URL, ioredis options, or a client of yours (forge-socket then closes only what it created). */
  redis: string | RedisOptions | Redis
  /** Prefix of every Redis channel the broker uses. Default `forge-socket:`. */
  prefix?: string
  /** ms a Redis command may take before it fails (a frozen Redis must not hold anything up). Default 1000. */
  commandTimeout?: number
}

/**
 * Scale-out over Redis pub/sub (ioredis). Each forge-socket channel is a Redis channel (`<prefix>ch:<name>`),
 * subscribed while this node has members in it; messages for a connection, wherever it is, go on one control
 * channel every node subscribes to. One publishing connection keeps each node's messages to a channel in order.
 *
 * Publishing never queues: while Redis is unreachable a publish fails at once with FST_SOCKET_BROKER_UNAVAILABLE,
 * and a frozen Redis fails it after `commandTimeout`. Subscriptions come back by themselves when Redis does.
 *
 * @example
 * await app.register(forgeSocket, { jwt, broker: new RedisBroker({ redis: 'redis://127.0.0.1:6379' }) })
 */
export class RedisBroker implements Broker {
  readonly #pub: Redis
  readonly #sub: Redis
  /** The clients forge-socket created (and so closes). */
  readonly #owned: Redis[] = []
  readonly #prefix: string
  readonly #control: string
  #log: BrokerLogger | null = null
  #deliver: ((message: BrokerMessage) => void) | null = null

  constructor (options: RedisBrokerOptions) {
    this.#prefix = options.prefix ?? 'forge-socket:'
    this.#control = `${this.#prefix}control`
    const commandTimeout = options.commandTimeout ?? 1000
    // Publishes fail fast while Redis is away (no offline queue); the subscriber keeps its queue, so a subscribe
    // made during an outage is sent when Redis is back (and ioredis re-subscribes the rest by itself).
    const pubOptions: RedisOptions = { lazyConnect: true, enableOfflineQueue: false, commandTimeout, maxRetriesPerRequest: 1 }
    const subOptions: RedisOptions = { lazyConnect: true, commandTimeout, maxRetriesPerRequest: null }
    if (options.redis instanceof Redis) {
      this.#pub = options.redis
      this.#sub = options.redis.duplicate(subOptions)
      this.#owned.push(this.#sub)
    } else if (typeof options.redis === 'string') {
      this.#pub = new Redis(options.redis, pubOptions)
      this.#sub = new Redis(options.redis, subOptions)
      this.#owned.push(this.#pub, this.#sub)
    } else {
      this.#pub = new Redis({ ...options.redis, ...pubOptions })
      this.#sub = new Redis({ ...options.redis, ...subOptions })
      this.#owned.push(this.#pub, this.#sub)
    }
    for (const client of this.#owned) client.on('error', this.#reportError)
    this.#sub.on('message', this.#receive)
  }

  /** `ok` while both connections are ready, `degraded` while either is not (local delivery goes on meanwhile). */
  get health (): BrokerHealth {
    return this.#pub.status === 'ready' && this.#sub.status === 'ready' ? 'ok' : 'degraded'
  }

  /**
   * Resolves once both connections are ready and the subscriber's queued subscriptions are in place (a PING
   * answered on the subscriber comes after every SUBSCRIBE sent before it): from then on, cross-node delivery works.
   *
   * @example
   * await broker.whenReady()   // after an outage
   */
  async whenReady (): Promise<void> {
    await Promise.all([this.#pub, this.#sub].map(async (client) => {
      if (client.status !== 'ready') await once(client, 'ready')
    }))
    await this.#sub.ping()
  }

  async start (_nodeId: string, deliver: (message: BrokerMessage) => void, log: BrokerLogger): Promise<void> {
    this.#deliver = deliver
    this.#log = log
    await Promise.all(this.#owned.map(async (client) => { if (client.status === 'wait') await client.connect() }))
    await this.#sub.subscribe(this.#control)
  }

  async publish (message: BrokerMessage): Promise<void> {
    if (this.#pub.status !== 'ready') throw new errors.FST_SOCKET_BROKER_UNAVAILABLE(`Redis is ${this.#pub.status}`)
    const channel = message.type === 'channel' ? this.#key(message.channel) : this.#control
    try {
      await this.#pub.publish(channel, JSON.stringify(message))
    } catch (err) {
      throw new errors.FST_SOCKET_BROKER_UNAVAILABLE((err as Error).message)
    }
  }

  async subscribe (channel: string): Promise<void> {
    const subscribing = this.#sub.subscribe(this.#key(channel))
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
      this.#sub.unsubscribe(this.#key(channel)).catch(this.#reportError)
      return
    }
    await this.#sub.unsubscribe(this.#key(channel))
  }

  async close (): Promise<void> {
    this.#deliver = null
    this.#sub.off('message', this.#receive)
    await Promise.all(this.#owned.map(async (client) => {
      client.off('error', this.#reportError)
      // quit() waits for Redis; a client that is not connected is just disconnected.
      if (client.status === 'ready') await client.quit().catch(() => client.disconnect())
      else client.disconnect()
    }))
  }

  #key (channel: string): string {
    return `${this.#prefix}ch:${channel}`
  }

  readonly #receive = (_channel: string, payload: string): void => {
    let message: BrokerMessage
    try {
      message = JSON.parse(payload) as BrokerMessage
    } catch (err) {
      return this.#log?.error({ err }, 'unreadable message from Redis')
    }
    this.#deliver?.(message)
  }

  // ioredis reconnects by itself; every attempt that fails says so here.
  readonly #reportError = (err: Error): void => {
    this.#log?.warn({ err: { message: err.message, code: (err as { code?: string }).code } }, 'redis broker: connection trouble')
  }
}
