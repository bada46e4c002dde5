import type { IncomingMessage } from 'node:http'
import type { FastifyBaseLogger, FastifyRequest } from 'fastify'
import { errors, toClientError } from './errors.js'
import { BEARER_PREFIX, SUBPROTOCOL } from './protocol.js'
import { kQueryToken } from './symbols.js'
import type { JwtVerifier } from './jwt.js'
import type { Profile, ResolvedOptions, TokenPayload } from './options.js'

/** Where a token taken from `?token=` waits, after it was stripped from the URL (so no log line shows it). */
type RawWithToken = IncomingMessage & { [kQueryToken]?: string }

/** The result of authenticating an upgrade request. */
export interface Authenticated {
  profile: Profile | null
  payload: TokenPayload | null
}

/**
 * Removes `token` from an upgrade request's URL before Fastify routes (and logs) it, keeping the value aside (used
 * only with `auth.query` on). Installed as the first `upgrade` listener whatever the option says. Any query is
 * parsed: a key written `%74oken` is `token` to Fastify's parser too.
 */
export function stripQueryToken (raw: IncomingMessage): void {
  const url = raw.url
  if (url === undefined) return
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

/**
 * Who a token says its bearer is: finds the token (`extractToken`), verifies it with @fastify/jwt (lib/jwt.ts) and
 * maps its claims to the profile (`auth.profile`).
 */
export class Authenticator {
  readonly #options: ResolvedOptions['auth']
  readonly #jwt: JwtVerifier

  constructor (options: ResolvedOptions['auth'], jwt: JwtVerifier) {
    this.#options = options
    this.#jwt = jwt
  }

  /**
   * Authenticates an upgrade request. `required` routes refuse a missing token (401); `optional` routes let it
   * through as `profile: null`, but a token that is present must still be valid.
   */
  async authenticate (request: FastifyRequest, required: boolean): Promise<Authenticated> {
    this.#jwt.note(request)
    const token = extractToken(request, this.#options)
    if (token === undefined) {
      if (required) throw new errors.FST_SOCKET_TOKEN_MISSING()
      return { profile: null, payload: null }
    }
    return await this.#profile(await this.#jwt.verify(request, token), request.log)
  }

  /** Verifies the token of an in-band `auth.refresh` for a connection from `ip`. */
  async refresh (token: string, ip: string, log: FastifyBaseLogger): Promise<{ profile: Profile, payload: TokenPayload }> {
    return await this.#profile(await this.#jwt.verifyInBand(token, ip, log), log)
  }

  /**
   * Maps verified claims to a profile. Every failure is FST_SOCKET_TOKEN_INVALID, except a mapper's own coded 4xx
   * error.
   */
  async #profile (payload: TokenPayload, log: FastifyBaseLogger): Promise<{ profile: Profile, payload: TokenPayload }> {
    let profile: Profile
    try {
      profile = await this.#options.profile(payload)
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
}
