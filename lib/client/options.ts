import type { BackoffOptions } from './backoff.js'
import { ClientErrorCode, SocketError } from './errors.js'
import type { QueueOptions } from './queue.js'
import type { Message, SocketState } from './types.js'

/** What `options.token` may be besides a string: called before every connection attempt, and for each refresh. */
export type TokenProvider = () => string | Promise<string>

/** Everything `new Socket({...})` takes; only `url` is required. Defaults in docs/client.md. */
export interface SocketOptions {
  /** A full `ws(s)://` (or `http(s)://`) URL, or a path on the page's host (`/ws/chat/lobby`). */
  url: string
  /** The JWT, or a function that returns one (called before every connection attempt). */
  token?: string | TokenProvider
  /** Where the token goes: the `bearer.<jwt>` subprotocol (default) or `?token=` (only if the server allows it). */
  tokenIn?: 'protocol' | 'query'
  /** One concise line per event (never a param or a token). Default false. */
  debug?: boolean
  /** Where debug lines go. Default `console.debug`. */
  logger?: (line: string) => void
  /**
   * The WebSocket class: the browser's by default; in Node 20 pass `ws`'s. Typed loosely on purpose: `ws` and the
   * DOM declare their constructors differently, and the client uses only what both have (`WebSocketLike`).
   */
  WebSocket?: new (...args: never[]) => unknown
  /**
   * Reconnection backoff; how long a connection must stay up before the backoff (and `maxAttempts`) starts again
   * from the bottom (`resetAfter`, default 5000 ms); how many reconnection attempts in a row are made before the
   * client gives up with FST_SOCKET_MAX_ATTEMPTS (`maxAttempts`, default `Infinity`: never). `false` never
   * reconnects.
   *
   * @example
   * reconnect: { initialDelay: 1000, maxAttempts: 10 }
   */
  reconnect?: (Partial<BackoffOptions> & { resetAfter?: number, maxAttempts?: number }) | false
  /** Bounds of the queue for messages sent while not open. */
  queue?: Partial<QueueOptions>
  /** Client-side liveness: ping after `interval` ms of silence, give up after `interval + timeout`; `false` turns it off. */
  heartbeat?: { interval?: number, timeout?: number } | false
  /** Default timeout of `request()`, in ms. Default 10000. */
  requestTimeout?: number
  /** How long an attempt may take until the server's `connected`, in ms; then it is given up and retried. Default 10000. */
  connectTimeout?: number
  /**
   * With a token provider: this many ms before the token's `exp`, the provider is asked for a fresh token, which
   * goes to the server in band (`auth.refresh`) so the connection is not closed with 4001. Default 30000.
   */
  refreshBefore?: number
  onOpen?: () => void
  onMessage?: (message: Message) => void
  onError?: (error: SocketError) => void
  onStateChange?: (state: SocketState, previous: SocketState) => void
}

/**
 * Checks the options `new Socket({...})` takes, so a mistake is a clear error at construction instead of a client
 * that retries at once forever (a negative delay) or never gives up (a NaN timeout). Hand-written: the client
 * ships to browsers and takes no dependencies.
 *
 * @throws SocketError FST_SOCKET_INVALID_OPTIONS naming the option and what it must be.
 */
export function checkOptions (options: SocketOptions): void {
  if (typeof options !== 'object' || options === null) throw new SocketError(ClientErrorCode.INVALID_OPTIONS, 'The Socket options must be an object')
  if (typeof options.url !== 'string' || options.url.length === 0) invalid('url', 'a non-empty string', options.url)
  if (options.token !== undefined && typeof options.token !== 'string' && typeof options.token !== 'function') {
    invalid('token', 'a string or a function that returns one', options.token)
  }
  oneOf('tokenIn', options.tokenIn, ['protocol', 'query'])
  if (options.debug !== undefined && typeof options.debug !== 'boolean') invalid('debug', 'a boolean', options.debug)
  for (const name of ['logger', 'WebSocket', 'onOpen', 'onMessage', 'onError', 'onStateChange'] as const) {
    if (options[name] !== undefined && typeof options[name] !== 'function') invalid(name, 'a function', options[name])
  }
  if (options.reconnect !== undefined && options.reconnect !== false) {
    const r = section('reconnect', options.reconnect, 'false or an object')
    number('reconnect.initialDelay', r.initialDelay, 0)
    number('reconnect.maxDelay', r.maxDelay, 0)
    number('reconnect.factor', r.factor, 1)
    number('reconnect.jitter', r.jitter, 0, 1)
    number('reconnect.resetAfter', r.resetAfter, 0)
    if (r.maxAttempts !== Infinity && r.maxAttempts !== undefined && (!Number.isSafeInteger(r.maxAttempts) || (r.maxAttempts as number) < 0)) {
      invalid('reconnect.maxAttempts', 'an integer ≥ 0, or Infinity', r.maxAttempts)
    }
  }
  if (options.queue !== undefined) {
    const q = section('queue', options.queue, 'an object')
    integer('queue.max', q.max, 0)
    integer('queue.maxBytes', q.maxBytes, 0)
    number('queue.ttl', q.ttl, 0)
    oneOf('queue.overflow', q.overflow, ['drop-oldest', 'drop-newest', 'error'])
  }
  if (options.heartbeat !== undefined && options.heartbeat !== false) {
    const h = section('heartbeat', options.heartbeat, 'false or an object')
    positive('heartbeat.interval', h.interval)
    positive('heartbeat.timeout', h.timeout)
  }
  positive('requestTimeout', options.requestTimeout)
  positive('connectTimeout', options.connectTimeout)
  number('refreshBefore', options.refreshBefore, 0)
}

function invalid (name: string, expected: string, value: unknown): never {
  const shown = typeof value === 'string' ? JSON.stringify(value) : typeof value === 'number' || typeof value === 'boolean' ? String(value) : value === null ? 'null' : typeof value
  throw new SocketError(ClientErrorCode.INVALID_OPTIONS, `options.${name} must be ${expected} (got ${shown})`)
}

function section (name: string, value: unknown, expected: string): Record<string, unknown> {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) invalid(name, expected, value)
  return value as Record<string, unknown>
}

/** Undefined (the default) or a finite number in [min, max]. */
function number (name: string, value: unknown, min: number, max = Infinity): void {
  if (value === undefined) return
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    invalid(name, max === Infinity ? `a number ≥ ${min}` : `a number from ${min} to ${max}`, value)
  }
}

function integer (name: string, value: unknown, min: number): void {
  if (value === undefined) return
  if (!Number.isSafeInteger(value) || (value as number) < min) invalid(name, `an integer ≥ ${min}`, value)
}

function positive (name: string, value: unknown): void {
  if (value === undefined) return
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) invalid(name, 'a number > 0', value)
}

function oneOf (name: string, value: unknown, allowed: string[]): void {
  if (value === undefined || allowed.includes(value as string)) return
  invalid(name, `one of ${allowed.map((a) => `'${a}'`).join(', ')}`, value)
}
