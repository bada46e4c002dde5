import type { SubscribeAnswer } from './subscriptions.js'
import type { ChannelPosition, Message, RecoveryResult, ServerParam } from './types.js'

/** The most channels the server takes in the upgrade's `since` (more is HTTP 400). */
export const MAX_SINCE_CHANNELS = 128

/** The longest `since` the server takes, in base64url characters (longer is HTTP 400). */
export const MAX_SINCE_LENGTH = 8192

/** Where the positions tell what they see (the Socket's Emitter). */
export interface RecoveryReporter {
  /** How a channel came back (a recovery's answer, or a `channel-reset`), for the `onRecover` listeners. */
  recovered (channel: string, result: RecoveryResult): void
  log (line: string): void
}

const encoder = new TextEncoder()

/**
 * Where each channel with history stands, and what follows from it. A position moves only with its own channel's
 * messages and answers: `connected`'s `positions` and `recovery`, a subscribe's answer, each numbered message of a
 * tracked channel (one whose epoch is known on this connection), a `channel-reset`. A message of a tracked channel
 * at or below its position is a duplicate and is dropped. Channels without history are never tracked: their seq is
 * per server node and starts again. After a lost connection the positions go back as `since`, in the upgrade's URL
 * for the channels the server put the connection in, in the re-subscribe for the others.
 */
export class Positions {
  readonly #out: RecoveryReporter
  /** The last position of each channel, kept across connections for the next `since`. */
  readonly #last = new Map<string, ChannelPosition>()
  /** The channels with history on the current connection: their messages are deduped and move their position. */
  readonly #tracked = new Set<string>()
  /** The channels whose position came with a subscribe's answer: kept for the re-subscribe, given or not. */
  readonly #subscribed = new Set<string>()
  /** The channels with history the server put the last connection in (its `connected.param.positions`). */
  #given: string[] = []
  /** The channels the current attempt's URL was to carry a position for (the cap may have left some out). */
  #asked = new Set<string>()

  constructor (out: RecoveryReporter) {
    this.#out = out
  }

