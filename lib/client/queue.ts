import { ClientErrorCode, SocketError } from './errors.js'

/** Bounds of the queue that holds messages sent while the socket is not open. */
export interface QueueOptions {
  /** Most messages held. Default 1000. */
  max: number
  /** Most bytes (of serialized JSON) held. Default 1 MiB. */
  maxBytes: number
  /** A message older than this (ms) is dropped instead of sent; 0 = never. Default 0. */
  ttl: number
  /** When full: drop the oldest, drop the new one, or throw from `send`. Default 'drop-oldest'. */
  overflow: 'drop-oldest' | 'drop-newest' | 'error'
}

export const DEFAULT_QUEUE: Readonly<QueueOptions> = Object.freeze({ max: 1000, maxBytes: 1_048_576, ttl: 0, overflow: 'drop-oldest' as const })

/** One message waiting to be sent. */
export interface Queued {
  /** The serialized frame. */
  data: string
  /** Its size in bytes (UTF-8). */
  bytes: number
  /** When it was queued (ms, from the queue's clock). */
  at: number
  /** The `ref` of a request waiting for its answer, so the request can be rejected if the message is dropped. */
  ref?: string | undefined
  /** The message's `id` (none on the reserved commands), so that one queued past the server's dedupe window is dropped. */
  id?: string | undefined
}

/** Why a message was dropped: `dedupe-window` is a message older than the server's dedupe window (docs/client.md). */
export type DropReason = 'overflow' | 'expired' | 'too-large' | 'closed' | 'dedupe-window'

/** Thrown by `push` when the policy is 'error' and the queue is full: a SocketError, like every error of the client. */
export class QueueFullError extends SocketError {
  declare readonly code: typeof ClientErrorCode.QUEUE_FULL
  constructor (max: number, maxBytes: number) {
    super(ClientErrorCode.QUEUE_FULL, `The send queue is full (${max} messages or ${maxBytes} bytes)`)
  }
}

const encoder = new TextEncoder()

/**
 * A bounded FIFO of outgoing frames. Nothing leaves it silently: every message it drops is handed to `onDrop`.
 * Time comes from `now`, so tests can drive it with a fake clock.
 */
export class OutboundQueue {
  readonly #options: QueueOptions
  readonly #onDrop: (item: Queued, reason: DropReason) => void
  readonly #now: () => number
  #items: Queued[] = []
  #bytes = 0

  constructor (options: QueueOptions, onDrop: (item: Queued, reason: DropReason) => void, now: () => number = Date.now) {
    this.#options = options
    this.#onDrop = onDrop
    this.#now = now
  }

  get length (): number {
    return this.#items.length
  }

  get bytes (): number {
    return this.#bytes
  }

  /** Tells whether the request with this `ref` is still waiting in the queue. */
  has (ref: string): boolean {
    return this.#items.some((item) => item.ref === ref)
  }

  /** Queues a frame, applying the overflow policy. Throws QueueFullError under the 'error' policy. */
  push (data: string, ref?: string, id?: string): void {
    const item: Queued = { data, bytes: encoder.encode(data).length, at: this.#now(), ref, id }
    if (item.bytes > this.#options.maxBytes) return this.#onDrop(item, 'too-large')
    const fits = (): boolean => this.#items.length < this.#options.max && this.#bytes + item.bytes <= this.#options.maxBytes
    this.#expire()
    if (!fits()) {
      if (this.#options.overflow === 'error') throw new QueueFullError(this.#options.max, this.#options.maxBytes)
      if (this.#options.overflow === 'drop-newest') return this.#onDrop(item, 'overflow')
      while (!fits()) this.#drop(this.#items[0] as Queued, 'overflow')
    }
    this.#items.push(item)
    this.#bytes += item.bytes
  }

  /** Takes every frame still within its TTL, oldest first; the expired ones are reported. */
  drain (): Queued[] {
    this.#expire()
    const items = this.#items
    this.#items = []
    this.#bytes = 0
    return items
  }

  /** Empties the queue, reporting every message as dropped for `reason`. */
  clear (reason: DropReason): void {
    for (const item of this.drain()) this.#onDrop(item, reason)
  }

  #expire (): void {
    if (this.#options.ttl <= 0) return
    const oldest = this.#now() - this.#options.ttl
    while (this.#items.length > 0 && (this.#items[0] as Queued).at < oldest) this.#drop(this.#items[0] as Queued, 'expired')
  }

  #drop (item: Queued, reason: DropReason): void {
    this.#items.shift()
    this.#bytes -= item.bytes
    this.#onDrop(item, reason)
  }
}
