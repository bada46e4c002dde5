import type { IncomingMessage } from 'node:http'
import type { FastifyBaseLogger, FastifyInstance, FastifyRequest } from 'fastify'
import type {} from '@fastify/jwt'
import { errors, toClientError } from './errors.js'
import { BEARER_PREFIX, SUBPROTOCOL } from './protocol.js'
import type { Profile, ResolvedOptions, TokenPayload } from './options.js'

/** Where a token taken from `?token=` waits, after it was stripped from the URL (so no log line shows it). */
const kQueryToken = Symbol('forge-socket.query-token')

type RawWithToken = IncomingMessage & { [kQueryToken]?: string }

/** Options passed to every `app.jwt.verify` (only when the app registered @fastify/jwt itself). */
export interface VerifyOptions {
  algorithms: ResolvedOptions['auth']['algorithms']
}

/** The result of authenticating an upgrade request. */
export interface Authenticated {
  profile: Profile | null
  payload: TokenPayload | null
}

/**
 * Removes `token` from an upgrade request's URL before Fastify routes (and logs) it, keeping the value aside.
 * Installed as the first `upgrade` listener when `auth.query` is on.
 */
export function stripQueryToken (raw: IncomingMessage): void {
  const url = raw.url
  if (url === undefined || !url.includes('token=')) return
  const at = url.indexOf('?')
  if (at === -1) return
  const params = new URLSearchParams(url.slice(at + 1))
  const token = params.get('token')
  if (token === null) return
  params.delete('token')
  const rest = params.toString();
  (raw as RawWithToken)[kQueryToken] = token
  raw.url = url.slice(0, at) + (rest.length > 0 ? `?${rest}` : '')
}

/** The subprotocols a client offered, in order. */
function offeredProtocols (request: FastifyRequest): string[] {
  const header = request.headers['sec-websocket-protocol']
  if (typeof header !== 'string') return []
  return header.split(',').map((p) => p.trim()).filter((p) => p.length > 0)
}

/**
 * ws's `handleProtocols`: selects `forge.v1` when offered, never a `bearer.*` entry (the token is never echoed),
 * and otherwise the first protocol offered, as ws does by default.
 */
export function selectProtocol (protocols: Set<string>): string | false {
  if (protocols.has(SUBPROTOCOL)) return SUBPROTOCOL
  for (const protocol of protocols) {
    if (!protocol.startsWith(BEARER_PREFIX)) return protocol
  }
  return false
}

/**
 * Finds the token, in the documented order: `Authorization: Bearer`, the `bearer.<jwt>` subprotocol, the cookie
 * (opt-in), `?token=` (opt-in).
 */
export function extractToken (request: FastifyRequest, options: ResolvedOptions['auth']): string | undefined {
  const authorization = request.headers.authorization
  if (typeof authorization === 'string') {
    const match = /^Bearer\s+(\S+)\s*$/i.exec(authorization)
    if (match !== null) return match[1]
  }
  const protocols = offeredProtocols(request)
  const bearer = protocols.find((p) => p.startsWith(BEARER_PREFIX))
  if (bearer !== undefined) {
    // Without forge.v1 to select, the server would have to echo the token back or break the browser's handshake.
    if (!protocols.includes(SUBPROTOCOL)) throw new errors.FST_SOCKET_BAD_PROTOCOL()
    return bearer.slice(BEARER_PREFIX.length)
  }
  if (options.cookie !== false) {
    const cookies = (request as FastifyRequest & { cookies?: Record<string, string | undefined> }).cookies
    const value = cookies?.[options.cookie]
    if (typeof value === 'string' && value.length > 0) return value
  }
  if (options.query) return (request.raw as RawWithToken)[kQueryToken]
  return undefined
}

/**
 * The Origin allow-list (exact match). Browsers always send `Origin`; a request without one is not from a browser
 * and passes, since any other client could send whatever Origin it liked anyway.
 */
export function checkOrigin (request: FastifyRequest, allowed: readonly string[] | undefined): void {
  const origin = request.headers.origin
  if (allowed === undefined || origin === undefined) return
  if (!allowed.includes(origin)) throw new errors.FST_SOCKET_ORIGIN_FORBIDDEN(origin)
}

/** fast-jwt error codes → ours. Every library error is translated here and nowhere else. */
function translate (err: unknown): Error {
  const code = (err as { code?: unknown }).code
  if (code === 'FAST_JWT_EXPIRED') return new errors.FST_SOCKET_TOKEN_EXPIRED()
  if (code === 'FAST_JWT_INVALID_ALGORITHM') return new errors.FST_SOCKET_TOKEN_INVALID('algorithm not allowed')
  if (code === 'FAST_JWT_INVALID_SIGNATURE') return new errors.FST_SOCKET_TOKEN_INVALID('bad signature')
  if (code === 'FAST_JWT_MALFORMED' || code === 'FAST_JWT_INVALID_TYPE') return new errors.FST_SOCKET_TOKEN_INVALID('malformed token')
  if (code === 'FAST_JWT_INACTIVE') return new errors.FST_SOCKET_TOKEN_INVALID('token not active yet')
  return new errors.FST_SOCKET_TOKEN_INVALID('verification failed')
}

/**
 * Verifies the request's token with @fastify/jwt against the algorithm allow-list and maps its claims to the
 * profile. `required` routes refuse a missing token (401); `optional` routes let it through as `profile: null`,
 * but a token that is present must still be valid.
 */
export async function authenticate (app: FastifyInstance, request: FastifyRequest, options: ResolvedOptions['auth'], required: boolean, verifyOptions?: VerifyOptions): Promise<Authenticated> {
  const token = extractToken(request, options)
  if (token === undefined) {
    if (required) throw new errors.FST_SOCKET_TOKEN_MISSING()
    return { profile: null, payload: null }
  }
  return await verifyToken(app, token, options, request.log, verifyOptions)
}

/**
 * Verifies one token and maps its claims to a profile: at the upgrade, and for an in-band `auth.refresh`.
 * Every failure is FST_SOCKET_TOKEN_INVALID or FST_SOCKET_TOKEN_EXPIRED, except a mapper's own coded 4xx error.
 */
export async function verifyToken (app: FastifyInstance, token: string, options: ResolvedOptions['auth'], log: FastifyBaseLogger, verifyOptions?: VerifyOptions): Promise<{ profile: Profile, payload: TokenPayload }> {
  let payload: TokenPayload
  try {
    payload = verifyOptions === undefined ? app.jwt.verify<TokenPayload>(token) : app.jwt.verify<TokenPayload>(token, verifyOptions)
  } catch (err) {
    throw translate(err)
  }
  let profile: Profile
  try {
    profile = await options.profile(payload)
  } catch (err) {
    // A mapper refuses a token by throwing (401); its own coded 4xx errors, such as forbidden(), pass through.
    if (toClientError(err).exposed) throw err
    log.warn({ err }, 'the profile mapper refused the token')
    throw new errors.FST_SOCKET_TOKEN_INVALID('the profile mapper refused the token')
  }
  if (typeof profile !== 'object' || profile === null || typeof profile.id !== 'string' || profile.id.length === 0) {
    throw new errors.FST_SOCKET_TOKEN_INVALID('the profile mapper returned no id')
  }
  return { profile, payload }
}
