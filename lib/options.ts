import { Compile } from 'typebox/compile'
import { Value } from 'typebox/value'
import type { Static } from 'typebox'
import { DedupeSchema, HistorySchema, OptionsSchema, PresenceSchema, type OptionsData } from '../schemas/options.js'
import { errors, firstError } from './errors.js'
import { resolveJwtOptions, type JwtOptions, type TokenPayload } from './jwt.js'
import { BROKER_METHODS, isBroker, type Broker, type HistorySettings } from './broker/broker.js'
import { MemoryBroker } from './broker/memory.js'
import { RedisBroker } from './broker/redis.js'
import { checkRedisClient, looksLikeRedisClient, type RedisClient, type RedisConnectionOptions } from './broker/redis-client.js'

export type { TokenPayload } from './jwt.js'

/**
 * The profile a connection carries. Users add their own fields by merging into this interface:
 *
 * @example
 * declare module 'fastify-forge-socket' {
 *   interface ForgeSocketProfile { name: string, rooms: string[] }
 * }
 */
export interface ForgeSocketProfile {
  id: string
}

export type Profile = ForgeSocketProfile

/** Maps verified claims to the connection's profile; throw to refuse the token (401). */
export type ProfileMapper = (payload: TokenPayload) => Profile | Promise<Profile>

/** What users pass to `app.register(forgeSocket, options)`. Every field is optional; defaults in docs/server.md. */
export interface ForgeSocketOptions {
  /**
   * Registers @fastify/jwt with these options (`secret`, and `sign`, `verify`, `decode`, `trusted`, `formatUser`,
   * `decoratorName`). Leave it out when the app registered @fastify/jwt itself (or the namespace `auth.namespace`):
   * given beside it, it is refused at register, as it would not apply.
   */
  jwt?: JwtOptions
  auth?: {
    /** Algorithm allow-list enforced on every token. Default `['HS256']`. */
    algorithms?: OptionsData['auth']['algorithms']
    /** Cookie name to read the token from (needs @fastify/cookie). Default `false` (off). */
    cookie?: string | false
    /** Accept `?token=` (it is stripped from the URL before anything logs it). Default `false`. */
    query?: boolean
    /** Claims → profile. Default: the claims with `id` set from `sub` (a token without `sub` is refused). */
    profile?: ProfileMapper
    /** ms after `exp` before an unrefreshed connection is closed with 4001. Default 5000. */
    expiryGrace?: number
    /**
     * The @fastify/jwt namespace to verify with (`request[<namespace>JwtVerify]`; a renamed verify method is refused).
     * Default: none (`request.jwtVerify`).
     */
    namespace?: string
  }
  /**
   * `'memory'` (default), a `redis://` URL or ioredis options (both need `npm install ioredis`), a client of your
   * ioredis 5 or 6 (@fastify/redis's `app.redis`: duplicated, never closed by forge-socket), or a Broker instance.
   */
  broker?: 'memory' | string | RedisConnectionOptions | RedisClient | Broker
  /**
   * ms that the start (`app.ready()`, `listen`) waits for a broker that is not ready (Redis down), then refuses with
   * FST_SOCKET_BROKER_UNAVAILABLE. Default `0`: don't wait; the node starts degraded and joins the others when the
   * broker is ready.
   */
  waitForBroker?: number
  maxPayload?: number
  /** Frames (fragments) one message may come in; one more closes the connection with 1008. Default 128. */
  maxFragments?: number
  heartbeat?: { interval?: number, timeout?: number }
  sendBufferLimit?: number
  maxChannelsPerConnection?: number
  /** Inbound frames per connection: a token bucket. Default 100/s, burst 200. */
  rateLimit?: { perSecond?: number, burst?: number }
  /** Malformed frames tolerated per window (ms) before 1008. Default 20 per 10000 ms. */
  badFrames?: { max?: number, window?: number }
  /**
   * Open connections per client IP and per user, and new connections a second per IP and per user (a token bucket
   * of `burst`); 0 = no limit (the default). Over a limit, upgrades are refused with 429 and `Retry-After`.
   */
  connectionLimits?: { perIp?: number, perUser?: number, ratePerIp?: number, ratePerUser?: number, burst?: number }
  /** `subscribe` / `unsubscribe` per connection. Default 10/s, burst 128; over it, FST_SOCKET_LIMIT_EXCEEDED. */
  subscribeRate?: { perSecond?: number, burst?: number }
  maxDepth?: number
  origins?: string[]
  shutdownTimeout?: number
  /**
   * Presence announcements. `true` (default): `user-joined` / `user-left`, gathered per channel over 100 ms, none in
   * channels of more than 1,000 users. `false`: none (`presence(channel)` still answers).
   *
   * @example
   * presence: { announce: (channel) => channel.startsWith('chat-') ? 'diff' : 'none', interval: 250, maxUsers: 200 }
   */
  presence?: boolean | PresenceOptions
  /**
   * Channel history: every message all of a channel's members get is numbered (`seq`, the same on every node) and
   * the last `size` are kept, for the `history` command (docs/protocol.md). `false` (default): none. The settings
   * apply to every channel; a function picks them per channel (`false` for none). Needs the memory broker for now.
   *
   * @example
   * history: (channel) => channel.startsWith('chat-') ? { size: 100, ttl: 300_000 } : false
   */
  history?: false | HistoryOptions | ((channel: string) => HistoryOptions | false)
  /**
   * Dedupe of client messages that carry an `id` (the client sends one with every request and send): each user's
   * id is handled once within `window` ms, on any node, and a repeat gets the first answer with `dup: true`.
   * Default on (`{}`); `false`: every message runs. docs/server.md#message-dedupe.
   *
   * @example
   * dedupe: { window: 300_000, lease: 60_000 }
   */
  dedupe?: false | DedupeOptions
  /**
   * Prometheus metrics, with prom-client (installed by the app): `true` registers them on prom-client's default
   * registry, or give the registry and the names' prefix (default `forge_socket_`). Off by default.
   * docs/observability.md.
   *
   * @example
   * metrics: { registry: new Registry() }
   */
  metrics?: boolean | MetricsOptions
  /** Decides client `subscribe` requests. Default: deny every one. */
  authorizeChannel?: (profile: Profile | null, channel: string) => boolean | Promise<boolean>
}

