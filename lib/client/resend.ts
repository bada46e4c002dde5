import type { Reporter } from './emitter.js'
import { ClientErrorCode, SocketError } from './errors.js'
import type { Requests, Written } from './requests.js'
import type { Dedupe, WebSocketLike } from './types.js'

/** The protocol's own commands: they carry no `id`, and the server does not dedupe them. */
const RESERVED: ReadonlySet<string> = new Set(['subscribe', 'unsubscribe', 'auth.refresh', 'ping', 'history'])

/** The server's answers that mean "the same id again, later": its first run is still going, or its store is out of reach. */
const RETRIABLE: ReadonlySet<string> = new Set(['FST_SOCKET_IN_PROGRESS', 'FST_SOCKET_DEDUPE_UNAVAILABLE'])

/** The delays of those retries (ms): the first, doubling up to the last. */
const FIRST_RETRY = 250
const LAST_RETRY = 2000

const ALPHABET = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789'

/** What the resender needs from the Socket. */
export interface ResendHost {
  /** The open connection, or null (down, or being set up: then the resend after the reconnection sends it). */
  open (): WebSocketLike | null
  /** The socket is closed for good. */
  closed (): boolean
}

/**
 * The client's half of the server's dedupe (docs/client.md, Delivery): an `id` on every application message, and a
 * request sent again with the same `id` when it had no answer, after a reconnection or after an "in progress", but
 * only while the server's dedupe window still covers it, so that the server never runs it twice.
 */
export class Resender {
  /** This socket's part of every id. */
  readonly instance = randomChars(16)
  readonly #requests: Requests
  readonly #out: Reporter
  readonly #host: ResendHost
  #ids = 0
  /** What the last `connected` announced. */
  #dedupe: Dedupe | undefined
  /** What the last connection closed with: a request kept to be resent gets it if it never is. */
  #lostWith = new SocketError(ClientErrorCode.CONNECTION_CLOSED, 'The connection closed before the answer came')

  constructor (requests: Requests, out: Reporter, host: ResendHost) {
    this.#requests = requests
    this.#out = out
    this.#host = host
  }

  /** The `id` of the next message with `cmd`: `<instance>.<counter>` (base 36), none for a reserved command. */
  id (cmd: string): string | undefined {
    return RESERVED.has(cmd) ? undefined : `${this.instance}.${(++this.#ids).toString(36)}`
  }

  /** A connection's `connected` said how the server dedupes (or that it does not). */
  connected (dedupe: Dedupe | undefined): void {
    this.#dedupe = isDedupe(dedupe) ? dedupe : undefined
  }

  /**
   * Whether a message first sent (or queued) at `at` is too old to send now: past the window less a margin, since
   * the window runs on the server's clock from when it got the first copy.
   */
  late (at: number): boolean {
    const window = this.#dedupe?.window
    return window !== undefined && Date.now() > at + window - Math.min(5000, window / 10)
  }

  /**
   * The connection closed with `error`: the requests waiting for an answer are rejected with it, except those still
   * `queued` (never sent) and, when the server dedupes for the user and the socket goes on, those written with an
   * `id`: they are resent on the next connection.
   */
  lost (error: SocketError, queued: (ref: string) => boolean): void {
    this.#lostWith = error
    const resend = this.#dedupe?.scope === 'user' && !this.#host.closed()
    this.#requests.rejectAll(error, (ref) => queued(ref) || (resend && this.#requests.written(ref) !== undefined))
  }

  /**
   * A new connection is set up: the requests kept from the last one are sent on `ws`, the first sent first, unless
   * this server does not dedupe for the user (rejected as lost with the last connection) or the window has passed.
   */
  resend (ws: WebSocketLike): void {
    const kept = this.#requests.allWritten()
    if (kept.length > 0) this.#out.log(`resend ${kept.length}`)
    for (const [ref, written] of kept) {
      clearTimeout(written.retry)
      written.retry = undefined
      if (this.#dedupe?.scope !== 'user') this.#requests.settle(ref, this.#lostWith)
      else if (this.late(written.firstSentAt)) this.#tooLate(ref)
      else ws.send(written.data)
    }
  }

  /**
   * The answer to the request `ref` (an `error`, or a value) settles it, unless it is an error that means "the same
   * id again, later": then the request is sent again after a delay (250 ms, doubling, at most 2 s).
   */
  answered (ref: string, error: SocketError | undefined, value: unknown): void {
    const written = this.#requests.written(ref)
    if (error === undefined || !RETRIABLE.has(error.code) || written === undefined || this.#dedupe === undefined) return this.#requests.settle(ref, error, value)
    written.delay = written.delay === 0 ? FIRST_RETRY : Math.min(LAST_RETRY, written.delay * 2)
    clearTimeout(written.retry)
    written.retry = setTimeout(() => this.#again(ref, written), written.delay)
    this.#out.log(`${error.code} ${ref}: again in ${written.delay} ms`)
  }

  /** The socket stopped for good: the requests kept to be resent are rejected with what their connection closed with. */
  clear (queued: (ref: string) => boolean): void {
    this.#requests.rejectAll(this.#lostWith, queued)
  }

  #again (ref: string, written: Written): void {
    written.retry = undefined
    if (this.late(written.firstSentAt)) return this.#tooLate(ref)
    const ws = this.#host.open()
    // Down, or being set up: the resend after the reconnection sends it (and the connection's close decides whether).
    if (ws === null) return
    ws.send(written.data)
    this.#out.log(`again ${ref}`)
  }

  #tooLate (ref: string): void {
    this.#out.log('drop (dedupe-window)')
    this.#requests.settle(ref, new SocketError(ClientErrorCode.MESSAGE_DROPPED, 'A request was dropped (dedupe-window): sent again past the server\'s dedupe window, it could run twice'))
  }
}

function isDedupe (dedupe: Dedupe | undefined): dedupe is Dedupe {
  if (typeof dedupe !== 'object' || dedupe === null) return false
  return typeof dedupe.window === 'number' && dedupe.window > 0 && Number.isFinite(dedupe.window) && (dedupe.scope === 'user' || dedupe.scope === 'connection')
}

/** `length` characters of [A-Za-z0-9], uniformly: bytes of 248 and up (62 × 4) are drawn again. */
function randomChars (length: number): string {
  let chars = ''
  while (chars.length < length) {
    for (const byte of globalThis.crypto.getRandomValues(new Uint8Array(length))) {
      if (byte < 248 && chars.length < length) chars += ALPHABET[byte % 62] as string
    }
  }
  return chars
}
