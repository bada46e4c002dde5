import { randomBytes } from 'node:crypto'
import type { HistorySettings, StreamPage, StreamPosition } from './broker.js'
import type { OutboundMessage } from '../../schemas/envelope.js'

/** How often, at most, `append` forgets the streams whose position has expired (abandoned channels). */
const SWEEP_INTERVAL = 10_000

/** One channel's stream: its position, and its last `size` messages (an array, trimmed from the front). */
interface Stream {
  epoch: string
  /** The seq of the newest message (0: none yet). */
  top: number
  /** The newest messages, oldest first (at most `size`). */
  messages: OutboundMessage[]
  /** When the last message was appended (epoch ms). */
  touched: number
  /** Its position's TTL, as its channel's settings last said (for the sweep). */
  metaTtl: number
}

/** A new epoch: 16 random characters of base64url, so two streams (or two lives of one) never share one. */
export function newEpoch (): string {
  return randomBytes(12).toString('base64url')
}

/**
 * The memory broker's channel streams, in process: the same semantics as a store every node shares (the hub the
 * nodes are on holds it). A channel's messages are forgotten `ttl` ms after its last append; its position
 * (epoch and top seq) `metaTtl` ms after it, and a stream begun again then has a new epoch. A restart of the
 * process begins every stream with a new epoch. Expiry is checked when a stream is used, and abandoned streams
 * are swept at most every 10 s, by `append`: no timers.
 *
 * @example
 * const streams = new Streams()
 * const { epoch, seq } = streams.append('chat-lobby', { channel: 'chat-lobby', cmd: 'say', param: 'hi' }, settings)
 */
export class Streams {
  readonly #streams = new Map<string, Stream>()
  #swept = 0

  get size (): number {
    return this.#streams.size
  }

  /** Numbers a message with the channel's next seq and keeps it; returns the position it was given. */
  append (channel: string, message: OutboundMessage, settings: HistorySettings, now = Date.now()): StreamPosition {
    this.#sweep(now)
    const stream = this.#stream(channel, settings, now)
    const seq = ++stream.top
    stream.messages.push(Object.assign({}, message, { seq }))
    if (stream.messages.length > settings.size) stream.messages.splice(0, stream.messages.length - settings.size)
    stream.touched = now
    stream.metaTtl = settings.metaTtl
    return { epoch: stream.epoch, seq }
  }

  /** The channel's position: its epoch and newest seq (a stream that does not exist yet begins here, at 0). */
  position (channel: string, settings: HistorySettings, now = Date.now()): StreamPosition {
    const stream = this.#stream(channel, settings, now)
    return { epoch: stream.epoch, seq: stream.top }
  }

  /**
   * Up to `limit` kept messages: those after `since` when it is of the channel's epoch (the oldest first), else the
   * newest ones.
   */
  read (channel: string, since: StreamPosition | undefined, limit: number, settings: HistorySettings, now = Date.now()): StreamPage {
    const stream = this.#stream(channel, settings, now)
    const { messages } = stream
    const after = since !== undefined && since.epoch === stream.epoch
      ? messages.filter((message) => (message.seq as number) > since.seq).slice(0, limit)
      : messages.slice(Math.max(0, messages.length - limit))
    return { epoch: stream.epoch, seq: stream.top, messages: after }
  }

  /** The channel's stream as it stands now: messages past `ttl` dropped, a position past `metaTtl` begun anew. */
  #stream (channel: string, settings: HistorySettings, now: number): Stream {
    let stream = this.#streams.get(channel)
    if (stream === undefined || now - stream.touched > settings.metaTtl) {
      stream = { epoch: newEpoch(), top: 0, messages: [], touched: now, metaTtl: settings.metaTtl }
      this.#streams.set(channel, stream)
    } else if (stream.messages.length > 0 && now - stream.touched > settings.ttl) {
      stream.messages = []
    }
    return stream
  }

  /** Forgets the streams whose position has expired. */
  #sweep (now: number): void {
    if (now - this.#swept < SWEEP_INTERVAL) return
    this.#swept = now
    for (const [channel, stream] of this.#streams) {
      if (now - stream.touched > stream.metaTtl) this.#streams.delete(channel)
    }
  }
}
