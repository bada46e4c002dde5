import { CloseCode, errors } from './errors.js'
import { ConnectionState, type Connection } from './connection.js'
import { Deadlines } from './deadlines.js'
import type { Authenticator } from './auth.js'

/**
 * Token expiry: a connection whose token has `exp` is closed with 4001 `grace` ms after it, from one queue and one
 * timer for every connection (lib/deadlines.ts); an in-band `auth.refresh` with a fresh token for the same subject
 * moves it.
 */
export class Expiry {
  readonly #auth: Authenticator
  readonly #grace: number
  readonly #deadlines = new Deadlines<Connection>((conn) => {
    conn.debug({}, 'token expired: closing')
    conn.close(CloseCode.UNAUTHORIZED, 'token expired')
  })

  constructor (auth: Authenticator, grace: number) {
    this.#auth = auth
    this.#grace = grace
  }

  /** Closes the connection `grace` ms after `exp` (seconds, from the token); no `exp`, no expiry. */
  arm (conn: Connection, exp: unknown): void {
    if (typeof exp === 'number') this.#deadlines.set(conn, exp * 1000 + this.#grace)
    else this.#deadlines.delete(conn)
  }

  /** Forgets a connection that closed. */
  delete (conn: Connection): void {
    this.#deadlines.delete(conn)
  }

  /** Forgets every connection (shutdown). */
  clear (): void {
    this.#deadlines.clear()
  }

  /**
   * `auth.refresh`: a fresh token for the same subject moves the connection's expiry. A bad token, or one for
   * another subject, closes the connection with 4001. @fastify/jwt's callbacks see a stand-in request (lib/jwt.ts).
   */
  async refresh (conn: Connection, param: unknown): Promise<{ exp: number | null }> {
    const token = (param as { token?: unknown } | null)?.token
    if (typeof token !== 'string' || token.length === 0) throw new errors.FST_SOCKET_BAD_REQUEST('auth.refresh needs { token }')
    if (conn.profile === null) throw new errors.FST_SOCKET_FORBIDDEN('an anonymous connection has no token to refresh')
    // On failure the client gets the `error` first (it is sent as this call throws), then the 4001.
    const refuse = (err: Error, reason: string): Error => {
      setImmediate(() => conn.close(CloseCode.UNAUTHORIZED, reason))
      return err
    }
    let verified: Awaited<ReturnType<Authenticator['refresh']>>
    try {
      verified = await this.#auth.refresh(token, conn.ip, conn.log)
    } catch (err) {
      // No verdict on the token (its key could not be fetched): the connection keeps its expiry and may try again.
      if (err instanceof errors.FST_SOCKET_AUTH_UNAVAILABLE) throw err
      throw refuse(err as Error, 'refresh token refused')
    }
    if (verified.profile.id !== conn.profile.id) {
      throw refuse(new errors.FST_SOCKET_TOKEN_INVALID('the token is for another subject'), 'refresh token for another subject')
    }
    const exp = typeof verified.payload.exp === 'number' ? verified.payload.exp : null
    // It may have closed while the token was checked: a timer for it now would keep it alive for good.
    if (conn.state === ConnectionState.CLOSED) return { exp }
    this.arm(conn, exp)
    conn.log.debug('token refreshed')
    return { exp }
  }
}
