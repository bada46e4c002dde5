import type { Duplex } from 'node:stream'
import type { RawData, WebSocket } from 'ws'
import type { FastifyBaseLogger } from 'fastify'
import type { OutboundMessage } from '../schemas/envelope.js'
import { CloseCode, errors } from './errors.js'
import { closeReason, isSendableCloseCode } from './protocol.js'
import { encode } from './codec.js'
import { framePayload, headerLength, textFrame, writeFrame } from './frame.js'
import { TokenBucket, WindowCounter } from './limits.js'
import type { Profile, ResolvedOptions, TokenPayload } from './options.js'
import type { Deadlined } from './deadlines.js'
import type { StreamPosition } from './broker/broker.js'
import type { Observer } from './observer.js'

/** The options a connection reads: its inbound limits and its send buffer's. */
export type ConnectionLimits = Pick<ResolvedOptions, 'rateLimit' | 'subscribeRate' | 'badFrames' | 'sendBufferLimit' | 'heartbeat'>

/** A connection refused more frames than `rateLimit.perSecond` allows in this many seconds is closed (1008). */
export const ABUSE_WINDOW_SECONDS = 5

/**
 * ws's `maxPendingAutoPongs` for forge-socket's server. ws answers every ping itself, and terminates a peer with that
 * many answers not written yet (60 by default), with no close frame (1006): a flood of pings read in one chunk got
 * there before the rate limit had refused a single one. This leaves room for every ping the rate limit lets
 * through before its 1008 (`pinged`): the burst, a second's refill, and the refused pings of two abuse windows (one
 * may end during the flood).
 */
export function pendingPongsAllowed ({ rateLimit, sendBufferLimit }: Pick<ResolvedOptions, 'rateLimit' | 'sendBufferLimit'>): number {
  // …but never more answers than `sendBufferLimit` holds (at most 127 bytes each): a client pinging within a high
  // rate and never reading must not hold more than a slow consumer may.
  return Math.min(rateLimit.burst + rateLimit.perSecond * (2 * ABUSE_WINDOW_SECONDS + 1), Math.max(60, Math.floor(sendBufferLimit / 127)))
}

/** ws send options, shared by every send that goes through ws. */
const TEXT_FRAME = Object.freeze({ binary: false })

/** A connection's life: OPENING until it is registered and `onOpen` hooks ran, then OPEN, CLOSING, CLOSED. */
export const ConnectionState = { OPENING: 0, OPEN: 1, CLOSING: 2, CLOSED: 3 } as const
export type ConnectionStateValue = typeof ConnectionState[keyof typeof ConnectionState]

export type Metadata = Record<string, unknown>

/** A route's handler of binary frames (`onBinary`); without one, a binary frame closes the connection with 1003. */
export type BinaryHandler = (data: Buffer, connectionId: string) => void | Promise<void>

/** What `app.socket.connections()` reports for each connection. */
export interface ConnectionInfo {
  id: string
  profileId: string | null
  channels: string[]
  metadata: Metadata
  started: string
  messagesIn: number
  messagesOut: number
  bytesIn: number
  bytesOut: number
  /** The client's address (`request.ip`). */
  ip: string
  /** Bytes written to the socket and not yet sent (a slow consumer's grow towards `sendBufferLimit`). */
  buffered: number
}

/** What an act handler decided (lib/act.ts): the channel the connection starts in, and who it is. */
export interface UpgradePlan {
  channel: string
  /** `null`: not read yet; the connection reads it from `peer` when asked (see `ConnectionInit.ip`). */
  ip: string | null
  /** The request's socket, for its address; `null` where `ip` was read. */
  peer: AddressSource | null
  /** `null` when none was given. */
  metadata: Metadata | null
  profile: Profile | null
  payload: TokenPayload | null
  /** The connection's logger's parent. */
  logger: FastifyBaseLogger
  /** The act's name, bound when the connection makes its logger; `null`: `logger` has it already, or was given. */
  act: string | null
  onBinary?: BinaryHandler | undefined
  /** The client's last position in each channel it had (the `since` query parameter), to recover from. */
  since?: Readonly<Record<string, StreamPosition>> | null
}

/** Where a connection's address is read when first asked for: the upgrade request's socket. */
export interface AddressSource {
  readonly remoteAddress?: string | undefined
}

/** Frames that arrived while the connection was being registered, and their bytes. */
export interface PendingFrames {
  frames: Array<[RawData, boolean]>
  bytes: number
}

