/**
 * Per-connection inbound limits. Both are plain counters read on each frame: no timers, nothing allocated per
 * message.
 */
import { Tally } from './tally.js'

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
    this.#refill(now)
    if (this.#tokens < 1) return false
    this.#tokens -= 1
    return true
  }

  /** ms until the next token (0 when there is one). */
  wait (now: number): number {
    this.#refill(now)
    return this.#tokens >= 1 ? 0 : Math.ceil(((1 - this.#tokens) * 1000) / this.#rate)
  }

  /** Whether the whole burst is saved up again (the bucket is as good as new). */
  full (now: number): boolean {
    this.#refill(now)
    return this.#tokens >= this.#burst
  }

  #refill (now: number): void {
    this.#tokens = Math.min(this.#burst, this.#tokens + ((now - this.#last) * this.#rate) / 1000)
    this.#last = now
  }
}

/** How often `RateByKey` forgets the keys whose buckets are full again. */
const SWEEP_INTERVAL = 10_000
/** The keys `RateByKey` holds at most (about 100 bytes each); past it, the oldest is forgotten. */
const MAX_KEYS = 100_000

/**
 * A token bucket per key (a client IP, a user id), for the connection rates. A key whose bucket is full again is
 * as good as new and is forgotten at the next sweep (at most one every 10 s, done by `take`), so the map holds
 * only the keys that connected recently.
 *
 * @example
 * const perIp = new RateByKey(20, 40)
 * const wait = perIp.take(request.ip, Date.now())   // 0, or ms until the next connection is allowed
 */
export class RateByKey {
  readonly #buckets = new Map<string, TokenBucket>()
  readonly #rate: number
  readonly #burst: number
  #swept = 0

  /** `rate` 0 means no limit (nothing is kept). */
  constructor (rate: number, burst: number) {
    this.#rate = rate
    this.#burst = burst
  }

  get size (): number {
    return this.#buckets.size
  }

  /** Takes one for `key`: 0 when it may go ahead, else the ms until it may. */
  take (key: string | null, now: number): number {
    if (this.#rate === 0 || key === null) return 0
    if (now - this.#swept >= SWEEP_INTERVAL) this.#sweep(now)
    let bucket = this.#buckets.get(key)
    if (bucket === undefined) {
      // A flood from more addresses than this is beyond what a per-key limit can hold off (a proxy or firewall's
      // job): the map stays bounded, and the key seen longest ago starts afresh.
      if (this.#buckets.size >= MAX_KEYS) this.#buckets.delete(this.#buckets.keys().next().value as string)
      this.#buckets.set(key, (bucket = new TokenBucket(this.#rate, this.#burst, now)))
    }
    return bucket.take(now) ? 0 : bucket.wait(now)
  }

  #sweep (now: number): void {
    this.#swept = now
    for (const [key, bucket] of this.#buckets) if (bucket.full(now)) this.#buckets.delete(key)
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
  readonly #counts = new Tally()
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
    if (this.#max !== 0 && key !== null) this.#counts.increment(key)
  }

  remove (key: string | null): void {
    if (this.#max !== 0 && key !== null) this.#counts.decrement(key)
  }
}

/**
 * The address block a connection rate counts an IP against: an IPv4 address itself, an IPv6 address's /64 (one
 * site's, which hands its hosts as many addresses as they like), an IPv4-mapped IPv6 address as IPv4; null without
 * an address.
 *
 * @example
 * addressBlock('2001:db8::1')   // '2001:db8:0:0::/64'
 */
export function addressBlock (ip: string | undefined): string | null {
  // `app.injectWS` requests have no address: no per-IP rate for them (the per-IP count holds them all under one
  // missing address).
  if (typeof ip !== 'string') return null
  if (!ip.includes(':')) return ip
  const address = ip.split('%')[0] as string
  const mapped = /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(address)
  if (mapped !== null) return mapped[1] as string
  const [head = '', tail] = address.split('::')
  const first = head === '' ? [] : head.split(':')
  const last = tail === undefined || tail === '' ? [] : tail.split(':')
  const groups = tail === undefined ? first : [...first, ...new Array<string>(Math.max(0, 8 - first.length - last.length)).fill('0'), ...last]
  return `${groups.slice(0, 4).map((group) => parseInt(group, 16).toString(16)).join(':')}::/64`
}
