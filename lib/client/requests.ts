import { ClientErrorCode, SocketError } from './errors.js'

interface Pending {
  resolve: (value: unknown) => void
  reject: (error: SocketError) => void
  timer: ReturnType<typeof setTimeout> | undefined
  answered: ((value: unknown) => void) | undefined
}

/**
 * Request correlation: every message that expects an answer (a `request()`, a `subscribe`) carries a `ref`, and the
 * answer with that `ref` settles it. Owns the ref counter, the requests waiting for their answer and their timeouts.
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
        : setTimeout(() => {
          this.#pending.delete(ref)
          reject(new SocketError(ClientErrorCode.REQUEST_TIMEOUT, `No answer to "${cmd}" within ${timeout} ms`))
        }, timeout)
      this.#pending.set(ref, { resolve: resolve as (value: unknown) => void, reject, timer, answered })
    })
  }

  /** Resolves (without `error`) or rejects the message with `ref`; nothing if it has been settled already. */
  settle (ref: string, error: SocketError | undefined, value?: unknown): void {
    const pending = this.#pending.get(ref)
    if (pending === undefined) return
    this.#pending.delete(ref)
    clearTimeout(pending.timer)
    if (error !== undefined) return pending.reject(error)
    pending.resolve(value)
    pending.answered?.(value)
  }

  /** Rejects every message waiting for an answer, except those `stillQueued` says were never sent. */
  rejectAll (error: SocketError, stillQueued: (ref: string) => boolean): void {
    for (const ref of [...this.#pending.keys()]) {
      // Requests still in the queue were never sent: they wait for the next connection.
      if (!stillQueued(ref)) this.settle(ref, error)
    }
  }
}