/** A frame held back while a recovery is under way, with the channel and seq it carries (if any). */
interface HeldFrame {
  frame: Buffer
  channel: string | undefined
  seq: number | undefined
}

/** The frames held back while one or more recoveries (or the open) are under way. */
interface Held {
  /** Holds not yet released: the frames go out when the last one is. */
  count: number
  frames: HeldFrame[]
  bytes: number
}

/** What a connection starts from (the upgrade's plan, and what the lifecycle adds). */
export interface ConnectionInit {
  id: string
  socket: WebSocket
  stream: Duplex | null
  profile: Profile | null
  /** `null`: none was given (an empty object is made if it is asked for). */
  metadata: Metadata | null
  home: string
  /**
   * The client's address, or `null` to read it from `peer` on first use: reading it is a system call
   * (getpeername) per upgrade, which most connections never need (the act route reads it at once where it decides
   * something: per-IP limits, or Fastify's `trustProxy`, whose address comes from the request's headers).
   */
  ip: string | null
  peer: AddressSource | null
  /** The connection's logger is a child of this one (made when it is first used), with `act` bound if given. */
  log: FastifyBaseLogger
  act: string | null
  onBinary: BinaryHandler | undefined
  limits: ConnectionLimits
  /** The node's metrics and taps (lib/observer.ts). */
  observer: Observer
}

function dropIfOpen (conn: Connection): void {
  if (conn.state === ConnectionState.CLOSED) return
  conn.debug({}, 'slow consumer did not complete the close: terminating')
  conn.terminate()
}

/**
 * One WebSocket client: its identity, its channels, its counters and the send path. Sends check the socket's
 * buffered bytes first: a client that stops reading is closed with 4008 once it passes `sendBufferLimit`, so a slow
 * consumer never makes the server's memory grow without bound.
 *
 * An idle connection should cost little beside its socket: what most connections never use (the rate bucket, the
 * abuse counters, the metadata object, the child logger) is made on first use, and nothing holds a timer of its own
 * (the token expiry is a slot in one queue, lib/deadlines.ts).
 */
export class Connection implements Deadlined {
  readonly id: string
  readonly profile: Profile | null
  readonly channels = new Set<string>()
  /** When it opened (epoch ms; a number, not a Date, to keep idle connections small). */
  readonly startedAt = Date.now()
  /** The channel the connection started in; direct messages carry it. */
  readonly home: string
  /** The route's binary frame handler (without one, a binary frame closes the connection with 1003). */
  readonly onBinary: BinaryHandler | undefined
  readonly observer: Observer
  /** The close code this side sent, once it started a close (0 before). */
  closeCode = 0
  state: ConnectionStateValue = ConnectionState.OPENING
  /** Set when a ping goes out, cleared by any traffic from the peer (heartbeat). */
  awaitingPong = false
  /** Frames that arrived while the connection was being registered (made on the first one). */
  pending: PendingFrames | null = null
  messagesIn = 0
  messagesOut = 0
  bytesIn = 0
  bytesOut = 0
  /** The token expiry's place in the expiry queue (lib/expiry.ts, lib/deadlines.ts). */
  deadline = 0
  deadlineSlot = -1
  readonly #socket: WebSocket
  /** The TCP stream under the socket, when broadcast frames may be written to it directly (lib/frame.ts). */
  readonly #stream: Duplex | null
  /** The tick the stream was last corked in (`writeFrame`'s stamp). */
  #corkedIn = 0
  readonly #limits: ConnectionLimits
  #ip: string | null
  readonly #peer: AddressSource | null
  #metadata: Metadata | null
  readonly #parentLog: FastifyBaseLogger
  readonly #act: string | null
  #log: FastifyBaseLogger | null = null
  // Made on first use: an idle connection sends nothing, and most never have a frame refused or a malformed one.
  #rate: TokenBucket | null = null
  #subscribes: TokenBucket | null = null
  #subscribeRefused: WindowCounter | null = null
  #refused: WindowCounter | null = null
  #badFrames: WindowCounter | null = null
  /** While a recovery is under way, every frame for the connection waits here, in order (lib/recovery.ts). */
  #held: Held | null = null

  constructor (init: ConnectionInit) {
    this.id = init.id
    this.#ip = init.ip
    this.#peer = init.peer
    this.#limits = init.limits
    this.#socket = init.socket
    this.#stream = init.stream
    this.profile = init.profile
    this.#metadata = init.metadata
    this.home = init.home
    this.onBinary = init.onBinary
    this.observer = init.observer
    this.#parentLog = init.log
    this.#act = init.act
  }

