import { Compile } from 'typebox/compile'
import { errors, firstError } from './errors.js'
import { textFrame } from './frame.js'
import { encode } from './codec.js'
import { Position, SinceMap, type SinceMapData } from '../schemas/envelope.js'
import type { StreamPage, StreamPosition } from './broker/broker.js'
import type { OutboundMessage } from '../schemas/envelope.js'

const sinceMap = Compile(SinceMap)
const position = Compile(Position)

/** The longest `since` query parameter accepted (base64url characters). */
export const MAX_SINCE_LENGTH = 8192

/** Why a recovery could not be proven: nothing is replayed then, and the app reloads what it shows. */
export type RecoveryReason = 'epoch' | 'expired' | 'too-many' | 'future'

/**
 * What a recovery answers, for one channel (`connected.param.recovery[channel]`, or in the `subscribe` reply): the
 * channel's position now, and whether every message after the client's was replayed.
 */
export interface Recovery extends StreamPosition {
  /** True when exactly the messages after the client's position follow, `replayed` of them, before any live one. */
  recovered: boolean
  replayed: number
  /**
   * Why not: the stream is another (`epoch`: new stream, store restarted or lost its data), the messages are gone
   * (`expired`: beyond `size` or `ttl`), too many are missing (`too-many`: over `maxRecover`), or the client's
   * seq is past the top (`future`).
   */
  reason?: RecoveryReason
}

/** A recovery's answer and the messages it replays, in seq order. */
export interface RecoveryResult {
  recovery: Recovery
  replay: OutboundMessage[]
}

/**
 * Decides a recovery from what the stream holds after the client's position (`page`, read with a limit of
 * `maxRecover`, and at least 1): never a partial replay, and `recovered` only where continuity is proven.
 */
export function recover (page: StreamPage, since: StreamPosition, maxRecover: number): RecoveryResult {
  const { epoch, seq } = page
  const refuse = (reason: RecoveryReason): RecoveryResult => ({ recovery: { recovered: false, epoch, seq, replayed: 0, reason }, replay: [] })
  if (since.epoch !== epoch) return refuse('epoch')
  if (since.seq > seq) return refuse('future')
  const missing = seq - since.seq
  const replay = page.messages.filter((message) => (message.seq as number) > since.seq)
  // Gone is gone, however many are missing: that comes first. Then too many to replay, though they are kept.
  if (missing > 0 && replay[0]?.seq !== since.seq + 1) return refuse('expired')
  if (missing > maxRecover) return refuse('too-many')
  if (replay.length !== missing) return refuse('expired')
  return { recovery: { recovered: true, epoch, seq, replayed: missing }, replay }
}

/** A recovery's answer frame first, then its replay: what a connection gets at once, in this order. */
export function replayFrames (head: OutboundMessage, replay: readonly OutboundMessage[]): Buffer[] {
  const frames = [textFrame(encode(head))]
  for (const message of replay) frames.push(textFrame(encode(message)))
  return frames
}

/**
 * The upgrade's `since` query parameter: base64url of `{ "<channel>": { "epoch": "…", "seq": N } }`. Anything else
 * (not base64url, not JSON, an empty epoch, a negative or fractional seq, more than 128 channels) is refused with
 * FST_SOCKET_BAD_REQUEST (HTTP 400, before the upgrade).
 */
export function parseSince (value: unknown): SinceMapData | null {
  if (value === undefined) return null
  if (typeof value !== 'string' || value.length === 0 || value.length > MAX_SINCE_LENGTH || !/^[A-Za-z0-9_-]+$/.test(value)) {
    throw new errors.FST_SOCKET_BAD_REQUEST(`since must be base64url (at most ${MAX_SINCE_LENGTH} characters) of a JSON object`)
  }
  let data: unknown
  try {
    data = JSON.parse(Buffer.from(value, 'base64url').toString('utf8'))
  } catch {
    throw new errors.FST_SOCKET_BAD_REQUEST('since is not base64url of JSON')
  }
  if (!sinceMap.Check(data)) throw new errors.FST_SOCKET_BAD_REQUEST(`since${firstError(sinceMap, data, '', 'is invalid')}`)
  return data
}

/** A `subscribe`'s `param.since`: absent, or a position; FST_SOCKET_BAD_REQUEST when it is anything else. */
export function subscribeSince (param: unknown): StreamPosition | undefined {
  if (typeof param !== 'object' || param === null) return undefined
  const since = (param as { since?: unknown }).since
  if (since === undefined) return undefined
  if (!position.Check(since)) throw new errors.FST_SOCKET_BAD_REQUEST(`param/since${firstError(position, since, '', 'is invalid')}`)
  return since
}
