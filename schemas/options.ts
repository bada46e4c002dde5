import Type, { type Static } from 'typebox'

/** Channel names: 1–255 characters of `[A-Za-z0-9_.:@/-]`, never `..` (no path tricks in names users build from input). */
export const CHANNEL_PATTERN = '^(?!.*\\.\\.)[A-Za-z0-9_.:@/-]{1,255}$'

const Algorithm = Type.Union([
  Type.Literal('HS256'), Type.Literal('HS384'), Type.Literal('HS512'),
  Type.Literal('RS256'), Type.Literal('RS384'), Type.Literal('RS512'),
  Type.Literal('PS256'), Type.Literal('PS384'), Type.Literal('PS512'),
  Type.Literal('ES256'), Type.Literal('ES384'), Type.Literal('ES512'),
  Type.Literal('EdDSA')
])

/**
 * How presence changes are announced to a channel's members (`announce`, a function of the channel, is checked in
 * lib/options.ts). Changes are gathered per channel for `interval` ms and sent together; a join and a leave of the
 * same user inside one interval cancel out. Above `maxUsers` users in a channel nothing is announced.
 */
export const PresenceSchema = Type.Object({
  /** `events`: one `user-joined` / `user-left` per user; `diff`: one `presence-diff` per interval; `none`. */
  announce: Type.Union([Type.Literal('events'), Type.Literal('diff'), Type.Literal('none')], { default: 'events' }),
  /** ms over which a channel's changes are gathered; 0 sends each at once (no coalescing). */
  interval: Type.Integer({ minimum: 0, maximum: 60000, default: 100 }),
  /** Users in a channel (on every node) above which its changes are not announced; 0 = no cap. */
  maxUsers: Type.Integer({ minimum: 0, default: 1000 })
}, { additionalProperties: false, default: {} })

/**
 * A channel's history (`history`): `size` messages kept; `ttl` ms after the last message they are forgotten;
 * `metaTtl` ms after it the channel's position (epoch and seq) is forgotten too (default 10 × `ttl`, at least `ttl`);
 * `maxRecover` messages at most are replayed to one client that recovers (one further behind is told `too-many`).
 * Checked in lib/options.ts, for the settings given and for each answer of a function given.
 */
export const HistorySchema = Type.Object({
  size: Type.Integer({ minimum: 1, maximum: 10000, default: 100 }),
  ttl: Type.Integer({ minimum: 1, maximum: 2147483647, default: 120000 }),
  metaTtl: Type.Optional(Type.Integer({ minimum: 1, maximum: 2147483647 })),
  maxRecover: Type.Integer({ minimum: 0, maximum: 100000, default: 1000 })
}, { additionalProperties: false })

/**
 * Dedupe of client messages that carry an `id` (`dedupe`): each user's id is handled once within `window` ms; a
 * first run holds its claim for `lease` ms; the in-process record (memory broker) keeps at most `maxEntries`
 * records and `maxBytes` bytes; an answer over `maxAnswerBytes` is not kept.
 */
export const DedupeSchema = Type.Object({
  window: Type.Integer({ minimum: 1, maximum: 86400000, default: 120000 }),
  lease: Type.Integer({ minimum: 1, maximum: 86400000, default: 30000 }),
  maxEntries: Type.Integer({ minimum: 1, default: 100000 }),
  maxBytes: Type.Integer({ minimum: 1024, default: 33554432 }),
  maxAnswerBytes: Type.Integer({ minimum: 64, maximum: 1048576, default: 16384 })
}, { additionalProperties: false, default: {} })

/**
 * The plugin's options, with every default declared once. Functions (`auth.profile`, `authorizeChannel`), the
 * `broker` (`'memory'` or an instance) and `jwt` (keys, Buffers and functions, passed on to @fastify/jwt) are
 * checked beside this schema, in lib/options.ts and lib/jwt.ts.
 */
