import type { EventEmitter } from 'node:events'
import { createRequire } from 'node:module'
import { sep } from 'node:path'
import { errors } from '../errors.js'

// ioredis is an optional peer dependency: nothing here imports it, and the published types never name it. A client
// of the app's (ioredis 5 or 6, whichever copy the app has, @fastify/redis's `app.redis` among them) is recognised
// by what it can do; ioredis itself is loaded only when the broker has to make clients from a URL or options.

/**
 * ioredis connection options, handed to ioredis as they are (its `RedisOptions`; see
 * https://redis.github.io/ioredis/). The common ones are listed; any other ioredis option may be given too
 * (`retryStrategy`, `enableTLSForSentinelMode`, …). Typed loosely, so that forge-socket's types need no ioredis.
 */
export interface RedisConnectionSettings {
  host?: string
  port?: number
  /** A Unix socket instead of host and port. */
  path?: string
  username?: string
  password?: string
  db?: number
  /** Node's `tls.connect` options; `{}` for TLS with the defaults. */
  tls?: object
  /** Put in front of the broker's own `prefix` (its Lua scripts name the keys they compute, so ioredis must not). */
  keyPrefix?: string
  /** Sentinel: the sentinels, and `name`, the master's name. */
  sentinels?: ReadonlyArray<{ host?: string, port?: number }>
  name?: string
  connectTimeout?: number
}

/** What the `broker` option and `RedisBroker` take as ioredis options: the settings above, or any other ioredis option. */
export type RedisConnectionOptions = RedisConnectionSettings | Readonly<Record<string, unknown>>

/**
 * A Redis client as forge-socket uses it: an ioredis `Redis` (5 or 6) fits, and so does @fastify/redis's
 * `app.redis`. forge-socket only calls `duplicate()` on yours and works on the copies, which it closes; yours is
 * left as it is. A Redis Cluster client (`isCluster: true`) is refused: the broker's scripts compute their keys.
 *
 * @example
 * await app.register(fastifyRedis, { url: process.env.REDIS_URL })
 * await app.register(forgeSocket, { jwt, broker: app.redis })
 */
export interface RedisClient extends EventEmitter {
  /** ioredis's connection state: `wait` (lazy, not connected yet), `connecting`, `ready`, `reconnecting`, `end`, … */
  readonly status: string
  readonly isCluster?: boolean
  /** The options the client was made with; its `keyPrefix` is put in front of the broker's `prefix`. */
  readonly options?: { readonly keyPrefix?: string }
  duplicate (override?: RedisConnectionOptions): RedisClient
  defineCommand (name: string, definition: { lua: string, numberOfKeys?: number }): void
  connect (): Promise<void>
  quit (): Promise<unknown>
  disconnect (): void
  publish (channel: string, message: string): Promise<unknown>
  subscribe (channel: string): Promise<unknown>
  unsubscribe (channel: string): Promise<unknown>
  ping (): Promise<unknown>
  del (key: string): Promise<unknown>
  hgetall (key: string): Promise<Record<string, string>>
  smembers (key: string): Promise<string[]>
  mget (keys: string[]): Promise<Array<string | null>>
}

/** How the broker runs a command of its own on its publishing connection: at once failing while Redis is away, coded. */
export type RunCommand = <T>(run: () => Promise<T>) => Promise<T>

type Method = { [K in keyof RedisClient]-?: RedisClient[K] extends (...args: never[]) => unknown ? K : never }[keyof RedisClient]

/** The methods a client must have (`satisfies` keeps this list and the interface in step). */
const METHODS = Object.keys({
  duplicate: true, defineCommand: true, connect: true, quit: true, disconnect: true, publish: true, subscribe: true,
  unsubscribe: true, ping: true, del: true, hgetall: true, smembers: true, mget: true, on: true, off: true, once: true
} satisfies Record<Exclude<Method, keyof EventEmitter> | 'on' | 'off' | 'once', true>)

/** A Broker has these too (one may be an EventEmitter): having them does not make a value look like a client. */
const BROKER_LIKE = new Set(['publish', 'subscribe', 'unsubscribe', 'on', 'off', 'once'])

