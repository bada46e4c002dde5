import type { Connection } from './connection.js'

/**
 * What an admin's tap sees (lib/admin/tap.ts): one event per connection event, per message in, per direct message
 * out, and per broadcast (one event with how many of this node's connections it reached, never one per recipient).
 * `param` is there only where the admin plugin's `payloads` option asks for it.
 */
export type TapEvent =
  | { type: 'open', time: number, connection: string, user: string | null, channel: string, ip: string }
  | { type: 'close', time: number, connection: string, user: string | null, code: number }
  | { type: 'join' | 'leave', time: number, connection: string, channel: string }
  | { type: 'in', time: number, connection: string, channel: string, cmd: string, size: number, param?: unknown }
  | { type: 'out', time: number, connection: string, channel: string, cmd: string, size: number, param?: unknown }
  | { type: 'broadcast', time: number, channel: string, cmd: string, size: number, recipients: number, param?: unknown }

/** What a tap is handed: each event, with whether it may carry payloads. */
export interface Tap {
  readonly payloads: boolean
  event: (event: TapEvent) => void
}

/** What a dedupe decision came to (lib/dedupe.ts), for `forge_socket_dedupe_total{outcome}`. */
export type DedupeOutcome = 'run' | 'duplicate' | 'in_progress' | 'unavailable'

/**
 * Where metrics are recorded (lib/metrics.ts, with prom-client). Every call is per connection event or per
 * broadcast, never per recipient; what is counted per message already (messages and bytes, on each connection) is
 * read when the metrics are collected.
 */
export interface MetricsRecorder {
  handshake: (result: string) => void
  closed: (code: number, slowConsumer: boolean) => void
  error: (code: string) => void
  rateLimited: () => void
  broadcast: (recipients: number) => void
  published: (seconds: number) => void
  recovery: (result: string) => void
  dedupe: (outcome: DedupeOutcome) => void
}

/**
 * The node's observers: the metrics (when `metrics` is on) and the admins' taps (while any is open). Each call
 * costs a check of what is listening when nothing is: the tap's events are built only while a tap is open.
 */
export class Observer {
  metrics: MetricsRecorder | null = null
  /** Whether any tap is open: callers on a message path check it before building anything. */
  tapping = false
  readonly #taps = new Set<Tap>()

  /** Opens a tap; the function returned closes it. */
  tap (tap: Tap): () => void {
    this.#taps.add(tap)
    this.tapping = true
    return () => {
      this.#taps.delete(tap)
      this.tapping = this.#taps.size > 0
    }
  }

  /** The taps open now (the admin plugin closes them when the node drains). */
  get taps (): number {
    return this.#taps.size
  }

  handshake (result: string): void {
    this.metrics?.handshake(result)
  }

  opened (conn: Connection): void {
    if (this.tapping) this.#emit({ type: 'open', time: Date.now(), connection: conn.id, user: conn.profileId, channel: conn.home, ip: conn.ip })
  }

  closed (conn: Connection, code: number): void {
    this.metrics?.closed(code, conn.closeCode === 4008)
    if (this.tapping) this.#emit({ type: 'close', time: Date.now(), connection: conn.id, user: conn.profileId, code })
  }

  joined (conn: Connection, channel: string): void {
    if (this.tapping) this.#emit({ type: 'join', time: Date.now(), connection: conn.id, channel })
  }

  left (conn: Connection, channel: string): void {
    if (this.tapping) this.#emit({ type: 'leave', time: Date.now(), connection: conn.id, channel })
  }

  /** A message from a connection (only while tapping: callers check `tapping`). */
  received (conn: Connection, channel: string, cmd: string, size: number, param: unknown): void {
    this.#emit({ type: 'in', time: Date.now(), connection: conn.id, channel, cmd, size }, param)
  }

  /** A message to one connection (only while tapping: callers check `tapping`). */
  sent (conn: Connection, channel: string, cmd: string, size: number, param: unknown): void {
    this.#emit({ type: 'out', time: Date.now(), connection: conn.id, channel, cmd, size }, param)
  }

  /** A channel message written to `recipients` of this node's members. */
  delivered (channel: string, cmd: string, size: number, recipients: number, param: unknown): void {
    this.metrics?.broadcast(recipients)
    if (this.tapping) this.#emit({ type: 'broadcast', time: Date.now(), channel, cmd, size, recipients }, param)
  }

  /** An `error` message to a connection, with its code. */
  error (conn: Connection, channel: string, code: string, size: number): void {
    this.metrics?.error(code)
    if (code === 'FST_SOCKET_RATE_LIMITED') this.metrics?.rateLimited()
    if (this.tapping) this.sent(conn, channel, 'error', size, { code })
  }

  published (seconds: number): void {
    this.metrics?.published(seconds)
  }

  recovery (result: string): void {
    this.metrics?.recovery(result)
  }

  dedupe (outcome: DedupeOutcome): void {
    this.metrics?.dedupe(outcome)
  }

  /** Hands an event to every tap, with the payload to those that want payloads. */
  #emit (event: TapEvent, param?: unknown): void {
    let withParam: TapEvent | null = null
    for (const tap of this.#taps) {
      if (tap.payloads && param !== undefined) tap.event(withParam ??= Object.assign({ param }, event))
      else tap.event(event)
    }
  }
}
