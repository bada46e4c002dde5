/**
 * A count per key that forgets a key when its count falls to zero, so churn leaves nothing behind: the open
 * connections of an IP address or a user (lib/limits.ts), a user's connections in a channel (lib/channels.ts).
 * Read like the Map it is.
 *
 * @example
 * const users = new Tally()
 * users.increment('ann')   // 1: ann's first
 * users.decrement('ann')   // 0: gone, and no longer a key
 */
export class Tally<K = string> extends Map<K, number> {
  /** Adds one; returns the new count. */
  increment (key: K): number {
    const count = (this.get(key) ?? 0) + 1
    this.set(key, count)
    return count
  }

  /** Takes one away; returns what is left (0: the key is gone). */
  decrement (key: K): number {
    const count = (this.get(key) ?? 1) - 1
    if (count <= 0) this.delete(key)
    else this.set(key, count)
    return Math.max(0, count)
  }
}