/** How a channel's presence changes are announced: one message per user, one `presence-diff`, or none. */
export type PresenceMode = 'events' | 'diff' | 'none'

export interface PresenceOptions {
  /** A mode for every channel, or a function that picks one per channel. Default `'events'`. */
  announce?: PresenceMode | ((channel: string) => PresenceMode)
  /** ms over which a channel's changes are gathered into one announcement; 0 = each at once. Default 100. */
  interval?: number
  /** Users in a channel above which nothing is announced; 0 = no cap. Default 1000. */
  maxUsers?: number
}

/**
 * A channel's history settings; defaults: `size` 100, `ttl` 120000 ms, `metaTtl` 10 × `ttl`, `maxRecover` 1000.
 */
export interface HistoryOptions {
  /** Messages kept (1 to 10,000). */
  size?: number
  /** ms after the channel's last message before its messages are forgotten. */
  ttl?: number
  /** ms after the channel's last message before its position (epoch and seq) is forgotten; at least `ttl`. */
  metaTtl?: number
  /** The most messages one recovery replays (0 to 100,000): a client further behind is told `too-many`. */
  maxRecover?: number
}

/** Defaults: `window` 120000 ms, `lease` 30000 ms, `maxEntries` 100000, `maxBytes` 32 MiB, `maxAnswerBytes` 16384. */
export interface DedupeOptions {
  /** ms a handled message's answer is kept: a repeat of its id within this time is answered, not run. */
  window?: number
  /** ms a first run holds its claim: a repeat waits this long at most, then gets FST_SOCKET_IN_PROGRESS. */
  lease?: number
  /** The in-process record's bounds (memory broker), oldest dropped first: records. */
  maxEntries?: number
  /** …and bytes. */
  maxBytes?: number
  /** An answer over this many bytes of JSON is not kept: a repeat gets FST_SOCKET_DUPLICATE. */
  maxAnswerBytes?: number
}

/** The `metrics` option. */
export interface MetricsOptions {
  /** A prom-client `Registry` (default: prom-client's default `register`). */
  registry?: MetricsRegistry
  /** Prefix of every metric's name (default `forge_socket_`). */
  prefix?: string
}

/** What forge-socket uses of a prom-client `Registry`. */
export interface MetricsRegistry {
  registerMetric: (metric: never) => void
  removeSingleMetric: (name: string) => void
}

/** The `metrics` option, resolved. */
export interface MetricsSettings {
  registry: MetricsRegistry | undefined
  prefix: string
}

/** The `dedupe` option, resolved: every field set. */
export type DedupeSettings = Required<DedupeOptions>

/** The presence settings, resolved: `announce` is always a function. */
export interface ResolvedPresence {
  announce: (channel: string) => PresenceMode
  interval: number
  maxUsers: number
}

export interface ResolvedOptions extends Omit<OptionsData, 'auth' | 'presence' | 'dedupe'> {
  presence: Readonly<ResolvedPresence>
  /** The dedupe settings, or null: ids are not checked. */
  dedupe: Readonly<DedupeSettings> | null
  /** The metrics settings, or null: no metrics. */
  metrics: Readonly<MetricsSettings> | null
  /** A channel's history settings, or null: it keeps none. */
  history: (channel: string) => Readonly<HistorySettings> | null
  /** `history` was set: some channels may keep history, and connections say where they stand in them. */
  historyEnabled: boolean
  jwt: Readonly<JwtOptions> | undefined
  auth: OptionsData['auth'] & { profile: ProfileMapper }
  broker: Broker
  authorizeChannel: (profile: Profile | null, channel: string) => boolean | Promise<boolean>
}

