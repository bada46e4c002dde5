import type { Reporter } from './emitter.js'
import { ClientErrorCode, SocketError } from './errors.js'
import type { SocketOptions, TokenProvider } from './options.js'

/**
 * The token: a string, or a provider asked before every attempt. With a provider, two things more: the refresh in
 * band (`auth.refresh`, `refreshBefore` ms ahead of the token's `exp`), and the one fresh token allowed per stable
 * connection after the server closed with 4001 (or refused with 401).
 */
export class Token {
  readonly #source: string | TokenProvider | undefined
  readonly #refreshBefore: number
  readonly #out: Reporter
  readonly #send: (token: string) => Promise<unknown>
  /** The token the current connection was opened (or last refreshed) with. */
  #current: string | undefined
  #refreshed = false
  #refreshTimer: ReturnType<typeof setTimeout> | undefined

  /** `send` sends `auth.refresh` with the token as a request: it resolves when the server took it. */
  constructor (options: Pick<SocketOptions, 'token' | 'refreshBefore'>, out: Reporter, send: (token: string) => Promise<unknown>) {
    this.#source = options.token
    this.#refreshBefore = options.refreshBefore ?? 30_000
    this.#out = out
    this.#send = send
  }

  /**
   * The token for a new attempt. A string token is given at once, so the first attempt starts in the constructor;
   * a provider's comes as a promise, rejected if the provider throws.
   */
  fetch (): string | undefined | Promise<string> {
    const source = this.#source
    if (typeof source !== 'function') return (this.#current = source)
    return (async () => (this.#current = await source()))()
  }

  /** Whether a 4001 (or 401) may be answered with a fresh token: with a provider, once per stable connection. */
  get renewable (): boolean {
    return typeof this.#source === 'function' && !this.#refreshed
  }

  /** The fresh token is being asked for: a second 4001 (or 401) in a row means the provider has none to give. */
  renewing (): void {
    this.#refreshed = true
  }

  /** The connection stayed up: the next 4001 may be answered with a fresh token again. */
  stable (): void {
    this.#refreshed = false
  }

  /** With a provider and a token that has `exp`: refresh it in band `refreshBefore` ms ahead (at half-life if sooner). */
  schedule (): void {
    clearTimeout(this.#refreshTimer)
    const source = this.#source
    if (typeof source !== 'function' || this.#current === undefined) return
    const exp = expiryOf(this.#current)
    if (exp === null) return
    const remaining = exp * 1000 - Date.now()
    this.#refreshTimer = setTimeout(() => { void this.#refresh(source) }, Math.max(0, remaining - Math.min(this.#refreshBefore, remaining / 2)))
  }

  /** The connection is gone: no refresh until the next one is open. */
  stop (): void {
    clearTimeout(this.#refreshTimer)
  }

  async #refresh (provider: TokenProvider): Promise<void> {
    try {
      const token = await provider()
      await this.#send(token)
      this.#current = token
      this.#out.log('token refreshed')
      this.schedule()
    } catch (err) {
      // The server closes with 4001 at exp; the close policy then asks the provider once more.
      this.#out.report(err instanceof SocketError ? err : new SocketError(ClientErrorCode.TOKEN_PROVIDER, `The token provider failed: ${(err as Error).message}`))
    }
  }
}

/**
 * The `exp` claim of a JWT, read without verifying it (the server verifies; the client only needs to know when to
 * refresh). Null when the token has none or is not a JWT.
 */
function expiryOf (token: string): number | null {
  const payload = token.split('.')[1]
  if (payload === undefined) return null
  try {
    const claims = JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/'))) as { exp?: unknown }
    return typeof claims.exp === 'number' ? claims.exp : null
  } catch {
    return null
  }
}
