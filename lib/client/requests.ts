import { ClientErrorCode, SocketError } from './errors.js'

/**
 * What is kept of a request with an `id` once it has been written to a connection, so that it can be sent again
 * with the same `id` (see Resender): its frame, when it first went out, and its "in progress" retry.
 */
export interface Written {
  readonly data: string
  readonly firstSentAt: number
  /** The last delay of the "in progress" retry (ms), 0 before the first. */
  delay: number
  retry: ReturnType<typeof setTimeout> | undefined
}

interface Pending {
  resolve: (value: unknown) => void
  reject: (error: SocketError) => void
  timer: ReturnType<typeof setTimeout> | undefined
  answered: ((value: unknown) => void) | undefined
  written: Written | undefined
}

/**
 * Request correlation: every message that expects an answer (a `request()`, a `subscribe`) carries a `ref`, and the
 * answer with that `ref` settles it. Owns the ref counter, the requests waiting for their answer and their timers.
 */
export class Requests {
  readonly #pending = new Map<string, Pending>()
  #refs = 0

  /** A `ref` no other message of this socket has had. */
  ref (): string {
    return `r${++this.#refs}`
  }

  /** Whether the message with `ref` still waits for its answer. */
  has (ref: string): boolean {
    return this.#pending.has(ref)
  }

  /**
   * A promise of the answer to the message with `ref`, rejected with FST_SOCKET_REQUEST_TIMEOUT after `timeout` ms
   * (never without one). `answered` sees the answer at once, before the frames after it: a promise's callbacks may
   * run only after several of them.
   */
  expect<T> (ref: string, cmd: string, timeout: number | undefined, answered?: (value: unknown) => void): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = timeout === undefined
        ? undefined
        : setTimeout(() => this.settle(ref, new SocketError(ClientErrorCode.REQUEST_TIMEOUT, `No answer to "${cmd}" within ${timeout} ms`)), timeout)
      this.#pending.set(ref, { resolve: resolve as (value: unknown) => void, reject, timer, answered, written: undefined })
    })
  }

  /** The request with `ref`, which has an `id`, was written to a connection as `data`; the first time is kept. */
  wrote (ref: string, data: string): void {
    const pending = this.#pending.get(ref)
    if (pending !== undefined && pending.written === undefined) pending.written = { data, firstSentAt: Date.now(), delay: 0, retry: undefined }
  }

  /** What was written of the request with `ref`, if it still waits and has an `id`. */
  written (ref: string): Written | undefined {
    return this.#pending.get(ref)?.written
  }

  /** The requests with an `id` that were written and still wait, by `ref`, the first sent first. */
  allWritten (): Array<[string, Written]> {
    const all: Array<[string, Written]> = []
    for (const [ref, { written }] of this.#pending) if (written !== undefined) all.push([ref, written])
    return all.sort((a, b) => a[1].firstSentAt - b[1].firstSentAt)
  }

  /** Resolves (without `error`) or rejects the message with `ref`; nothing if it has been settled already. */
  settle (ref: string, error: SocketError | undefined, value?: unknown): void {
    const pending = this.#pending.get(ref)
    if (pending === undefined) return
    this.#pending.delete(ref)
    clearTimeout(pending.timer)
    clearTimeout(pending.written?.retry)
    if (error !== undefined) return pending.reject(error)
    pending.resolve(value)
    pending.answered?.(value)
  }

  /** Rejects every message waiting for an answer, except those `kept` says still wait (queued, or to be resent). */
  rejectAll (error: SocketError, kept: (ref: string) => boolean): void {
    for (const ref of [...this.#pending.keys()]) if (!kept(ref)) this.settle(ref, error)
  }
}
