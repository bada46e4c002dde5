import type { Connection } from './connection.js'

/**
 * Finds dead peers with WebSocket pings: every `interval` each connection is pinged, and `timeout` later every
 * connection that has not been heard from since (a pong or any frame) is terminated. Two timers for the whole
 * server, none per connection.
 */
export class Heartbeat {
  readonly #connections: () => Iterable<Connection>
  readonly #interval: number
  readonly #timeout: number
  #ticker: NodeJS.Timeout | undefined
  #check: NodeJS.Timeout | undefined

  constructor (connections: () => Iterable<Connection>, interval: number, timeout: number) {
    this.#connections = connections
    this.#interval = interval
    this.#timeout = timeout
  }

  start (): void {
    this.#ticker = setInterval(() => this.#ping(), this.#interval).unref()
  }

  stop (): void {
    clearInterval(this.#ticker)
    clearTimeout(this.#check)
  }

  #ping (): void {
    for (const conn of this.#connections()) conn.ping()
    this.#check = setTimeout(() => this.#reap(), this.#timeout).unref()
  }

  #reap (): void {
    for (const conn of this.#connections()) {
      if (!conn.awaitingPong) continue
      conn.debug({}, 'no pong within the heartbeat timeout: terminating')
      conn.terminate()
    }
  }
}