  /** A copy of every position kept, by channel. */
  get snapshot (): Record<string, ChannelPosition> {
    const copy: Record<string, ChannelPosition> = {}
    for (const [channel, { epoch, seq }] of this.#last) copy[channel] = { epoch, seq }
    return copy
  }

  /**
   * The upgrade's `since` for a new attempt: the positions of the channels the server put the last connection in,
   * as many as fit (`encodeSince`); undefined when there are none (a first connection).
   */
  query (): string | undefined {
    const entries: Array<[string, ChannelPosition]> = []
    for (const channel of this.#given) {
      const position = this.#last.get(channel)
      if (position !== undefined) entries.push([channel, position])
    }
    this.#asked = new Set(entries.map(([channel]) => channel))
    const { value, left } = encodeSince(entries)
    if (left.length > 0) this.#out.log(`since: ${left.length} of ${entries.length} channels left out (${MAX_SINCE_CHANNELS} channels, ${MAX_SINCE_LENGTH} characters at most)`)
    return value === '' ? undefined : value
  }

  /** The position to recover `channel` from in its subscribe, if there is one. */
  from (channel: string): ChannelPosition | undefined {
    return this.#last.get(channel)
  }

  /**
   * A new connection's `connected`: each channel with history it is in is tracked from here, from its recovery when
   * there is one. A channel whose position the URL was to carry and that got no answer is reported not recovered.
   */
  connected (param: ServerParam<'connected'>): void {
    this.#tracked.clear()
    const recovery = param.recovery ?? {}
    const given = new Set<string>()
    for (const [channel, position] of Object.entries(param.positions ?? {})) {
      if (!isPosition(position)) continue
      given.add(channel)
      const answer = recovery[channel]
      if (isPosition(answer)) this.#answer(channel, answer)
      else if (this.#asked.has(channel)) this.#lost(channel, position, undefined)
      else this.#track(channel, position)
    }
    // A channel the connection is no longer in, and that the app does not subscribe to, has nothing to recover.
    for (const channel of this.#given) if (!given.has(channel) && !this.#subscribed.has(channel)) this.#last.delete(channel)
    this.#given = [...given]
    this.#asked = new Set()
  }

  /**
   * A subscribe's answer. With a recovery, that; with a position alone, where the channel starts (unless it is
   * tracked in the same stream already: a channel the connection was in, whose messages moved it); with neither,
   * the channel keeps no history and is not tracked.
   */
  subscribed (answer: SubscribeAnswer): void {
    const { channel } = answer
    if (!isPosition(answer)) return this.forget(channel)
    this.#subscribed.add(channel)
    if (typeof answer.recovered === 'boolean') return this.#answer(channel, answer as RecoveryResult)
    if (this.#tracked.has(channel) && this.#last.get(channel)?.epoch === answer.epoch) return
    this.#track(channel, answer)
  }

  /**
   * Whether `message` goes on to the listeners: false for a duplicate (a seq at or below its tracked channel's
   * position). A numbered message of a tracked channel moves its position; a `channel-reset` sets it.
   */
  heard (message: Message): boolean {
    const { channel, seq } = message
    if (message.cmd === 'channel-reset') {
      const param = message.param as ServerParam<'channel-reset'>
      if (isPosition(param)) this.#lost(channel, param, typeof param.reason === 'string' ? param.reason : undefined)
      return true
    }
    if (!Number.isSafeInteger(seq) || !this.#tracked.has(channel)) return true
    const last = this.#last.get(channel) as ChannelPosition
    if ((seq as number) <= last.seq) {
      this.#out.log(`duplicate ${channel}:${seq as number} dropped`)
      return false
    }
    // A gap on a live connection: the server says so with a channel-reset.
    if ((seq as number) > last.seq + 1) this.#out.log(`gap ${channel}: ${last.seq} to ${seq as number}`)
    this.#last.set(channel, { epoch: last.epoch, seq: seq as number })
    return true
  }

  /** The channel is left (or refused): its position is of no use any more. */
  forget (channel: string): void {
    this.#last.delete(channel)
    this.#tracked.delete(channel)
    this.#subscribed.delete(channel)
  }

  /**
   * A recovery's answer. Recovered, the position stays where the replay starts (what the client sent), and the
   * replay moves it to the top: set to the top at once, the replay would be dropped as duplicates. Not recovered,
   * it is the answer's.
   */
  #answer (channel: string, answer: RecoveryResult): void {
    const { epoch, seq, replayed } = answer
    if (answer.recovered !== true || !Number.isSafeInteger(replayed) || replayed < 0 || replayed > seq) {
      return this.#lost(channel, answer, typeof answer.reason === 'string' ? answer.reason : undefined)
    }
    this.#track(channel, { epoch, seq: seq - replayed })
    this.#out.recovered(channel, { recovered: true, epoch, seq, replayed })
  }

  /** Continuity is not proven: the channel starts again at `position`, and the app is told. */
  #lost (channel: string, position: ChannelPosition, reason: string | undefined): void {
    const { epoch, seq } = position
    this.#track(channel, position)
    this.#out.recovered(channel, reason === undefined ? { recovered: false, epoch, seq, replayed: 0 } : { recovered: false, epoch, seq, replayed: 0, reason })
  }

  #track (channel: string, { epoch, seq }: ChannelPosition): void {
    this.#last.set(channel, { epoch, seq })
    this.#tracked.add(channel)
  }
}

/**
 * The upgrade's `since` value: base64url (no padding) of `{ "<channel>": { "epoch": "…", "seq": N } }`, with as
 * many of `entries` as the server takes (`MAX_SINCE_CHANNELS`, `MAX_SINCE_LENGTH`), in their order; `left` names
 * the channels that did not fit. `value` is empty when none did.
 *
 * @example
 * encodeSince([['chat-room-lobby', { epoch: 'Zx3…', seq: 41 }]]).value // 'eyJjaGF0LXJvb20tbG9iYnkiOnsi…'
 */
export function encodeSince (entries: Iterable<readonly [string, ChannelPosition]>): { value: string, left: string[] } {
  const parts: string[] = []
  const left: string[] = []
  let bytes = 2
  for (const [channel, { epoch, seq }] of entries) {
    const part = `${JSON.stringify(channel)}:${JSON.stringify({ epoch, seq })}`
    const size = encoder.encode(part).length + (parts.length > 0 ? 1 : 0)
    // Base64 makes 4 characters of every 3 bytes (no padding: the last 1 or 2 bytes make 2 or 3).
    if (parts.length === MAX_SINCE_CHANNELS || Math.ceil((bytes + size) * 4 / 3) > MAX_SINCE_LENGTH) left.push(channel)
    else {
      parts.push(part)
      bytes += size
    }
  }
  return { value: parts.length === 0 ? '' : base64url(`{${parts.join(',')}}`), left }
}

/** A position the server accepts back: a non-empty epoch of at most 64 characters, an integer seq ≥ 0. */
function isPosition (value: unknown): value is ChannelPosition {
  if (typeof value !== 'object' || value === null) return false
  const { epoch, seq } = value as Partial<ChannelPosition>
  return typeof epoch === 'string' && epoch.length > 0 && epoch.length <= 64 && Number.isSafeInteger(seq) && (seq as number) >= 0
}

/** UTF-8, then base64url without padding (`btoa` is in browsers and Node alike). */
function base64url (text: string): string {
  let binary = ''
  for (const byte of encoder.encode(text)) binary += String.fromCharCode(byte)
  return btoa(binary).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '')
}
