/**
 * Per-connection inbound limits. Both are plain counters read on each frame: no timers, nothing allocated per
 * message.
 */

/**
 * A token bucket: `rate` tokens a second, at most `burst` saved up. Each frame takes one.
 *
 * @example
 * const bucket = new TokenBucket(100, 200, Date.now())
 * if (!bucket.take(Date.now())) refuse()
 */
export class TokenBucket {
  readonly #rate: number
  readonly #burst: number
  #tokens: number
  #last: number

  constructor (rate: number, burst: number, now: number) {
    this.#rate = rate
    this.#burst = burst
    this.#tokens = burst
    this.#last = now
  }

  /** Takes a token if there is one. */
  take (now: number): boolean {
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) * this.#rate) / 1000)
    this.#last = now
    if (this.#tokens < 1) return false
    this.#tokens -= 1
    return true
  }
}

/**
 * Counts events in fixed windows of `window` ms and says when one window has had more than `max`.
 *
 * @example
 * const bad = new WindowCounter(20, 10_000)
 * if (bad.hit(Date.now())) close(1008)
 */
export class WindowCounter {
  readonly #max: number
  readonly #window: number
  #start = 0
  #count = 0

  constructor (max: number, window: number) {
    this.#max = max
    this.#window = window
  }

  /** Counts one event; true when the current window is over its maximum. */
  hit (now: number): boolean {
    if (now - this.#start >= this.#window) {
      this.#start = now
      this.#count = 0
    }
    this.#count++
    return this.#count > this.#max
  }
}

/**
 * Open connections per key (an IP address, a user id), for the per-IP and per-user limits. A key is removed with
 * its last connection, so the map holds only what is open.
 */
export class ConnectionCounter {
  readonly #counts = new Map<string, number>()
  readonly #max: number

  /** `max` 0 means no limit (nothing is counted). */
  constructor (max: number) {
    this.#max = max
  }

  get size (): number {
    return this.#counts.size
  }

  /** Whether one more connection for `key` stays within the limit. */
  allows (key: string | null): boolean {
    return this.#max === 0 || key === null || (this.#counts.get(key) ?? 0) < this.#max
  }

  add (key: string | null): void {
    if (this.#max === 0 || key === null) return
    this.#counts.set(key, (this.#counts.get(key) ?? 0) + 1)
  }

  remove (key: string | null): void {
    if (this.#max === 0 || key === null) return
    const count = (this.#counts.get(key) ?? 1) - 1
    if (count <= 0) this.#counts.delete(key)
    else this.#counts.set(key, count)
  }
}
