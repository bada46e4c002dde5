import type { FastifyBaseLogger } from 'fastify'
import type { StreamPage, StreamPosition } from './broker/broker.js'
import type { OutboundMessage } from '../schemas/envelope.js'

/** The most messages one gap fill reads (a channel keeps at most 10,000): a longer gap is a reset. */
const MAX_FILL = 10_000

/** Why the members of a channel were told `channel-reset`: its stream began again, or messages were lost for good. */
export type ResetReason = 'epoch' | 'gap'

/** What continuity needs of the cluster: delivery to this node's members, the channel's stream, and a logger. */
export interface ContinuityHost {
  /** Writes a message to this node's members of the channel, as it is; returns how many it was written to. */
  deliver: (channel: string, message: OutboundMessage) => number
  /** The stream's messages after `since` (at most `limit`); null when the channel keeps no history (any more). */
  read: (channel: string, since: StreamPosition, limit: number) => Promise<StreamPage | null>
  /** Where the stream stands; null when the channel keeps no history. */
  position: (channel: string) => Promise<StreamPosition | null>
  log: FastifyBaseLogger
}

/** One channel with history that this node has members in: what it has delivered to them, and what waits. */
interface Tracker {
  /** The stream this node's members are in; null until the first message or position. */
  epoch: string | null
  /** The last seq delivered to them. */
  seq: number
  /** The epoch before a reset: its stragglers are dropped. */
  previous: string | null
  /** Messages past a gap, by seq, until it is filled. */
  waiting: Map<number, OutboundMessage> | null
  /** This node's own appends not answered yet: they may be what is missing. */
  appending: number
  /** A read of the stream is under way to fill a gap. */
  filling: boolean
}

/**
 * Gap healing: every channel with history that has members here gets its messages in seq order, each once, however
 * they come (this node's appends answer on one Redis connection, other nodes' messages arrive on another, and
 * pub/sub drops messages while a connection is down). A message past a gap waits while the gap is filled from the
 * stream, once for all of the node's members; what the stream no longer has, or a stream that began again (Redis
 * lost its data), is told to the members as `channel-reset` `{ epoch, seq, reason }` before the next message, so
 * their apps reload. After the broker resubscribes (`resumed`), each channel is checked against the stream's top,
 * so a lost last message is found too.
 */
export class Continuity {
  readonly #host: ContinuityHost
  readonly #channels = new Map<string, Tracker>()

  constructor (host: ContinuityHost) {
    this.#host = host
  }

  /** This node has its first member in a channel with history. */
  track (channel: string): void {
    if (!this.#channels.has(channel)) this.#channels.set(channel, { epoch: null, seq: 0, previous: null, waiting: null, appending: 0, filling: false })
  }

  /** Its last member here left. */
  untrack (channel: string): void {
    this.#channels.delete(channel)
  }

  /** Where the stream stood when a member joined: the start, if nothing has come yet. */
  known (channel: string, position: StreamPosition): void {
    const tracker = this.#channels.get(channel)
    if (tracker === undefined || tracker.epoch !== null) return
    tracker.epoch = position.epoch
    tracker.seq = position.seq
  }

  /**
   * What this node has delivered to its members of a channel (null: nothing yet, or no member here). Messages after
   * it are still to come through here, in order, even where the stream has them already.
   */
  delivered (channel: string): StreamPosition | null {
    const tracker = this.#channels.get(channel)
    return tracker === undefined || tracker.epoch === null ? null : { epoch: tracker.epoch, seq: tracker.seq }
  }

  /** One of this node's appends is under way. */
  appending (channel: string): void {
    const tracker = this.#channels.get(channel)
    if (tracker !== undefined) tracker.appending++
  }

  /**
   * …and was answered with the message numbered (or failed: null). Returns how many members it was written to now
   * (0 when it waits behind a gap).
   */
  appended (channel: string, message: OutboundMessage | null, epoch: string): number {
    const tracker = this.#channels.get(channel)
    if (tracker === undefined) return message === null ? 0 : this.#host.deliver(channel, message)
    tracker.appending = Math.max(0, tracker.appending - 1)
    if (message !== null) return this.#arrive(tracker, channel, message, epoch)
    if (tracker.waiting !== null) this.#fill(tracker, channel)
    return 0
  }

  /** A message of a channel with history from another node. */
  receive (channel: string, message: OutboundMessage, epoch: string): void {
    const tracker = this.#channels.get(channel)
    if (tracker === undefined) this.#host.deliver(channel, message)
    else this.#arrive(tracker, channel, message, epoch)
  }

  /** The broker is back after an outage: messages may have been lost meanwhile, the last one included. */
  resumed (): void {
    for (const [channel, tracker] of this.#channels) {
      void this.#host.position(channel).then((position) => {
        if (position === null || this.#channels.get(channel) !== tracker) return
        if (tracker.epoch === null) return this.known(channel, position)
        if (position.epoch !== tracker.epoch) return this.#reset(tracker, channel, position.epoch, position.seq, 'epoch')
        if (position.seq > tracker.seq) this.#fill(tracker, channel, position.seq)
      }, (err: unknown) => { this.#host.log.warn({ err, channel }, 'history: the stream could not be checked after the broker came back') })
    }
  }

  #arrive (tracker: Tracker, channel: string, message: OutboundMessage, epoch: string): number {
    const seq = message.seq as number
    if (tracker.epoch === null) {
      tracker.epoch = epoch
      tracker.seq = seq - 1
    } else if (epoch !== tracker.epoch) {
      if (epoch === tracker.previous) return 0
      // The stream began again (Redis restarted or lost the channel's keys): whatever this node had is gone.
      this.#reset(tracker, channel, epoch, seq - 1, 'epoch')
    }
    if (seq <= tracker.seq) return 0
    if (seq === tracker.seq + 1) {
      tracker.seq = seq
      const delivered = this.#host.deliver(channel, message)
      this.#drain(tracker, channel)
      return delivered
    }
    ;(tracker.waiting ??= new Map()).set(seq, message)
    // This node's own appends, still unanswered, may be what is missing: they are waited for first.
    if (tracker.waiting !== null && tracker.appending === 0) this.#fill(tracker, channel)
    return 0
  }

  /** Delivers what waits, in order, as far as it goes without a gap. */
  #drain (tracker: Tracker, channel: string): void {
    const waiting = tracker.waiting
    if (waiting === null) return
    for (let next = waiting.get(tracker.seq + 1); next !== undefined; next = waiting.get(tracker.seq + 1)) {
      waiting.delete(tracker.seq + 1)
      tracker.seq++
      this.#host.deliver(channel, next)
    }
    for (const seq of waiting.keys()) if (seq <= tracker.seq) waiting.delete(seq)
    if (waiting.size === 0) tracker.waiting = null
  }

