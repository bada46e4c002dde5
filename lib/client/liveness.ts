import type { SocketOptions } from './options.js'

/** What the timers tell the Socket. */
export interface LivenessHost {
  /** `interval` ms without a frame: ask the server for one. */
  ping (): void
  /** No frame for `ms`, at least `interval + timeout`: the server is gone. */
  silent (ms: number): void
  /** The connection has been up for `resetAfter` ms. */
  stable (): void
}

/**
 * The timers that watch a connection: the handshake timer (an attempt must be set up within `connectTimeout`), the
 * stable timer (a connection up for `resetAfter` resets the backoff), and the heartbeat (browsers cannot see
 * WebSocket pings, so silence is measured from the frames that come). One `stop()` clears them all.
 */
export class Liveness {
  readonly #heartbeat: { interval: number, timeout: number } | null
  readonly #connectTimeout: number
  readonly #resetAfter: number
  readonly #host: LivenessHost
  #lastTraffic = 0
  #handshakeTimer: ReturnType<typeof setTimeout> | undefined
  #stableTimer: ReturnType<typeof setTimeout> | undefined
  #heartbeatTimer: ReturnType<typeof setInterval> | undefined

  constructor (options: Pick<SocketOptions, 'heartbeat' | 'connectTimeout' | 'reconnect'>, host: LivenessHost) {
    this.#heartbeat = options.heartbeat === false ? null : { interval: 25_000, timeout: 10_000, ...options.heartbeat }
    this.#connectTimeout = options.connectTimeout ?? 10_000
    this.#resetAfter = (options.reconnect === false ? undefined : options.reconnect?.resetAfter) ?? 5000
    this.#host = host
  }

  /** A frame came: the server is alive. */
  heard (): void {
    this.#lastTraffic = Date.now()
  }

  /** A new attempt: `onTimeout(connectTimeout)` runs unless it is set up (`settled()`) or stopped within `connectTimeout`. */
  connecting (onTimeout: (ms: number) => void): void {
    const ms = this.#connectTimeout
    this.#handshakeTimer = setTimeout(() => onTimeout(ms), ms)
  }

  /** The attempt is set up: the handshake timer is done. */
  settled (): void {
    clearTimeout(this.#handshakeTimer)
  }

  /** The connection is open: the stable timer and the heartbeat start. */
  up (): void {
    this.#stableTimer = setTimeout(() => this.#host.stable(), this.#resetAfter)
    if (this.#heartbeat === null) return
    const { interval, timeout } = this.#heartbeat
    // Checked twice per period: checked only once, the ping after an answered one can go out just short of
    // interval + timeout of silence, and a late tick then gives up on a server that answers every ping.
    this.#heartbeatTimer = setInterval(() => {
      const silent = Date.now() - this.#lastTraffic
      if (silent >= interval + timeout) this.#host.silent(silent)
      else if (silent >= interval) this.#host.ping()
    }, Math.min(interval, timeout) / 2)
  }

  /** The connection is gone, or the socket closed: every timer stops. */
  stop (): void {
    clearTimeout(this.#handshakeTimer)
    clearTimeout(this.#stableTimer)
    clearInterval(this.#heartbeatTimer)
  }
}
