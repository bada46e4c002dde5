import type { FastifyBaseLogger, FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify'
import fastifyJwt, { type FastifyJWTOptions, type JWT, type TokenOrHeader } from '@fastify/jwt'
import { errors, toClientError } from './errors.js'
import type { OptionsData } from '../schemas/options.js'

/** Claims of a verified token, as @fastify/jwt decodes them. */
export type TokenPayload = Record<string, unknown>

/** A key as @fastify/jwt takes it: an HS* secret, or a PEM key. */
export type JwtKey = string | Buffer

/**
 * `(request, token) => key`: returns the key, a promise of it, or calls back with it. `token` is the decoded token:
 * `{ header, payload }` with `decode: { complete: true }` (what a JWKS lookup needs, for `kid`), else the claims.
 * During an in-band `auth.refresh`, `request` is a stand-in (see docs/server.md).
 */
export type JwtKeyFunction = (request: FastifyRequest, token: TokenOrHeader, callback: (err: Error | null, key?: JwtKey) => void) => JwtKey | Promise<JwtKey> | void

/** @fastify/jwt's `secret`, plus key functions that return their key at once. */
export type JwtSecret = JwtKey | JwtKeyFunction | {
  public: JwtKey | JwtKeyFunction
  private?: JwtKey | JwtKeyFunction | { key: JwtKey, passphrase: string }
}

/** The @fastify/jwt options forge-socket passes on when it registers @fastify/jwt itself (option `jwt`). */
export interface JwtOptions {
  secret: JwtSecret
  /** For `app.jwt.sign` / `reply.jwtSign` (e.g. `{ algorithm: 'RS256', expiresIn: '1h' }`). */
  sign?: FastifyJWTOptions['sign']
  /** fast-jwt verifier options (`allowedIss`, `allowedAud`, `maxAge`, …). The allow-list is `auth.algorithms`. */
  verify?: Omit<NonNullable<FastifyJWTOptions['verify']>, 'algorithms' | 'extractToken'>
  /** fast-jwt decoder options: `{ complete: true }` hands a key function the token's header. */
  decode?: FastifyJWTOptions['decode']
  /** `(request, claims) => boolean | Promise<boolean>`: false refuses the token (401). */
  trusted?: FastifyJWTOptions['trusted']
  /** Claims → `request[decoratorName]`. The profile is still mapped from the claims (`auth.profile`). */
  formatUser?: FastifyJWTOptions['formatUser']
  /** Where @fastify/jwt puts the user on the request. Default `'user'`. */
  decoratorName?: string
}

/**
 * The token forge-socket is verifying (its sources are `auth.*`), where the `extractToken` it gives @fastify/jwt
 * picks it up. Set just before the verify method is called and cleared as soon as that call returns. Safe because
 * @fastify/jwt's `requestVerify` calls `lookupToken` (and so `extractToken`) synchronously, before its first callback
 * or promise: no other request's code can run in between, and the first read, which takes the token, is that call's
 * lookup. (Were the lookup ever made later, it would find the slot empty, never another request's token.) A slot,
 * not a property on the request: a new property on a Fastify request changes its shape, which Fastify avoids by
 * having request properties declared with `decorateRequest`.
 */
let verifying: string | undefined

function takeToken (): string | undefined {
  const token = verifying
  verifying = undefined
  return token
}

type VerifyCallback = (err: Error | null | undefined, user?: unknown) => void
/** `request.jwtVerify` (or a namespace's), in its callback form. */
type RequestVerify = (this: object, options: VerifyOptions | undefined, callback: VerifyCallback) => void

interface VerifyOptions {
  extractToken: () => string | undefined
  algorithms: OptionsData['auth']['algorithms']
}

/**
 * What an in-band `auth.refresh` hands @fastify/jwt (and so the secret and `trusted` callbacks) as the request: no
 * HTTP request carries it, and the upgrade's is not kept for it (idle connections stay small). It has the
 * connection's `ip` and logger, and no headers: a callback that picks a key by request (hostname, tenant header)
 * must refuse then, not fall back to a default key (docs/server.md).
 */
class InBandRequest {
  readonly ip: string
  readonly log: FastifyBaseLogger
  readonly headers: Record<string, string | undefined> = {}

  constructor (ip: string, log: FastifyBaseLogger) {
    this.ip = ip
    this.log = log
  }
}

function isPlainObject (value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && Object.getPrototypeOf(value) === Object.prototype
}

function invalid (message: string): Error {
  return new errors.FST_SOCKET_INVALID_OPTIONS(message)
}

function isKey (value: unknown): boolean {
  return ((typeof value === 'string' || Buffer.isBuffer(value)) && value.length > 0) || typeof value === 'function'
}

const JWT_KEYS = new Set(['secret', 'sign', 'verify', 'decode', 'trusted', 'formatUser', 'decoratorName'])
/** @fastify/jwt options forge-socket has an option of its own for, or does not support. */
const OURS = new Map([
  ['namespace', 'use /auth/namespace'],
  ['jwtVerify', 'forge-socket verifies only with the method @fastify/jwt names, jwtVerify or <namespace>JwtVerify'],
  ['cookie', 'use /auth/cookie'],
  ['algorithms', 'use /auth/algorithms'],
  ['extractToken', "use /auth (forge-socket's token sources)"]
])

/** Checks the `jwt` option (keys, Buffers and functions, so beside the TypeBox schema) and freezes a copy. */
export function resolveJwtOptions (jwt: unknown): Readonly<JwtOptions> | undefined {
  if (jwt === undefined) return undefined
  if (!isPlainObject(jwt)) throw invalid('/jwt must be an object')
  for (const key of Object.keys(jwt)) {
    if (!JWT_KEYS.has(key)) throw invalid(`/jwt/${key} is not passed to @fastify/jwt${OURS.has(key) ? `: ${OURS.get(key) as string}` : ''}`)
  }
  const { secret } = jwt
  if (!isKey(secret)) {
    if (!isPlainObject(secret)) throw invalid('/jwt/secret must be a non-empty string or Buffer, { public, private }, or a function (request, token) => key')
    if (!isKey(secret.public)) throw invalid('/jwt/secret/public must be a non-empty string or Buffer, or a function')
    if (secret.private !== undefined && !isKey(secret.private) && !isPlainObject(secret.private)) {
      throw invalid('/jwt/secret/private must be a non-empty string or Buffer, { key, passphrase }, or a function')
    }
  }
  for (const key of ['sign', 'verify', 'decode']) {
    if (jwt[key] !== undefined && !isPlainObject(jwt[key])) throw invalid(`/jwt/${key} must be an object`)
  }
  for (const key of ['algorithms', 'extractToken']) {
    if ((jwt.verify as Record<string, unknown> | undefined)?.[key] !== undefined) throw invalid(`/jwt/verify/${key} is forge-socket's: ${OURS.get(key) as string}`)
  }
  for (const key of ['trusted', 'formatUser']) {
    if (jwt[key] !== undefined && typeof jwt[key] !== 'function') throw invalid(`/jwt/${key} must be a function`)
  }
  if (jwt.decoratorName !== undefined && (typeof jwt.decoratorName !== 'string' || jwt.decoratorName.length === 0)) {
    throw invalid('/jwt/decoratorName must be a non-empty string')
  }
  return Object.freeze({ ...jwt }) as unknown as Readonly<JwtOptions>
}

/** @fastify/jwt waits for a key function's promise or callback: one that returns its key at once would hang it. */
function keyFunction (fn: JwtKeyFunction): JwtKeyFunction {
  return function (request, token, callback) {
    const key = fn(request, token, callback)
    if (key !== undefined && typeof (key as { then?: unknown }).then !== 'function') callback(null, key as JwtKey)
    return key
  }
}

function wrapKey<K> (key: K): K {
  return (typeof key === 'function' ? keyFunction(key as JwtKeyFunction) : key) as K
}

function wrapSecret (secret: JwtSecret): JwtSecret {
  if (typeof secret === 'object' && !Buffer.isBuffer(secret)) return { public: wrapKey(secret.public), private: wrapKey(secret.private) }
  return wrapKey(secret)
}

/** How many verified tokens forge-socket's own @fastify/jwt keeps (`jwt.verify.cache` sets another size, or `false`). */
export const TOKEN_CACHE_SIZE = 10_000

/**
 * fast-jwt's cache of verified tokens, on by default where the key is fixed: a client that reconnects (a network
 * blip, a node gone, a retry after 1013) shows the token it had, and its signature is not checked again. fast-jwt
 * keys it by a SHA-256 hash of the whole token (no collisions, and no token kept in memory), keeps an entry until
 * the token's `exp` (or `maxAge`, or 10 minutes), and caches no failure. `trusted`, `formatUser` and the profile
 * mapper still run on every connection. With a key function, @fastify/jwt may build a verifier per call (and with it
 * a cache of this size each time): none by default.
 */
function tokenCache (secret: JwtSecret): { cache?: number } {
  return fixedKey(secret) ? { cache: TOKEN_CACHE_SIZE } : {}
}

/** A string or Buffer secret, or `{ public }` with one: no key function picks the key per token. */
function fixedKey (secret: JwtSecret): boolean {
  const fixed = (key: unknown): boolean => typeof key === 'string' || Buffer.isBuffer(key)
  return fixed(secret) || (typeof secret === 'object' && fixed((secret as { public: unknown }).public))
}

/**
 * @fastify/jwt's own verifier (`app.jwt.verify`: the one `request.jwtVerify()` uses with a fixed key, with the
 * allow-list and the cache), and what `request.jwtVerify()` does after it: the user at `request[decoratorName]`,
 * through `formatUser`.
 */
interface DirectVerify {
  verify: (token: string) => unknown
  decoratorName: string
  formatUser: ((claims: TokenPayload) => unknown) | undefined
  /** What the verifier returned for tokens it accepted, and their claims, by their exact text; `null` without a cache. */
  verified: VerifiedTokens | null
}

/** The longest token the direct verifier keeps by its text (a longer one is looked up in fast-jwt's cache only). */
const LONGEST_CACHED_TOKEN = 2048

/**
 * The direct verifier's cache, in front of fast-jwt's: what @fastify/jwt's verifier returned for each token it
 * accepted, keyed by the token's exact text, so that a hit costs a Map lookup where fast-jwt's costs a SHA-256 of
 * the token (its key: it keeps no token in memory, and this one keeps each, up to 2 KiB, which at 10,000 entries
 * bounds it near 20 MiB). An entry is used until the earliest of the token's `exp`, `iat` + the `maxAge` option, and
 * fast-jwt's own `cacheTTL` (10 minutes) after it was verified: never later than fast-jwt would, which also allows
 * its `clockTolerance` past `exp` (the token is then verified again, and refused or not by fast-jwt). The oldest entry
 * makes room for a new one. No failure is kept.
 */
export class VerifiedTokens {
  readonly #entries = new Map<string, VerifiedToken>()
  readonly #size: number
  readonly #ttl: number
  readonly #maxAge: number | undefined

  /** `maxAge` in milliseconds. */
  constructor (size: number, ttl: number, maxAge: number | undefined) {
    this.#size = size
    this.#ttl = ttl
    this.#maxAge = maxAge
  }

  /** What the verifier returned for `token` and its claims, while its entry lasts; else undefined. */
  get (token: string, now: number): VerifiedToken | undefined {
    const entry = this.#entries.get(token)
    if (entry === undefined) return undefined
    if (now < entry.until) return entry
    this.#entries.delete(token)
    return undefined
  }

  /** Keeps what the verifier returned for `token`, whose claims are `claims`. */
  set (token: string, user: unknown, claims: TokenPayload, now: number): void {
    if (token.length > LONGEST_CACHED_TOKEN) return
    let until = now + this.#ttl
    if (typeof claims.exp === 'number') until = Math.min(until, claims.exp * 1000)
    if (this.#maxAge !== undefined) until = typeof claims.iat === 'number' ? Math.min(until, claims.iat * 1000 + this.#maxAge) : now
    if (!(until > now)) return
    if (this.#entries.size >= this.#size) this.#entries.delete(this.#entries.keys().next().value as string)
    this.#entries.set(token, { user, claims, until })
  }
}

interface VerifiedToken {
  user: unknown
  claims: TokenPayload
  until: number
}

/**
 * The direct verifier's cache for these verify options: as large as fast-jwt's (`cache`: false or 0 for none), or
 * none where the options make validity depend on more than `exp`, `iat` and the clock (a fixed `clockTimestamp`, a
 * `maxAge` given as a string such as `'1h'`: fast-jwt's cache alone keeps those tokens).
 */
function verifiedTokens (verify: JwtOptions['verify'] | undefined): VerifiedTokens | null {
  const options = (verify ?? {}) as { cache?: unknown, cacheTTL?: unknown, maxAge?: unknown, clockTimestamp?: unknown }
  const size = options.cache === undefined ? TOKEN_CACHE_SIZE : options.cache === true ? 1000 : typeof options.cache === 'number' ? options.cache : 0
  if (!(size > 0) || options.clockTimestamp !== undefined) return null
  if (options.maxAge !== undefined && typeof options.maxAge !== 'number') return null
  const ttl = typeof options.cacheTTL === 'number' ? options.cacheTTL : 600_000
  // @fastify/jwt takes a number of seconds (and gives fast-jwt milliseconds).
  return new VerifiedTokens(size, ttl, options.maxAge === undefined ? undefined : (options.maxAge as number) * 1000)
}

/** `app.jwt`, or one of its namespaces. */
function decoratorOf (app: FastifyInstance, namespace: string | undefined): JWT | undefined {
  return namespace === undefined ? app.jwt : (app.jwt as unknown as Record<string, JWT | undefined>)[namespace]
}

/**
 * `lookupToken` with this is @fastify/jwt's own lookup (`Authorization: Bearer`, with its errors): it merges these
 * options over the registered ones skipping only `undefined`, so `null` stands in for "no extractToken". That is an
 * @fastify/jwt internal: were `null` skipped too, `lookupToken` would call our extractToken again, which would call
 * `lookupToken` again, until the stack overflowed. So that extractor refuses to be re-entered (`ownExtractor`).
 */
const DEFAULT_LOOKUP = { extractToken: null } as unknown as FastifyJWTOptions['verify']

/**
 * The `extractToken` of the @fastify/jwt that forge-socket registers: forge-socket's token on its own calls, and on
 * the app's own routes that call `request.jwtVerify()`, what @fastify/jwt finds by default.
 */
function ownExtractor (app: FastifyInstance, namespace: string | undefined): (request: FastifyRequest) => string | undefined {
  let looking = false
  return function extractToken (request) {
    const token = takeToken()
    if (token !== undefined) return token
    // Re-entered through lookupToken (see DEFAULT_LOOKUP): undefined makes it refuse with its own 400 instead.
    if (looking) return undefined
    looking = true
    try {
      return (decoratorOf(app, namespace) as JWT).lookupToken(request, DEFAULT_LOOKUP)
    } finally {
      looking = false
    }
  }
}

/** Reasons for the library codes that say more than "verification failed". */
const REASONS: Record<string, string> = {
  FAST_JWT_INVALID_ALGORITHM: 'algorithm not allowed',
  FAST_JWT_MISSING_SIGNATURE: 'unsigned token',
  FAST_JWT_INACTIVE: 'token not active yet',
  FST_JWT_AUTHORIZATION_TOKEN_UNTRUSTED: 'untrusted token',
  // get-jwks: the token names a key or an issuer the key set does not have.
  JWK_NOT_FOUND: 'unknown signing key',
  DOMAIN_NOT_ALLOWED: 'issuer not allowed'
}

/** get-jwks's codes for a key set it could not get (get-jwks/src/error.js). Its other codes are verdicts. */
const KEY_SET_UNAVAILABLE = new Set(['JWKS_REQUEST_FAILED', 'OPENID_CONFIGURATION_REQUEST_FAILED', 'NO_JWKS', 'NO_JWKS_URI'])

/** Codes of a request that did not get through: system errors, and undici's timeouts and lost sockets. */
const NETWORK_CODES = new Set([
  'ECONNREFUSED', 'ECONNRESET', 'ECONNABORTED', 'ETIMEDOUT', 'ENOTFOUND', 'EAI_AGAIN', 'EHOSTUNREACH', 'ENETUNREACH', 'EPIPE',
  'UND_ERR_CONNECT_TIMEOUT', 'UND_ERR_HEADERS_TIMEOUT', 'UND_ERR_BODY_TIMEOUT', 'UND_ERR_SOCKET'
])

function isNetworkFailure (err: unknown): boolean {
  if (typeof err !== 'object' || err === null) return false
  const { code, name } = err as { code?: unknown, name?: unknown }
  return (typeof code === 'string' && NETWORK_CODES.has(code)) || name === 'AbortError' || name === 'TimeoutError'
}

/**
 * Whether an error from a secret or `trusted` callback says the keys could not be had, rather than anything about the
 * token: get-jwks's key set failures, or a network failure (fetch rejects with a TypeError whose `cause` has the code).
 */
function isUnavailable (err: object): boolean {
  const { code, cause } = err as { code?: unknown, cause?: unknown }
  return (typeof code === 'string' && KEY_SET_UNAVAILABLE.has(code)) || isNetworkFailure(err) || isNetworkFailure(cause)
}

/**
 * fast-jwt, @fastify/jwt and get-jwks errors → ours. Every library error is translated here and nowhere else.
 * A coded 4xx error from the app's own secret or `trusted` callback passes through; a key set that can't be had is
 * no verdict on the token (503). Anything else is a refusal: a forged token must not make anyone back off (get-jwks
 * throws a TypeError for a token without `iss`), so it is 401, and logged, as the client is told nothing more.
 */
function translate (err: unknown, log: FastifyBaseLogger): Error {
  const code = (err as { code?: unknown }).code
  // @fastify/jwt's code for fast-jwt's, which the direct verifier throws as it is.
  if (code === 'FST_JWT_AUTHORIZATION_TOKEN_EXPIRED' || code === 'FAST_JWT_EXPIRED') return new errors.FST_SOCKET_TOKEN_EXPIRED()
  if (typeof code === 'string') {
    const reason = REASONS[code]
    if (reason !== undefined) return new errors.FST_SOCKET_TOKEN_INVALID(reason)
    if (code.startsWith('FAST_JWT_') || code.startsWith('FST_JWT_')) return new errors.FST_SOCKET_TOKEN_INVALID('verification failed')
  }
  if (toClientError(err).exposed) return err as Error
  if (isUnavailable(err as object)) return new errors.FST_SOCKET_AUTH_UNAVAILABLE({ cause: err })
  log.warn({ err }, 'token verification failed')
  return new errors.FST_SOCKET_TOKEN_INVALID('verification failed')
}

/**
 * fast-jwt's verdicts on a token that @fastify/jwt 10 passes on as they are, with no HTTP status (it gives expiry,
 * bad signatures and claim values, missing claims and missing signatures their 401 itself): an algorithm outside the
 * allow-list, a token not active yet (`nbf`), a claim of the wrong type, a payload that is no JSON object, a `crit`
 * header, a `typ` that `verify.checkTyp` refuses. Fastify would answer them 500, logged as server errors.
 */
const UNTRANSLATED_REFUSALS = new Set([
  'FAST_JWT_INVALID_ALGORITHM', 'FAST_JWT_INACTIVE', 'FAST_JWT_INVALID_CLAIM_TYPE', 'FAST_JWT_INVALID_PAYLOAD',
  'FAST_JWT_INVALID_CRIT_HEADER', 'FAST_JWT_INVALID_TYPE'
])

/**
 * An `onError` hook for the app's own routes when forge-socket registered @fastify/jwt: the refusals above get their
 * 401 before Fastify's error handler reads the status (so they are logged at info, as 4xx, and an app's own error
 * handler sees 401 too). The error keeps fast-jwt's code and message. forge-socket's upgrades never get here: their
 * errors are translated in `translate`. A hook is the only place: @fastify/jwt hands the error to the caller of
 * `request.jwtVerify()`, and none of the callbacks forge-socket gives it sees a failed verification.
 */
function refusalIs401 (_request: FastifyRequest, _reply: FastifyReply, error: FastifyError, done: () => void): void {
  if (error.statusCode === undefined && UNTRANSLATED_REFUSALS.has(error.code) && fromVerifier(error)) error.statusCode = 401
  done()
}

/**
 * Whether fast-jwt's verifier (or the decoder it reads the token with) made the error. Its signer throws two of the same codes (INVALID_TYPE for a payload
 * that is no object, INVALID_ALGORITHM for a key of another type): those are the app's bugs, and stay 500. The
 * stack is the only mark of which it was; where it names neither (a bundled fast-jwt), the error is left as it is.
 */
function fromVerifier (error: Error): boolean {
  return /[\\/]fast-jwt[\\/]src[\\/](verifier|decoder)\.js/.test(error.stack ?? '')
}

/** The claims of a token @fastify/jwt verified (its result may have been reshaped). */
function claimsOf (token: string): TokenPayload {
  return JSON.parse(Buffer.from(token.slice(token.indexOf('.') + 1, token.lastIndexOf('.')), 'base64url').toString()) as TokenPayload
}

/**
 * How forge-socket verifies with @fastify/jwt: through the request method (`request.jwtVerify`, or a namespace's),
 * so the app's secret callback, `trusted`, `formatUser` and `decoratorName` apply as on its own routes.
 */
export class JwtVerifier {
  readonly #method: string
  /**
   * Per-call options, for an app's own @fastify/jwt (which then builds a verifier for each call); `undefined` for
   * forge-socket's own registration, whose prebuilt verifier has the allow-list and the token lookup built in.
   */
  readonly #options: VerifyOptions | undefined
  /** The result is the claims (no `formatUser` or `complete` reshapes it), so they need not be decoded again. */
  readonly #resultIsClaims: boolean
  /** The verify method, from the first upgrade request: an in-band refresh has no request of its own. */
  #verify: RequestVerify | undefined
  /** Where forge-socket registered @fastify/jwt with a fixed key and no `trusted`: its verifier, called directly. */
  readonly #direct: DirectVerify | null

  constructor (method: string, options: VerifyOptions | undefined, resultIsClaims: boolean, direct: DirectVerify | null = null) {
    this.#method = method
    this.#options = options
    this.#resultIsClaims = resultIsClaims
    this.#direct = direct
  }

  /** Takes the verify method from an upgrade request, once: a request decorator is the same on every request. */
  note (request: FastifyRequest): void {
    this.#verify ??= (request as unknown as Record<string, RequestVerify>)[this.#method]
  }

  /** Verifies the token of an upgrade request (`note`d first) and returns its claims. */
  async verify (request: FastifyRequest, token: string): Promise<TokenPayload> {
    return await this.#run(request, token)
  }

  /** Verifies the token of an in-band `auth.refresh`, with a stand-in request (see InBandRequest). */
  async verifyInBand (token: string, ip: string, log: FastifyBaseLogger): Promise<TokenPayload> {
    return await this.#run(new InBandRequest(ip, log), token)
  }

  async #run (request: FastifyRequest | InBandRequest, token: string): Promise<TokenPayload> {
    if (this.#direct !== null) {
      const { decoratorName, formatUser, verified } = this.#direct
      try {
        const now = Date.now()
        const kept = verified?.get(token, now)
        // A kept token's claims were read once, when it was verified: no decode on a hit.
        const user = kept === undefined ? this.#direct.verify(token) : kept.user
        const claims = kept?.claims ?? (this.#resultIsClaims ? user as TokenPayload : claimsOf(token))
        if (kept === undefined) verified?.set(token, user, claims, now)
        ;(request as unknown as Record<string, unknown>)[decoratorName] = formatUser === undefined ? user : formatUser(user as TokenPayload)
        return claims
      } catch (err) {
        throw translate(err, request.log)
      }
    }
    // Every connection, and so every refresh, comes after an upgrade request that was noted.
    const verify = this.#verify as RequestVerify
    try {
      const user = await new Promise<unknown>((resolve, reject) => {
        // The token's slot is read (synchronously) by the extractToken of this very call; see `verifying`.
        verifying = token
        try {
          verify.call(request, this.#options, (err, user) => { if (err) reject(err); else resolve(user) })
        } finally {
          verifying = undefined
        }
      })
      return this.#resultIsClaims ? user as TokenPayload : claimsOf(token)
    } catch (err) {
      throw translate(err, request.log)
    }
  }
}

/** What `registerJwt` reads of the resolved options. */
export interface JwtSettings {
  auth: { namespace?: string | undefined, algorithms: OptionsData['auth']['algorithms'] }
  jwt: Readonly<JwtOptions> | undefined
}

/**
 * Registers @fastify/jwt with the `jwt` options unless the app registered it (or the namespace `auth.namespace`),
 * and checks that the verify method forge-socket will call exists. That method is always the one @fastify/jwt
 * names, `jwtVerify` or `<namespace>JwtVerify`: any other request method (`jwtDecode` does not verify) would let
 * forged tokens through.
 */
export async function registerJwt (app: FastifyInstance, options: Readonly<JwtSettings>): Promise<JwtVerifier> {
  const { namespace, algorithms } = options.auth
  const registered = app.hasDecorator('jwt') && decoratorOf(app, namespace) !== undefined
  const method = namespace === undefined ? 'jwtVerify' : `${namespace}JwtVerify`
  let resultIsClaims = false
  const jwt = options.jwt
  if (registered) {
    // Its options would be silently ignored: refusing a token by `jwt.verify` (say allowedAud) would then not happen.
    if (jwt !== undefined) {
      throw invalid(`/jwt is given but @fastify/jwt${namespace === undefined ? '' : ` (namespace "${namespace}")`} is already registered: configure that instance, or use /auth/namespace to name a namespace forge-socket registers with /jwt`)
    }
  } else {
    if (jwt === undefined) {
      throw invalid(namespace === undefined ? '/jwt/secret is required unless @fastify/jwt is already registered' : `/auth/namespace "${namespace}" is not a registered @fastify/jwt namespace, and there is no /jwt to register it with`)
    }
    try {
      await app.register(fastifyJwt, {
        ...jwt,
        secret: wrapSecret(jwt.secret) as FastifyJWTOptions['secret'],
        verify: { ...tokenCache(jwt.secret), ...jwt.verify, algorithms, extractToken: ownExtractor(app, namespace) },
        namespace
      })
    } catch (err) {
      throw new errors.FST_SOCKET_INVALID_OPTIONS(`/jwt: ${(err as Error).message}`, { cause: err })
    }
    app.addHook('onError', refusalIs401)
    resultIsClaims = jwt.formatUser === undefined && jwt.verify?.complete !== true
  }
  if (!app.hasRequestDecorator(method)) {
    throw invalid(namespace === undefined
      ? '/auth/namespace: @fastify/jwt gave requests no jwtVerify() (it has only namespaces: name the one to verify with)'
      : `/auth/namespace: the @fastify/jwt namespace "${namespace}" gave requests no ${method}(). A verify method renamed with @fastify/jwt's jwtVerify option is not supported: forge-socket calls only the name @fastify/jwt gives, so no other request method (jwtDecode does not verify) can stand in for it`)
  }
  // With a fixed key and no `trusted`, `request.jwtVerify()` is: decode the token (for a key callback there is
  // none of), run the verifier, put the user on the request. forge-socket's own registration calls that verifier
  // itself, the same one with the same options, and skips the rest (a decode and a waterfall per handshake).
  const direct: DirectVerify | null = !registered && jwt !== undefined && fixedKey(jwt.secret) && jwt.trusted === undefined
    ? { verify: (token) => (decoratorOf(app, namespace) as JWT).verify(token), decoratorName: jwt.decoratorName ?? 'user', formatUser: jwt.formatUser as DirectVerify['formatUser'], verified: verifiedTokens(jwt.verify) }
    : null
  return new JwtVerifier(method, registered ? { extractToken: takeToken, algorithms } : undefined, resultIsClaims, direct)
}
