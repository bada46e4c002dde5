/** How long to wait between reconnection attempts. */
export interface BackoffOptions {
  /** Delay before the first retry, in ms. Default 500. */
  initialDelay: number
  /** The cap, in ms. Default 20000. */
  maxDelay: number
  /** Growth per attempt. Default 2. */
  factor: number
  /** 1 = full jitter (uniform between 0 and the delay), 0 = none; in between, that fraction of the delay is random. Default 1. */
  jitter: number
}

export const DEFAULT_BACKOFF: Readonly<BackoffOptions> = Object.freeze({ initialDelay: 500, maxDelay: 20_000, factor: 2, jitter: 1 })

/** A server that says it is overloaded (1013) is given this many more doublings before the next try. */
const OVERLOADED_STEPS = 3

/**
 * The delay before reconnection attempt `attempt` (0 for the first): exponential, capped at `maxDelay`, with
 * jitter so that many clients dropped at once do not all come back at the same moment.
 *
 * @example
 * backoffDelay(0, DEFAULT_BACKOFF)          // 0–500 ms
 * backoffDelay(10, DEFAULT_BACKOFF)         // 0–20000 ms
 */
export function backoffDelay (attempt: number, options: BackoffOptions, overloaded = false, random: () => number = Math.random): number {
  const steps = attempt + (overloaded ? OVERLOADED_STEPS : 0)
  const ceiling = Math.min(options.maxDelay, options.initialDelay * options.factor ** steps)
  return Math.round(ceiling * (1 - options.jitter * random()))
}

/**
 * The reconnection attempts in a row: how many there were, whether another may be made (`reconnect.maxAttempts`),
 * and the one timer of the next. `reconnect: false` makes none.
 */
export class Retries {
  readonly #backoff: BackoffOptions | null
  readonly #maxAttempts: number
  #attempts = 0
  #timer: ReturnType<typeof setTimeout> | undefined

  constructor (reconnect: (Partial<BackoffOptions> & { maxAttempts?: number }) | false | undefined) {
    this.#backoff = reconnect === false ? null : { ...DEFAULT_BACKOFF, ...reconnect }
    this.#maxAttempts = (reconnect === false ? undefined : reconnect?.maxAttempts) ?? Infinity
  }

  /** False with `reconnect: false`. */
  get enabled (): boolean {
    return this.#backoff !== null
  }

  /** Attempts made in a row since the last stable connection. */
  get attempts (): number {
    return this.#attempts
  }

  /** `maxAttempts` reached: no more. */
  get exhausted (): boolean {
    return this.#attempts >= this.#maxAttempts
  }

  /**
   * Runs `attempt` after the backoff delay plus the server's Retry-After (ms), if it gave one; returns the delay.
   * Added, not the larger of the two: clients refused at the same moment with the same Retry-After would otherwise
   * all come back at the same instant; the backoff's jitter spreads them.
   */
  schedule (overloaded: boolean, retryAfter: number, attempt: () => void): number {
    const delay = retryAfter + backoffDelay(this.#attempts++, this.#backoff ?? DEFAULT_BACKOFF, overloaded)
    this.#timer = setTimeout(() => {
      this.#timer = undefined
      attempt()
    }, delay)
    return delay
  }

  /** Runs the scheduled attempt now instead of after its delay; false when none is scheduled. */
  now (attempt: () => void): boolean {
    if (this.#timer === undefined) return false
    this.cancel()
    attempt()
    return true
  }

  /** A connection stayed up: the next drop starts again from the first delay. */
  reset (): void {
    this.#attempts = 0
  }

  cancel (): void {
    clearTimeout(this.#timer)
    this.#timer = undefined
  }
}
