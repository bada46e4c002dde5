import type { WebSocket } from 'ws'
import type { Tap, TapEvent } from '../observer.js'

/**
 * One admin's tap: the node's events as JSON text frames, each with the node's id. An admin that can't keep up
 * loses events, never the node's memory: past `bufferLimit` bytes waiting in the socket, events are dropped and
 * counted, and the next one that fits is preceded by `{ type: 'dropped', count }`.
 */
export class AdminTap implements Tap {
  readonly payloads: boolean
  readonly #socket: WebSocket
  readonly #node: string
  readonly #bufferLimit: number
  #dropped = 0

  constructor (socket: WebSocket, node: string, payloads: boolean, bufferLimit: number) {
    this.#socket = socket
    this.#node = node
    this.payloads = payloads
    this.#bufferLimit = bufferLimit
    this.#write({ type: 'hello', node, payloads })
  }

  /** How many events were dropped since the last `dropped` frame. */
  get dropped (): number {
    return this.#dropped
  }

  event (event: TapEvent): void {
    if (this.#socket.readyState !== 1) return
    if (this.#socket.bufferedAmount > this.#bufferLimit) {
      this.#dropped++
      return
    }
    if (this.#dropped > 0) {
      this.#write({ type: 'dropped', node: this.#node, count: this.#dropped })
      this.#dropped = 0
    }
    this.#write(Object.assign({ node: this.#node }, event))
  }

  /** A param has been through JSON already (decoded from the client, or encoded for it): it always serializes. */
  #write (frame: object): void {
    this.#socket.send(JSON.stringify(frame))
  }
}