  /**
   * The client's address (`request.ip`, so it honours Fastify's `trustProxy`). Read from the socket on first use
   * where the upgrade did not need it: `''` if that is after the socket has gone.
   */
  get ip (): string {
    if (this.#ip === null) this.#ip = this.#peer?.remoteAddress ?? ''
    return this.#ip
  }

  /** What the upgrade attached (`ps.upgrade(channel, metadata)`); the application may add to it. */
  get metadata (): Metadata {
    return (this.#metadata ??= {})
  }

  /** The connection's logger: the upgrade's, with `connId`. */
  get log (): FastifyBaseLogger {
    return (this.#log ??= this.#parentLog.child(this.#act === null ? { connId: this.id } : { act: this.#act, connId: this.id }))
  }

  /**
   * A debug line with `connId`, through the connection's logger if it was made, else through the upgrade's: debug
   * lines are usually off and one is written on every close, so none of them makes a child logger.
   */
  debug (fields: Record<string, unknown>, message: string): void {
    if (this.#log !== null) this.#log.debug(fields, message)
    else this.#parentLog.debug(this.#act === null ? { connId: this.id, ...fields } : { act: this.#act, connId: this.id, ...fields }, message)
  }

  /** Inbound frames: `rateLimit.perSecond`, with `rateLimit.burst` saved up (full when first used, as at open). */
  get rate (): TokenBucket {
    return (this.#rate ??= new TokenBucket(this.#limits.rateLimit.perSecond, this.#limits.rateLimit.burst, Date.now()))
  }

  /** `subscribe` and `unsubscribe`: `subscribeRate.perSecond`, with `subscribeRate.burst` saved up. */
  get subscribes (): TokenBucket {
    return (this.#subscribes ??= new TokenBucket(this.#limits.subscribeRate.perSecond, this.#limits.subscribeRate.burst, Date.now()))
  }

  /**
   * Refused `subscribe` / `unsubscribe` in a window: more than a full burst and five seconds of the rate is a client
   * that keeps at it (a reconnecting client re-subscribing to its channels stays within the burst).
   */
  get subscribeRefused (): WindowCounter {
    const { perSecond, burst } = this.#limits.subscribeRate
    return (this.#subscribeRefused ??= new WindowCounter(burst + Math.ceil(perSecond * ABUSE_WINDOW_SECONDS), ABUSE_WINDOW_SECONDS * 1000))
  }

  /** "Sustained abuse": more frames refused in a window than the rate allows in that window. */
  get refused (): WindowCounter {
    return (this.#refused ??= new WindowCounter(this.#limits.rateLimit.perSecond * ABUSE_WINDOW_SECONDS, ABUSE_WINDOW_SECONDS * 1000))
  }

  /** Malformed frames in `badFrames.window`. */
  get badFrames (): WindowCounter {
    return (this.#badFrames ??= new WindowCounter(this.#limits.badFrames.max, this.#limits.badFrames.window))
  }

  /** When it opened. */
  get started (): Date {
    return new Date(this.startedAt)
  }

  get profileId (): string | null {
    return this.profile?.id ?? null
  }

  /**
   * Writes a whole text frame (`textFrame`), made once for every recipient of a broadcast: the same bytes go to
   * each socket, and nothing is allocated per recipient. Where frames can't be written directly
   * (permessage-deflate), its payload goes through ws. Returns false when the connection is not open or was just
   * closed for being a slow consumer.
   */
  sendFrame (frame: Buffer, channel?: string, seq?: number): boolean {
    if (this.#held !== null) return this.#hold(frame, channel, seq)
    if (!this.#writable()) return false
    // ws's own readyState too: once the peer's close frame arrived, ws has answered it, and no frame may follow.
    if (this.#stream !== null && this.#socket.readyState === 1) this.#corkedIn = writeFrame(this.#stream, frame, this.#corkedIn)
    else this.#socket.send(framePayload(frame), TEXT_FRAME)
    this.messagesOut++
    this.bytesOut += frame.length - headerLength(frame)
    return true
  }

  /** Open, and not a slow consumer (one whose send buffer is over its limit is closed with 4008 here). */
  #writable (): boolean {
    if (this.state >= ConnectionState.CLOSING) return false
    if (this.#socket.bufferedAmount > this.#limits.sendBufferLimit) {
      this.log.warn({ bufferedAmount: this.#socket.bufferedAmount }, 'slow consumer: closing')
      this.close(CloseCode.SLOW_CONSUMER, 'slow consumer: send buffer over its limit')
      // The close frame waits behind everything the client has not read. It gets `heartbeat.timeout` to read up
      // to it; then the TCP connection is dropped, instead of ws's 30 s wait for the closing handshake with the
      // whole send buffer held.
      setTimeout(dropIfOpen, this.#limits.heartbeat.timeout, this).unref()
      return false
    }
    return true
  }

  /** Sends one message to this connection alone: `text` is its encoding, when the caller has it already. */
  send (message: OutboundMessage, text = encode(message)): boolean {
    const frame = textFrame(text)
    if (this.observer.tapping) this.observer.sent(this, message.channel, message.cmd, frame.length - headerLength(frame), message.param)
    return this.sendFrame(frame, message.channel, message.seq)
  }

  /**
   * Holds back every frame for this connection, in order, until `release`: what a recovery does while it reads a
   * channel's history, so that no live message of the channel overtakes the answer and its replay. Holds nest; the
   * frames go out when the last is released. Held frames count against `sendBufferLimit` as unread ones do.
   */
  hold (): void {
    (this.#held ??= { count: 0, frames: [], bytes: 0 }).count++
  }

  /**
   * Ends one hold. `head` (an answer and its replay) goes out after what was held of other channels (before
   * everything, with `first`), and the held frames of each channel in `upTo` follow it, less those with a seq up to
   * the one `upTo` gives (the replay has them already).
   */
  release (head: readonly Buffer[], upTo: ReadonlyMap<string, number>, first = false): void {
    const held = this.#held
    if (held === null) return
    const before: HeldFrame[] = []
    const after: HeldFrame[] = []
    for (const entry of held.frames) {
      const last = entry.channel === undefined ? undefined : upTo.get(entry.channel)
      if (last === undefined) (first ? after : before).push(entry)
      else if (entry.seq === undefined || entry.seq > last) after.push(entry)
    }
    held.frames = before
    for (const frame of head) held.frames.push({ frame, channel: undefined, seq: undefined })
    for (const entry of after) held.frames.push(entry)
    if (--held.count > 0) return
    this.#held = null
    for (const entry of held.frames) this.sendFrame(entry.frame)
  }

  #hold (frame: Buffer, channel: string | undefined, seq: number | undefined): boolean {
    if (this.state === ConnectionState.CLOSING || this.state === ConnectionState.CLOSED) return false
    const held = this.#held as Held
    held.bytes += frame.length
    if (held.bytes > this.#limits.sendBufferLimit) {
      this.log.warn({ held: held.bytes }, 'slow consumer: frames held during a recovery over the send buffer limit: closing')
      this.#held = null
      this.close(CloseCode.SLOW_CONSUMER, 'slow consumer: send buffer over its limit')
      return false
    }
    held.frames.push({ frame, channel, seq })
    return true
  }

  /** Starts the closing handshake with a code and a reason (cut to 123 bytes). */
  close (code: number, reason: string): void {
    if (!isSendableCloseCode(code)) throw new errors.FST_SOCKET_INVALID_CLOSE_CODE(code)
    if (this.state === ConnectionState.CLOSING || this.state === ConnectionState.CLOSED) return
    this.state = ConnectionState.CLOSING
    this.closeCode = code
    this.#socket.close(code, closeReason(reason))
  }

  /** Drops the TCP connection at once, without a closing handshake (dead peers, shutdown stragglers). */
  terminate (): void {
    this.state = ConnectionState.CLOSING
    this.#socket.terminate()
  }

  ping (): void {
    this.awaitingPong = true
    this.#socket.ping()
  }

  /**
   * A ping from the peer: it is heard from, and the ping takes a token of the inbound rate like a frame. ws has
   * answered it already, so one over the rate is only counted as refused; sustained, as for frames, the connection
   * is closed with 1008.
   */
  pinged (): void {
    this.awaitingPong = false
    const now = Date.now()
    if (!this.rate.take(now) && this.refused.hit(now)) this.close(CloseCode.POLICY_VIOLATION, 'ping rate limit exceeded')
  }

  info (): ConnectionInfo {
    return {
      id: this.id,
      profileId: this.profileId,
      channels: [...this.channels],
      metadata: this.metadata,
      started: this.started.toISOString(),
      messagesIn: this.messagesIn,
      messagesOut: this.messagesOut,
      bytesIn: this.bytesIn,
      bytesOut: this.bytesOut,
      ip: this.ip,
      buffered: this.#socket.bufferedAmount
    }
  }
}