export const OptionsSchema = Type.Object({
  auth: Type.Object({
    algorithms: Type.Array(Algorithm, { minItems: 1, uniqueItems: true, default: ['HS256'] }),
    cookie: Type.Union([Type.String({ minLength: 1 }), Type.Literal(false)], { default: false }),
    query: Type.Boolean({ default: false }),
    /** ms after a token's `exp` before the connection is closed with 4001, unless refreshed in band. */
    expiryGrace: Type.Integer({ minimum: 0, default: 5000 }),
    /**
     * The @fastify/jwt namespace forge-socket verifies with (`request[<namespace>JwtVerify]`); checked against the
     * registered ones at register.
     */
    namespace: Type.Optional(Type.String({ minLength: 1 }))
  }, { additionalProperties: false, default: {} }),
  maxPayload: Type.Integer({ minimum: 128, maximum: 104857600, default: 65536 }),
  /**
   * Frames one message may come in (ws's `maxFragments`): ws keeps each fragment of an unfinished message as a Buffer
   * of its own (about 100 bytes of heap each, whatever its size), so without a low cap a client could hold 16,384
   * one-byte fragments (1.8 MiB) for 112 KB sent. One more closes the connection with 1008.
   */
  maxFragments: Type.Integer({ minimum: 1, default: 128 }),
  heartbeat: Type.Object({
    interval: Type.Integer({ minimum: 10, default: 25000 }),
    timeout: Type.Integer({ minimum: 10, default: 10000 })
  }, { additionalProperties: false, default: {} }),
  sendBufferLimit: Type.Integer({ minimum: 1024, default: 1048576 }),
  maxChannelsPerConnection: Type.Integer({ minimum: 1, default: 128 }),
  rateLimit: Type.Object({
    perSecond: Type.Integer({ minimum: 1, default: 100 }),
    burst: Type.Integer({ minimum: 1, default: 200 })
  }, { additionalProperties: false, default: {} }),
  badFrames: Type.Object({
    max: Type.Integer({ minimum: 1, default: 20 }),
    window: Type.Integer({ minimum: 10, default: 10000 })
  }, { additionalProperties: false, default: {} }),
  connectionLimits: Type.Object({
    /** Open connections per client IP; 0 = no limit. */
    perIp: Type.Integer({ minimum: 0, default: 0 }),
    /** Open connections per user (profile id); 0 = no limit. */
    perUser: Type.Integer({ minimum: 0, default: 0 }),
    /** New connections a second per client IP (every upgrade attempt counts, before its token is checked); 0 = off. */
    ratePerIp: Type.Number({ minimum: 0, default: 0 }),
    /** New connections a second per user, counted once the token is verified; 0 = off. */
    ratePerUser: Type.Number({ minimum: 0, default: 0 }),
    /** Connections an IP or a user may open at once before their rate applies. */
    burst: Type.Integer({ minimum: 1, default: 20 })
  }, { additionalProperties: false, default: {} }),
  /**
   * `subscribe` and `unsubscribe` per connection: a token bucket of its own, beside `rateLimit` (each may make
   * presence traffic for every member of the channel). The burst lets a reconnecting client subscribe again to
   * `maxChannelsPerConnection` channels at once.
   */
  subscribeRate: Type.Object({
    perSecond: Type.Number({ minimum: 0.01, default: 10 }),
    burst: Type.Integer({ minimum: 1, default: 128 })
  }, { additionalProperties: false, default: {} }),
  maxDepth: Type.Integer({ minimum: 1, maximum: 256, default: 32 }),
  origins: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })),
  shutdownTimeout: Type.Integer({ minimum: 0, default: 5000 }),
  /** ms the start waits for a broker that is not ready (Redis down) before it refuses; 0: start degraded. */
  waitForBroker: Type.Integer({ minimum: 0, maximum: 2147483647, default: 0 }),
  /** `true` (the defaults below), `false` (no announcements), or the settings; see PresenceSchema. */
  presence: Type.Union([Type.Boolean(), PresenceSchema], { default: true }),
  /** The settings (defaults: `{}`), or `false`: ids are not checked, every message runs. See DedupeSchema. */
  dedupe: Type.Union([Type.Literal(false), DedupeSchema], { default: {} })
}, { additionalProperties: false })

export type OptionsData = Static<typeof OptionsSchema>
