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
