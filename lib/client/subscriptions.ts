import { ClientErrorCode, SocketError } from './errors.js'
import type { RecoveryReason, WebSocketLike } from './types.js'

/** The server's answer to `subscribe` and `unsubscribe`. */
export interface SubscribeAnswer {
  channel: string
  /** The channel's position, when it keeps history (docs/protocol.md). */
  epoch?: string
  seq?: number
  /** When the subscribe recovered from a position (`since`, after a reconnection): how it went (`onRecover`). */
  recovered?: boolean
  replayed?: number
  reason?: RecoveryReason
}

/** What the subscriptions need from the Socket. */
export interface SubscriptionHost {
  /** The connection a frame reaches the server on now (open, or being set up after its `connected`), or null. */
  connection (): WebSocketLike | null
  /** Sends `subscribe` for `channel` on `ws`, outside the queue; a promise of the answer, timed out only with `timeout`. */
  ask (ws: WebSocketLike, channel: string, timeout: number | undefined): Promise<SubscribeAnswer>
  /** `request(channel, 'unsubscribe')`: sent now when open, else queued. */
  leave (channel: string, timeout: number | undefined): Promise<SubscribeAnswer>
  /** The channel is left, or refused: what is kept about it (its position) can go. */
  forget (channel: string): void
  /** The socket is closed for good. */
  closed (): boolean
  report (error: SocketError): void
  log (line: string): void
}

interface Waiter {
  resolve: (answer: SubscribeAnswer) => void
  reject: (error: SocketError) => void
}

/** One channel the application subscribed to. */
interface Subscription {
  readonly channel: string
  /** The server said yes once: from then on the channel is subscribed again after every reconnection. */
  confirmed: boolean
  /** The connection a `subscribe` for it is in flight on, so it is not asked twice. */
  sentOn: WebSocketLike | null
  /** Settles (never rejects) with that `subscribe`'s answer: an `unsubscribe` waits for it. */
  inflight: Promise<void> | undefined
  readonly waiters: Waiter[]
}

/** A connection between its `connected` and the answers to its re-subscriptions. */
interface Setup {
  readonly ws: WebSocketLike
  /** Subscribes asked for and not answered yet. */
  left: number
  readonly done: () => void
}

/**
 * The channels the application subscribed to with `socket.subscribe()`, beyond the ones the server puts a
 * connection in by itself, and the calls that wait for the server's answer. After every reconnection each is asked
 * for again, and the Socket waits for the answers (`setUp` → `done`) before it flushes its queue: the server handles
 * a connection's frames concurrently, and a queued send to a channel whose subscribe is still being authorized
 * would be refused with FST_SOCKET_NOT_SUBSCRIBED.
 */
export class Subscriptions {
  readonly #host: SubscriptionHost
  readonly #byChannel = new Map<string, Subscription>()
  /** The unsubscribes not answered yet, by channel: a subscribe of the same channel waits for its answer. */
  readonly #leaving = new Map<string, Promise<void>>()
  #setup: Setup | null = null

  constructor (host: SubscriptionHost) {
    this.#host = host
  }

  /** The connection being set up, or null. */
  get settingUp (): WebSocketLike | null {
    return this.#setup?.ws ?? null
  }

