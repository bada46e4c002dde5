import type { Reporter } from './emitter.js'
import { ClientErrorCode, SocketError } from './errors.js'
import type { SocketOptions } from './options.js'
import { DEFAULT_QUEUE, OutboundQueue, type DropReason, type Queued } from './queue.js'
import type { Requests } from './requests.js'
import type { Resender } from './resend.js'
import type { ChannelPosition, WebSocketLike } from './types.js'

/** What the outbox needs from the Socket. */
export interface OutboxHost {
  /** The open connection, or null: then a message is queued. */
  open (): WebSocketLike | null
  /** The socket is closed for good: then a message is dropped at once. */
  closed (): boolean
}

/**
 * Every message the client sends, as its frame: `param` null when there is none, `ref` only when an answer is
 * wanted, `id` on application messages (JSON leaves out the keys that are undefined).
 */
export function encode (channel: string, cmd: string, param: unknown, ref?: string, id?: string): string {
  return JSON.stringify({ channel, cmd, param: param ?? null, ref, id })
}

/**
 * What the socket sends: messages and requests, framed with their `id`, sent at once on an open connection, else
 * held in the bounded queue until the next connection is set up; and the subscribes of a connection's setup, sent
 * ahead of the queue. Nothing is lost silently: a dropped message rejects its request, or is reported.
 */
export class Outbox {
  readonly #queue: OutboundQueue
  readonly #requests: Requests
  readonly #resender: Resender
  readonly #out: Reporter
  readonly #host: OutboxHost

  constructor (options: Pick<SocketOptions, 'queue'>, requests: Requests, resender: Resender, out: Reporter, host: OutboxHost) {
    this.#queue = new OutboundQueue({ ...DEFAULT_QUEUE, ...options.queue }, (item, reason) => this.#dropped(item, reason))
    this.#requests = requests
    this.#resender = resender
    this.#out = out
    this.#host = host
  }

  /** How many messages wait in the queue. */
  get length (): number {
    return this.#queue.length
  }

  /** Sends now if open, else queues (throws QueueFullError under the 'error' policy); true when it went out at once. */
  send (channel: string, cmd: string, param: unknown, ref: string | undefined): boolean {
    const id = this.#resender.id(cmd)
    const data = encode(channel, cmd, param, ref, id)
    if (this.#host.closed()) {
      this.#dropped({ data, bytes: data.length, at: Date.now(), ref, id }, 'closed')
      return false
    }
    const ws = this.#host.open()
    if (ws !== null) {
      this.#write(ws, data, ref, id)
      this.#out.log(`send ${channel}:${cmd}`)
      return true
    }
    this.#queue.push(data, ref, id)
    this.#out.log(`queue ${channel}:${cmd} (${this.#queue.length} queued)`)
    return false
  }

  /** `socket.request()`: see its doc comment. */
  request<T> (channel: string, cmd: string, param: unknown, timeout: number): Promise<T> {
    const ref = this.#requests.ref()
    const answer = this.#requests.expect<T>(ref, cmd, timeout)
    try {
      this.send(channel, cmd, param, ref)
    } catch (err) {
      // A full queue under the 'error' policy: `send` throws it, a request is rejected with it.
      this.#requests.settle(ref, err as SocketError)
    }
    return answer
  }

  /**
   * Sends `subscribe` for `channel` on `ws` now, outside the queue, with `since` (the position to recover from) if
   * given; a promise of the answer, timed out only with `timeout`. `answered` sees the answer before the replay.
   */
  subscribe<T> (ws: WebSocketLike, channel: string, since: ChannelPosition | undefined, timeout: number | undefined, answered: (answer: T) => void): Promise<T> {
    const ref = this.#requests.ref()
    const answer = this.#requests.expect<T>(ref, 'subscribe', timeout, answered as (value: unknown) => void)
    ws.send(encode(channel, 'subscribe', since === undefined ? null : { since }, ref))
    this.#out.log(`send ${channel}:subscribe`)
    return answer
  }

  /**
   * Sends on `ws`, a connection just set up, the requests to resend (see Resender), then what was queued, in order;
   * with a server that dedupes, a message queued longer than its window is dropped instead.
   */
  flush (ws: WebSocketLike): void {
    this.#resender.resend(ws)
    const items = this.#queue.drain()
    if (items.length > 0) this.#out.log(`flush ${items.length} queued`)
    for (const item of items) {
      // A request that timed out while queued was already answered "timeout": it must not run on the server later.
      if (item.ref !== undefined && !this.#requests.has(item.ref)) continue
      if (item.id !== undefined && this.#resender.late(item.at)) this.#dropped(item, 'dedupe-window')
      else this.#write(ws, item.data, item.ref, item.id)
    }
  }

  /** The connection closed with `error`: the requests sent on it are rejected with it, unless they are to be resent. */
  lost (error: SocketError): void {
    this.#resender.lost(error, (ref) => this.#queue.has(ref))
  }

  /** The socket closed for good: the requests waiting to be resent are rejected, every queued message is dropped. */
  clear (): void {
    this.#resender.clear((ref) => this.#queue.has(ref))
    this.#queue.clear('closed')
  }

  /** A request with an `id` is kept once written, to be sent again if its answer does not come. */
  #write (ws: WebSocketLike, data: string, ref: string | undefined, id: string | undefined): void {
    ws.send(data)
    if (ref !== undefined && id !== undefined) this.#requests.wrote(ref, data)
  }

  #dropped (item: Queued, reason: DropReason): void {
    const error = new SocketError(ClientErrorCode.MESSAGE_DROPPED, `A message was dropped (${reason}) before it could be sent`)
    this.#out.log(`drop (${reason})`)
    if (item.ref !== undefined && this.#requests.has(item.ref)) this.#requests.settle(item.ref, error)
    else this.#out.report(error)
  }
}
