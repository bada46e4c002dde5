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
    perIp: Type.Integer({ minimum: 0, default: 0 }),
    perUser: Type.Integer({ minimum: 0, default: 0 })
  }, { additionalProperties: false, default: {} }),
  maxDepth: Type.Integer({ minimum: 1, maximum: 256, default: 32 }),
  origins: Type.Optional(Type.Array(Type.String({ minLength: 1 }), { minItems: 1 })),
  shutdownTimeout: Type.Integer({ minimum: 0, default: 5000 }),
  presence: Type.Boolean({ default: true })
}, { additionalProperties: false })

export type OptionsData = Static<typeof OptionsSchema>