  /** `socket.subscribe()`: see its doc comment. */
  subscribe (channel: string, timeout: number): Promise<SubscribeAnswer> {
    if (this.#host.closed()) return Promise.reject(new SocketError(ClientErrorCode.CONNECTION_CLOSED, 'The socket is closed', undefined, { channel }))
    // Sent before the unsubscribe of the same channel is answered, the subscribe could be undone by it.
    const leaving = this.#leaving.get(channel)
    if (leaving !== undefined) return leaving.then(() => this.subscribe(channel, timeout))
    let sub = this.#byChannel.get(channel)
    if (sub === undefined) this.#byChannel.set(channel, sub = { channel, confirmed: false, sentOn: null, inflight: undefined, waiters: [] })
    const waiters = sub.waiters
    const answer = new Promise<SubscribeAnswer>((resolve, reject) => { waiters.push({ resolve, reject }) })
    const ws = this.#host.connection()
    if (ws !== null && sub.sentOn !== ws) {
      if (sub.confirmed) this.#confirm(sub)
      // Asked within a connection's setup, it is part of that setup, which the Socket's `connectTimeout` bounds.
      else this.#join(sub, ws, this.#setup === null ? timeout : undefined)
    }
    return answer
  }

  /** `socket.unsubscribe()`: see its doc comment. */
  unsubscribe (channel: string, timeout: number | undefined): Promise<SubscribeAnswer> {
    this.#host.forget(channel)
    const sub = this.#byChannel.get(channel)
    if (sub !== undefined) {
      this.#drop(sub, new SocketError(ClientErrorCode.SUBSCRIBE_CANCELLED, `unsubscribe("${channel}") was called before the server answered the subscribe`, undefined, { channel }))
    }
    if (this.#host.connection() === null) return Promise.resolve({ channel })
    const leave = (): Promise<SubscribeAnswer> => this.#host.leave(channel, timeout)
    // Sent while the subscribe is still being authorized, the unsubscribe would leave nothing, and the subscribe
    // would join afterwards.
    const left = sub?.inflight === undefined ? leave() : sub.inflight.then(leave)
    const settled = left.then(() => {}, () => {})
    this.#leaving.set(channel, settled)
    void settled.then(() => { if (this.#leaving.get(channel) === settled) this.#leaving.delete(channel) })
    return left
  }

  /**
   * A new connection got `connected`: every wanted channel that is not among `given` (the ones the server put it
   * in) is asked for; `done` runs once all have answered, at once when there are none, never if the connection
   * is lost first.
   */
  setUp (ws: WebSocketLike, given: Iterable<string>, done: () => void): void {
    const setup: Setup = this.#setup = { ws, left: 0, done }
    const theirs = new Set(given)
    for (const sub of [...this.#byChannel.values()]) {
      if (theirs.has(sub.channel)) this.#confirm(sub)
      else this.#join(sub, ws, undefined)
    }
    if (setup.left === 0) return this.#finish()
    this.#host.log(`resubscribe ${setup.left}`)
  }

  /** The connection being set up is gone: its subscribes are asked for again on the next one. */
  interrupt (): void {
    this.#setup = null
  }

  /** The socket closed for good: every channel is forgotten, and the calls waiting get `error`. */
  clear (error: SocketError): void {
    this.#setup = null
    for (const sub of [...this.#byChannel.values()]) this.#drop(sub, error)
  }

  /** Asks for one wanted channel on `ws`; the answer settles the `subscribe()` calls waiting for it. */
  #join (sub: Subscription, ws: WebSocketLike, timeout: number | undefined): void {
    const setup = this.#setup
    if (setup !== null) setup.left++
    sub.sentOn = ws
    sub.inflight = this.#host.ask(ws, sub.channel, timeout).then((answer) => this.#confirm(sub, answer), (err: SocketError) => this.#refused(sub, err)).then(() => {
      if (sub.sentOn === ws) {
        sub.sentOn = null
        sub.inflight = undefined
      }
      if (setup !== null && setup === this.#setup && --setup.left === 0) this.#finish()
    })
  }

  #finish (): void {
    const { done } = this.#setup as Setup
    this.#setup = null
    done()
  }

  /**
   * A `subscribe` that did not succeed. Lost with its connection, it is asked again on the next one; refused (or
   * timed out), the channel is forgotten and its waiters rejected, and a channel that was subscribed before (which
   * nobody may be waiting on) is reported.
   */
  #refused (sub: Subscription, err: SocketError): void {
    // Closed for good, `clear` has already rejected the waiters.
    if (err.code === ClientErrorCode.CONNECTION_CLOSED) return
    const current = this.#byChannel.get(sub.channel) === sub
    const again = sub.confirmed && current
    if (current) this.#host.forget(sub.channel)
    this.#drop(sub, new SocketError(err.code, err.message, undefined, { channel: sub.channel }))
    if (again) {
      this.#host.report(new SocketError(ClientErrorCode.RESUBSCRIBE_REFUSED, `Subscribing to "${sub.channel}" again after a reconnection was refused: ${err.message}`, undefined, { channel: sub.channel, serverCode: err.code }))
    }
  }

  /** The server said yes: the waiters get its answer, or `{ channel }` (unless the channel was unsubscribed since). */
  #confirm (sub: Subscription, answer: SubscribeAnswer = { channel: sub.channel }): void {
    if (this.#byChannel.get(sub.channel) !== sub) return
    sub.confirmed = true
    for (const waiter of sub.waiters.splice(0)) waiter.resolve(answer)
  }

  /** Forgets the channel; its waiters get `error`. */
  #drop (sub: Subscription, error: SocketError): void {
    if (this.#byChannel.get(sub.channel) !== sub) return
    this.#byChannel.delete(sub.channel)
    for (const waiter of sub.waiters.splice(0)) waiter.reject(error)
  }
}