const checker = Compile(OptionsSchema)

/** `metrics` → its settings; FST_SOCKET_INVALID_OPTIONS when they are wrong. */
function resolveMetrics (input: unknown): Readonly<MetricsSettings> | null {
  if (input === undefined || input === false) return null
  if (input === true) return Object.freeze({ registry: undefined, prefix: 'forge_socket_' })
  if (typeof input !== 'object' || input === null || Array.isArray(input)) throw new errors.FST_SOCKET_INVALID_OPTIONS('/metrics must be a boolean or { registry, prefix }')
  const { registry, prefix = 'forge_socket_', ...extra } = input as MetricsOptions
  const unknown = Object.keys(extra)[0]
  if (unknown !== undefined) throw new errors.FST_SOCKET_INVALID_OPTIONS(`/metrics/${unknown} is not an option`)
  if (registry !== undefined && (typeof registry?.registerMetric !== 'function' || typeof registry.removeSingleMetric !== 'function')) {
    throw new errors.FST_SOCKET_INVALID_OPTIONS('/metrics/registry must be a prom-client Registry')
  }
  if (typeof prefix !== 'string' || !/^[A-Za-z_:][A-Za-z0-9_:]*$/.test(prefix)) throw new errors.FST_SOCKET_INVALID_OPTIONS('/metrics/prefix must be a Prometheus name prefix ([A-Za-z_:][A-Za-z0-9_:]*)')
  return Object.freeze({ registry, prefix })
}
const historyChecker = Compile(HistorySchema)

/** History options → settings, every field set; FST_SOCKET_INVALID_OPTIONS naming `where` when they are wrong. */
function historySettings (input: unknown, where: string): Readonly<HistorySettings> {
  const data = Value.Default(HistorySchema, Value.Clone(input)) as Static<typeof HistorySchema>
  if (!historyChecker.Check(data)) throw new errors.FST_SOCKET_INVALID_OPTIONS(`${where}${firstError(historyChecker, data, '', 'is invalid')}`)
  const metaTtl = data.metaTtl ?? Math.min(2147483647, data.ttl * 10)
  if (metaTtl < data.ttl) throw new errors.FST_SOCKET_INVALID_OPTIONS(`${where}/metaTtl (${metaTtl}) must be at least /ttl (${data.ttl})`)
  return Object.freeze({ size: data.size, ttl: data.ttl, metaTtl, maxRecover: data.maxRecover })
}

/**
 * `history` → a function of the channel. A function given is asked on every use (a broadcast, a connection, a
 * `history` command), and its answer checked then: wrong settings throw FST_SOCKET_INVALID_OPTIONS, which the
 * cluster logs (lib/cluster.ts), keeping no history for that channel.
 */
function resolveHistory (history: unknown, broker: Broker): ResolvedOptions['history'] {
  if (history === false || history === undefined) return () => null
  if (broker.append === undefined || broker.position === undefined || broker.read === undefined) {
    throw new errors.FST_SOCKET_INVALID_OPTIONS('/history needs a broker that keeps history (append, position and read): the memory and Redis brokers do')
  }
  if (typeof history === 'function') {
    const pick = history as (channel: string) => unknown
    return (channel) => {
      const settings = pick(channel)
      return settings === false ? null : historySettings(settings, `/history("${channel}")`)
    }
  }
  const settings = historySettings(history, '/history')
  return () => settings
}

/** The default profile: the claims, with `id` taken from `sub`. */
function defaultProfile (payload: TokenPayload): Profile {
  const sub = payload.sub
  if (typeof sub !== 'string' || sub.length === 0) throw new errors.FST_SOCKET_TOKEN_INVALID('the token has no "sub" claim')
  // The claims are the profile; fields users merged into ForgeSocketProfile come from their own claims.
  // Object.assign, not a spread: in Node 20 a spread of the same claims gives each copy a hidden class of its own
  // after a few calls (about 190 bytes more for every connection); Object.assign's copies share one.
  return Object.assign({}, payload, { id: sub }) as Profile
}