/** A value that means to be a Redis client: it has `status` or a method only a client has. */
export function looksLikeRedisClient (value: object): boolean {
  return 'status' in value || METHODS.some((name) => !BROKER_LIKE.has(name) && name in value)
}

/** Refuses what is not a usable client, naming what it lacks (`where`: how the message names the value). */
export function checkRedisClient (value: object, where = 'the Redis client'): asserts value is RedisClient {
  const candidate = value as Record<string, unknown>
  const missing = METHODS.filter((name) => typeof candidate[name] !== 'function')
  if (typeof candidate.status !== 'string') missing.unshift('status')
  if (missing.length > 0) {
    throw new errors.FST_SOCKET_INVALID_OPTIONS(`${where} has no ${missing.join(', ')} (an ioredis 5 or 6 client is needed)`)
  }
  if (candidate.isCluster === true) {
    throw new errors.FST_SOCKET_INVALID_OPTIONS(`${where} is a Redis Cluster client, which is not supported (the broker's scripts compute their keys): give a client of one Redis`)
  }
}

/** ioredis's `Redis` class, as the broker uses it. */
export type RedisConstructor = new (...args: [url: string, options: RedisConnectionOptions] | [options: RedisConnectionOptions]) => RedisClient

/**
 * Loads the app's ioredis, synchronously (it is CommonJS), when a broker is made from a URL or options. It is
 * looked for beside forge-socket, where a package manager puts its peer dependencies (the app's own copy), then
 * from the app's working directory (forge-socket linked, or installed apart from the app). Without it:
 * FST_SOCKET_INVALID_OPTIONS saying `npm install ioredis`.
 */
export function loadRedis (from: readonly string[] = [import.meta.url, `${process.cwd()}${sep}`]): RedisConstructor {
  let failure: unknown
  for (const base of from) {
    try {
      const ioredis = createRequire(base)('ioredis') as { Redis?: unknown }
      if (typeof ioredis.Redis !== 'function') throw new Error(`the ioredis found beside ${base} has no Redis class`)
      return ioredis.Redis as RedisConstructor
    } catch (err) {
      failure ??= err
    }
  }
  throw new errors.FST_SOCKET_INVALID_OPTIONS(
    `a Redis broker made from a URL or options needs ioredis (5 or 6), an optional peer dependency: npm install ioredis (${String(failure).split('\n')[0]})`,
    { cause: failure })
}

/**
 * The broker's two connections, made from its `redis` option with `pubOptions` and `subOptions`: copies of the
 * app's client (`duplicate`: no ioredis needed here), or new clients of the app's ioredis for a URL or options.
 * `keyPrefix` is the ioredis key prefix the client or options carry ('' for none).
 */
export function openClients (redis: string | RedisConnectionOptions | RedisClient, pubOptions: RedisConnectionOptions, subOptions: RedisConnectionOptions): { pub: RedisClient, sub: RedisClient, keyPrefix: string } {
  if (typeof redis === 'string') {
    const Redis = loadRedis()
    return { pub: new Redis(redis, pubOptions), sub: new Redis(redis, subOptions), keyPrefix: '' }
  }
  if (looksLikeRedisClient(redis)) {
    checkRedisClient(redis)
    return { pub: redis.duplicate(pubOptions), sub: redis.duplicate(subOptions), keyPrefix: String(redis.options?.keyPrefix ?? '') }
  }
  const Redis = loadRedis()
  const settings = redis as RedisConnectionSettings
  return { pub: new Redis({ ...redis, ...pubOptions }), sub: new Redis({ ...redis, ...subOptions }), keyPrefix: String(settings.keyPrefix ?? '') }
}

/**
 * Resolves once `client` is ready, however many attempts ioredis needs (their errors are no failure here, unlike
 * with `events.once`); rejects if `signal` aborts first.
 */
export function ready (client: RedisClient, signal: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    const done = (): void => {
      signal.removeEventListener('abort', abort)
      resolve()
    }
    const abort = (): void => {
      client.off('ready', done)
      reject(new errors.FST_SOCKET_BROKER_UNAVAILABLE('the broker was closed'))
    }
    if (signal.aborted) return abort()
    if (client.status === 'ready') return resolve()
    client.once('ready', done)
    signal.addEventListener('abort', abort, { once: true })
  })
}