  /** Reads what is missing (up to the first message that waits, or `upTo`) from the stream, once for every member. */
  #fill (tracker: Tracker, channel: string, upTo?: number): void {
    if (tracker.filling) return
    const epoch = tracker.epoch as string
    const from = tracker.seq
    const until = upTo ?? firstWaiting(tracker) - 1
    if (!(until > from)) return this.#drain(tracker, channel)
    tracker.filling = true
    this.#host.read(channel, { epoch, seq: from }, Math.min(MAX_FILL, until - from)).then((page) => {
      tracker.filling = false
      if (page === null || this.#channels.get(channel) !== tracker) return
      if (page.epoch !== tracker.epoch) return this.#reset(tracker, channel, page.epoch, until, 'epoch')
      if (tracker.seq !== from) return this.#drain(tracker, channel)
      const missing = page.messages.filter((m) => (m.seq as number) > from && (m.seq as number) <= until)
      if (missing.length === until - from && missing[0]?.seq === from + 1) {
        for (const message of missing) {
          tracker.seq = message.seq as number
          this.#host.deliver(channel, message)
        }
      } else {
        this.#reset(tracker, channel, epoch, until, 'gap')
      }
      this.#drain(tracker, channel)
      if (tracker.waiting !== null && tracker.appending === 0) this.#fill(tracker, channel)
    }, (err: unknown) => {
      tracker.filling = false
      if (this.#channels.get(channel) !== tracker) return
      this.#host.log.warn({ err, channel }, 'history: a gap could not be read from the stream')
      this.#reset(tracker, channel, epoch, until, 'gap')
      this.#drain(tracker, channel)
    })
  }

  /** Tells the channel's members here that what they have is not continuous with what follows (at `seq`). */
  #reset (tracker: Tracker, channel: string, epoch: string, seq: number, reason: ResetReason): void {
    if (epoch !== tracker.epoch) {
      tracker.previous = tracker.epoch
      tracker.waiting = null
    }
    tracker.epoch = epoch
    tracker.seq = seq
    this.#host.log.warn({ channel, epoch, seq, reason }, 'history: members told channel-reset')
    this.#host.deliver(channel, { channel, cmd: 'channel-reset', param: { epoch, seq, reason } })
  }
}

/** The lowest seq that waits (Infinity when none does). */
function firstWaiting (tracker: Tracker): number {
  let first = Infinity
  for (const seq of tracker.waiting?.keys() ?? []) if (seq < first) first = seq
  return first
}