/** The `broker` option → the broker: memory, Redis (from a URL, options or a client), or the user's own. */
function resolveBroker (broker: unknown): Broker {
  if (broker === 'memory') return new MemoryBroker()
  if (typeof broker === 'string' && /^rediss?:\/\//.test(broker)) return new RedisBroker({ redis: broker })
  if (isBroker(broker)) return broker
  if (typeof broker === 'object' && broker !== null) {
    // A client is known by what it has, not by its class: the app's ioredis (5 or 6) is not necessarily ours.
    if (looksLikeRedisClient(broker)) {
      checkRedisClient(broker, '/broker')
      return new RedisBroker({ redis: broker })
    }
    const methods = broker as Record<string, unknown>
    if (BROKER_METHODS.some((name) => name in methods)) {
      const missing = BROKER_METHODS.filter((name) => typeof methods[name] !== 'function')
      throw new errors.FST_SOCKET_INVALID_OPTIONS(`/broker looks like a Broker but has no method ${missing.join(', ')}`)
    }
    // Plain data is ioredis options.
    if (Object.getPrototypeOf(broker) === Object.prototype) return new RedisBroker({ redis: broker as RedisConnectionOptions })
  }
  throw new errors.FST_SOCKET_INVALID_OPTIONS('/broker must be "memory", a redis:// URL, ioredis options or client, or a Broker')
}

function denyAll (): boolean {
  return false
}

/**
 * `presence` → its settings. A function `announce` is taken out before the schema check and called once per
 * announcement; its answer is checked then (anything else is treated as `none` and logged by the caller).
 */
function splitPresence (presence: unknown): { data: unknown, announce: ((channel: string) => PresenceMode) | null } {
  if (presence === true || presence === undefined) return { data: {}, announce: null }
  if (presence === false) return { data: { announce: 'none' }, announce: null }
  if (typeof presence === 'object' && presence !== null && typeof (presence as PresenceOptions).announce === 'function') {
    const { announce, ...rest } = presence as PresenceOptions
    return { data: rest, announce: announce as (channel: string) => PresenceMode }
  }
  return { data: presence, announce: null }
}

/**
 * Validates the options against the schema, fills in the defaults (declared once, in the schema) and freezes
 * the result. Anything invalid is an FST_SOCKET_INVALID_OPTIONS error, never silently replaced.
 */
export function resolveOptions (input: ForgeSocketOptions = {}): Readonly<ResolvedOptions> {
  // Functions and the broker instance are checked here, not cloned into the data the schema validates.
  const { authorizeChannel, broker = 'memory', auth = {}, jwt, presence: presenceInput, history, metrics, ...rest } = input
  const { profile = defaultProfile, ...authData } = auth
  const presence = splitPresence(presenceInput)
  // Value.Clone, not structuredClone: a function or symbol under a wrong key must fail the schema check with its
  // path, not throw a DataCloneError.
  const data = Value.Default(OptionsSchema, Value.Clone({ ...rest, auth: authData, presence: presence.data })) as OptionsData
  if (!checker.Check(data)) {
    throw new errors.FST_SOCKET_INVALID_OPTIONS(firstError(checker, data, '/', 'is invalid'))
  }
  if (data.heartbeat.timeout >= data.heartbeat.interval) {
    throw new errors.FST_SOCKET_INVALID_OPTIONS(`/heartbeat/timeout (${data.heartbeat.timeout}) must be shorter than /heartbeat/interval (${data.heartbeat.interval})`)
  }
  if (typeof profile !== 'function') throw new errors.FST_SOCKET_INVALID_OPTIONS('/auth/profile must be a function')
  if (authorizeChannel !== undefined && typeof authorizeChannel !== 'function') {
    throw new errors.FST_SOCKET_INVALID_OPTIONS('/authorizeChannel must be a function')
  }
  // The union's object branch gets its defaults here: Value.Default does not choose a branch of a union.
  const presenceData = Value.Default(PresenceSchema, data.presence) as Static<typeof PresenceSchema>
  const dedupe = data.dedupe === false ? null : Object.freeze(Value.Default(DedupeSchema, data.dedupe) as DedupeSettings)
  const mode = presenceData.announce
  const resolvedJwt = resolveJwtOptions(jwt)
  const resolvedBroker = resolveBroker(broker)
  const resolvedHistory = resolveHistory(history, resolvedBroker)

  const resolved: ResolvedOptions = {
    ...data,
    jwt: resolvedJwt,
    auth: Object.freeze({ ...data.auth, profile }),
    heartbeat: Object.freeze(data.heartbeat),
    rateLimit: Object.freeze(data.rateLimit),
    badFrames: Object.freeze(data.badFrames),
    connectionLimits: Object.freeze(data.connectionLimits),
    subscribeRate: Object.freeze(data.subscribeRate),
    presence: Object.freeze({
      announce: presence.announce ?? (() => mode),
      interval: presenceData.interval,
      maxUsers: presenceData.maxUsers
    }),
    origins: data.origins === undefined ? undefined : Object.freeze([...data.origins]) as string[],
    broker: resolvedBroker,
    history: resolvedHistory,
    dedupe,
    metrics: resolveMetrics(metrics),
    historyEnabled: history !== false && history !== undefined,
    authorizeChannel: authorizeChannel ?? denyAll
  }
  return Object.freeze(resolved)
}
