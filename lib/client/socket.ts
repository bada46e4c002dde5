import { Retries } from './backoff.js'
import { CloseCode } from './close-codes.js'
import { ABNORMAL_CLOSURE, closeOutcome, type CloseAction } from './close-policy.js'
import { Endpoint, browser, type Seen } from './connect.js'
import { Emitter, type Listener } from './emitter.js'
import { ClientErrorCode as Code, SocketError } from './errors.js'
import { Liveness } from './liveness.js'
import { checkOptions, type SocketOptions } from './options.js'
import { Outbox, encode } from './outbox.js'
import { Positions } from './positions.js'
import { Requests } from './requests.js'
import { Resender } from './resend.js'
import { Subscriptions, type SubscribeAnswer } from './subscriptions.js'
import { Token } from './token.js'
import type { ChannelPosition, ClientParam, Message, RecoveryResult, ServerParam, SocketState, WebSocketLike } from './types.js'

const OPEN = 1

/**
 * A forge-socket connection that reconnects with backoff, queues what is sent while it is down, refreshes its
 * token, and watches the server's liveness.
 *
 * @example
 * const socket = new Socket({ url: '/ws/chat/lobby', token: () => auth.token() })
 * socket.on('chat-message', (m) => show(m.param))
 * socket.send('chat-room-lobby', 'chat-message', { text: 'hi' })
 *
 * @example
 * // Project Forge's form:
 * const socket = new Socket(true, onOpen, onMessage, onError, '/ws/notifications')
 */
export class Socket {
  readonly #endpoint: Endpoint
  readonly #retries: Retries
  readonly #requestTimeout: number
  readonly #requests = new Requests()
  readonly #resender: Resender
  readonly #outbox: Outbox
  readonly #emitter: Emitter
  readonly #token: Token
  readonly #liveness: Liveness
  readonly #positions: Positions
  readonly #subscriptions = new Subscriptions({
    connection: () => this.#connected(),
    ask: (ws, channel, timeout) => this.#outbox.subscribe(ws, channel, this.#positions.from(channel), timeout, (answer: SubscribeAnswer) => this.#positions.subscribed(answer)),
    leave: (channel, timeout) => this.request<SubscribeAnswer>(channel, 'unsubscribe', null, { timeout }),
    forget: (channel) => this.#positions.forget(channel),
    closed: () => this.#state === 'closed',
    report: (error) => this.#emitter.report(error),
    log: (line) => this.#emitter.log(line)
  })
  readonly #onOpen: (() => void) | undefined
  #state: SocketState = 'connecting'
  #ws: WebSocketLike | null = null
  #connectionId: string | null = null
  #home = ''
  #seen: Seen = { greeted: false, refusal: null, failure: '' }

  constructor (options: SocketOptions)
  constructor (debug: boolean, onOpen?: () => void, onMessage?: (message: Message) => void, onError?: (error: SocketError) => void, url?: string)
  constructor (first: SocketOptions | boolean, onOpen?: () => void, onMessage?: (message: Message) => void, onError?: (error: SocketError) => void, url = '/ws') {
    const options: SocketOptions = typeof first === 'object' ? first : { url, debug: first, onOpen, onMessage, onError }
    checkOptions(options)
    this.#endpoint = new Endpoint(options)
    this.#retries = new Retries(options.reconnect)
    this.#requestTimeout = options.requestTimeout ?? 10_000
    this.#onOpen = options.onOpen
    this.#emitter = new Emitter(options)
    this.#positions = new Positions(this.#emitter)
    this.#token = new Token(options, this.#emitter, (token) => this.request(this.#home, 'auth.refresh', { token }))
    // The heartbeat runs only while a connection is open (`#ws`); the checks keep it so if that ever changes.
    this.#liveness = new Liveness(options, {
      ping: () => { this.#ws?.send(encode(this.#home, 'ping', null)) },
      silent: (ms) => {
        if (this.#ws === null) return
        this.#emitter.log(`server silent for ${ms} ms`)
        this.#abandon(this.#ws, 'heartbeat timeout')
      },
      // Only a connection that stayed up resets the backoff and the one token refresh: a server that closes every
      // connection with 4001 right after `connected` must not get a reconnect loop without any delay.
      stable: () => {
        this.#retries.reset()
        this.#token.stable()
      }
    })
    const host = {
      open: () => this.#state === 'open' && this.#ws !== null && this.#ws.readyState === OPEN ? this.#ws : null,
      closed: () => this.#state === 'closed'
    }
    this.#resender = new Resender(this.#requests, this.#emitter, host)
    this.#outbox = new Outbox(options, this.#requests, this.#resender, this.#emitter, host)
    browser.addEventListener?.('online', this.#online)
    void this.#connect()
  }

  /** `connecting`, `open`, `reconnecting` or `closed`. */
  get state (): SocketState {
    return this.#state
  }

  /** The server's id for the current connection (from `connected`); null until the first one. */
  get connectionId (): string | null {
    return this.#connectionId
  }

  /**
   * This socket's part of the `id` every application message carries (`<instanceId>.<counter>`, the counter in
   * base 36): 16 random characters, made once per Socket. The server dedupes by it (docs/client.md, Delivery).
   */
  get instanceId (): string {
    return this.#resender.instance
  }

  /** Where each channel with history stands (a copy): what the client recovers from after a reconnection. */
  get positions (): Record<string, ChannelPosition> {
    return this.#positions.snapshot
  }

  /** How many messages wait for the connection to open. */
  get queued (): number {
    return this.#outbox.length
  }

  /**
   * Sends a message now if the connection is open, else queues it (flushed in order after the next `connected`).
   * Returns true when it went out at once. Under the 'error' overflow policy a full queue throws
   * FST_SOCKET_QUEUE_FULL.
   *
   * @example
   * socket.send('chat-room-lobby', 'chat-message', { text: 'hi' })
   * socket.send({ channel: 'chat-room-lobby', cmd: 'chat-message', param: { text: 'hi' } })
   */
  send<C extends string> (channel: string, cmd: C, param: ClientParam<C>): boolean
  send<C extends string> (message: { channel: string, cmd: C, param: ClientParam<C> }): boolean
  send (first: string | { channel: string, cmd: string, param?: unknown }, cmd?: string, param?: unknown): boolean {
    const message = typeof first === 'string' ? { channel: first, cmd: cmd as string, param } : first
    return this.#outbox.send(message.channel, message.cmd, message.param, undefined)
  }

  /**
   * Sends a message with a `ref` and resolves with the server's `reply` param. Rejects with the server's error code
   * on `error`, with FST_SOCKET_REQUEST_TIMEOUT after `timeout` ms, or with FST_SOCKET_CONNECTION_CLOSED when the
   * connection closes before the answer; unless the server dedupes for the user: then it is sent again, with the
   * same `id`, on the next connection (FST_SOCKET_MESSAGE_DROPPED once past the server's dedupe window). A
   * request made while the socket is down waits in the queue.
   *
   * @example
   * const saved = await socket.request('chat-room-lobby', 'chat-message', { text: 'hi' }, { timeout: 5000 })
   */
  request<T = unknown, C extends string = string> (channel: string, cmd: C, param: ClientParam<C>, options: { timeout?: number } = {}): Promise<T> {
    return this.#outbox.request<T>(channel, cmd, param, options.timeout ?? this.#requestTimeout)
  }

  /**
   * Joins `channel` (the server's `authorizeChannel` decides) and keeps it: after every reconnection the client
   * subscribes again, before it flushes the queue, so a queued send to the channel finds the connection in it.
   * Resolves with the server's answer, `{ channel }` (and the channel's `epoch` and `seq` when it keeps history, see
   * `onRecover`); rejects with the server's code (FST_SOCKET_FORBIDDEN, …) when it
   * refuses, and then the channel is forgotten. Called while the socket is not open, it waits for the next
   * connection and is asked for there first, ahead of the queue. A channel already subscribed on the open
   * connection resolves at once; the same channel asked for twice is asked for once.
   *
   * @example
   * await socket.subscribe('news')
   * socket.on('headline', (m) => show(m.param))
   */
  subscribe (channel: string, options: { timeout?: number } = {}): Promise<SubscribeAnswer> {
    return this.#subscriptions.subscribe(channel, options.timeout ?? this.#requestTimeout)
  }

  /**
   * Leaves `channel` and forgets it, so it is not subscribed again after a reconnection. A `subscribe()` of it
   * still waiting for an answer rejects with FST_SOCKET_SUBSCRIBE_CANCELLED. With a connection, resolves with the
   * server's `{ channel }` (rejects like a `request()`); without one (reconnecting, closed) there is nothing to
   * leave, and it resolves at once.
   *
   * @example
   * await socket.unsubscribe('news')
   */
  unsubscribe (channel: string, options: { timeout?: number } = {}): Promise<SubscribeAnswer> {
    return this.#subscriptions.unsubscribe(channel, options.timeout)
  }

  /**
   * Calls `fn` with every message whose `cmd` is `cmd` (`'*'` for all of them).
   *
   * @example
   * socket.on('user-joined', (m) => console.log(m.param.user))
   */
  on<C extends string> (cmd: C, fn: (message: Message<ServerParam<C>, C>) => void): this {
    this.#emitter.on(cmd, fn as Listener)
    return this
  }

  /** Removes a listener added with `on`. */
  off<C extends string> (cmd: C, fn: (message: Message<ServerParam<C>, C>) => void): this {
    this.#emitter.off(cmd, fn as Listener)
    return this
  }

  /** Calls `fn(state, previous)` on every state change; returns a function that removes it. */
  onStateChange (fn: (state: SocketState, previous: SocketState) => void): () => void {
    return this.#emitter.onState(fn)
  }

  /**
   * Calls `fn(channel, result)` for each channel with history that came back after a reconnection, and for each
   * `channel-reset`; returns a function that removes it. Not `recovered`: nothing was replayed, read it again.
   *
   * @example
   * socket.onRecover(async (channel, { recovered }) => {
   *   if (!recovered) show(await socket.request(channel, 'history', { limit: 50 }))
   * })
   */
  onRecover (fn: (channel: string, result: RecoveryResult) => void): () => void {
    return this.#emitter.onRecover(fn)
  }

  /**
   * Closes at once and for good: no reconnection, pending requests rejected, queued messages reported dropped.
   *
   * @example
   * socket.close()
   */
  close (code: number = CloseCode.NORMAL, reason = ''): void {
    if (this.#state === 'closed') return
    this.#emitter.log(`close ${code}`)
    this.#stop()
    this.#ws?.close(code, reason)
    this.#ws = null
    this.#outbox.lost(new SocketError(Code.CONNECTION_CLOSED, 'The socket was closed', code))
    this.#outbox.clear()
  }

  /** The connection a frame reaches the server on now: open, or being set up after its `connected`. */
  #connected (): WebSocketLike | null {
    const ws = this.#ws
    return ws !== null && ws.readyState === OPEN && (this.#state === 'open' || this.#subscriptions.settingUp === ws) ? ws : null
  }

  async #connect (): Promise<void> {
    const seen: Seen = this.#seen = { greeted: false, refusal: null, failure: '' }
    let token: string | undefined
    try {
      const next = this.#token.fetch()
      token = typeof next === 'object' ? await next : next
    } catch (err) {
      this.#emitter.report(new SocketError(Code.TOKEN_PROVIDER, `The token provider failed: ${(err as Error).message}`))
      return this.#retry(false)
    }
    if (this.#state === 'closed') return
    this.#emitter.log(`connect ${this.#endpoint.url}`)
    let ws: WebSocketLike
    try {
      ws = this.#endpoint.open(token, this.#positions.query(), seen, {
        current: () => ws === this.#ws,
        frame: (message) => this.#frame(message),
        closed: (code, reason) => this.#closed(ws, code, reason)
      })
    } catch (err) {
      this.#emitter.report(new SocketError(Code.CONNECT_FAILED, `Could not open the socket: ${(err as Error).message}`))
      return this.#retry(false)
    }
    this.#ws = ws
    // A server that takes the connection and never answers (a hung proxy, a half-open path) must not hold the
    // client for the minutes a TCP timeout takes: without `connected` in time, the attempt is given up and retried.
    // The re-subscriptions after `connected` are part of the attempt: a server that never answers them is given up
    // on the same way.
    this.#liveness.connecting((ms) => {
      if (ws !== this.#ws) return
      this.#emitter.log(this.#subscriptions.settingUp !== ws ? `no connected within ${ms} ms` : `no answer to the re-subscriptions within ${ms} ms`)
      this.#abandon(ws, 'handshake timeout')
    })
  }

  #frame (message: Message | SocketError): void {
    this.#liveness.heard()
    if (message instanceof SocketError) return this.#emitter.report(message)
    this.#emitter.log(`recv ${message.channel}:${message.cmd}`)
    if (message.cmd === 'connected') return this.#opened(message as Message<ServerParam<'connected'>>)
    const param = message.param as ServerParam<'error'>
    const error = message.cmd === 'error' ? new SocketError(param.code, param.message) : undefined
    // The answer to a request settles it (an `error` rejects it, unless it means "again later"); anything else goes
    // to the listeners, an `error` to onError too.
    if (message.ref !== undefined && this.#requests.has(message.ref)) return this.#resender.answered(message.ref, error, message.param)
    if (error !== undefined) this.#emitter.report(error)
    if (this.#positions.heard(message)) this.#emitter.emit(message)
  }

  #opened (message: Message<ServerParam<'connected'>>): void {
    this.#connectionId = message.param.connectionId
    this.#home = message.channel
    this.#seen.greeted = true
    this.#resender.connected(message.param.dedupe)
    this.#positions.connected(message.param)
    // An onRecover listener may have closed the socket.
    if (this.#state === 'closed') return
    const ws = this.#ws as WebSocketLike
    // The queue waits for the answers to the re-subscriptions (see Subscriptions).
    this.#subscriptions.setUp(ws, message.param.channels, () => this.#ready(ws, message))
  }

  /** The connection is set up (`connected`, and the re-subscriptions answered): resend, flush the queue, then open. */
  #ready (ws: WebSocketLike, message: Message<ServerParam<'connected'>>): void {
    this.#liveness.settled()
    // Queued messages go before the application hears of the open (state listeners included), so they keep their
    // place in line ahead of anything sent from onStateChange('open') or onOpen.
    this.#outbox.flush(ws)
    this.#setState('open')
    // A state listener may have closed the socket: then nothing more may start.
    if (this.#state !== 'open') return
    this.#liveness.up()
    this.#token.schedule()
    this.#onOpen?.()
    this.#emitter.emit(message)
  }

  #closed (ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.#ws) return
    this.#ws = null
    this.#subscriptions.interrupt()
    this.#liveness.stop()
    this.#token.stop()
    this.#emitter.log(`closed ${code}${reason.length > 0 ? ` ${reason}` : ''}`)
    this.#outbox.lost(new SocketError(Code.CONNECTION_CLOSED, `The connection closed (${code}) before the answer came`, code))
    if (this.#state === 'closed') return
    const refusal = this.#seen.refusal
    if (refusal !== null) this.#emitter.log(`refused ${refusal.status}${refusal.serverCode === undefined ? '' : ` ${refusal.serverCode}`}`)
    const { action, error, always, retryAfter } = closeOutcome(code, reason, this.#seen)
    this.#after(action, error, always, retryAfter)
  }

  /**
   * What follows a close or a refusal. `error` is reported when the client stops, and also when it goes on if
   * `always` (a refusal or a failed handshake is news; a reconnection after a close is not).
   */
  #after (action: CloseAction, error: SocketError, always: boolean, retryAfter = 0): void {
    const refresh = action === 'refresh-token' && this.#token.renewable
    if (!refresh && (action === 'stop' || action === 'refresh-token' || !this.#retries.enabled)) return this.#end(error)
    if (always) this.#emitter.report(error)
    if (!refresh) return this.#retry(action === 'reconnect-slowly', retryAfter)
    // Once: the provider is asked for a fresh token; a second 4001 (or 401) in a row means it has none to give.
    this.#token.renewing()
    if (this.#state === 'closed') return
    this.#setState('reconnecting')
    void this.#connect()
  }

  /** Stops for good, reporting why; what was queued is reported dropped. */
  #end (error: SocketError): void {
    this.#stop()
    this.#emitter.report(error)
    this.#outbox.clear()
  }

  /** Schedules the next attempt: the backoff delay, plus the server's Retry-After (ms) if it gave one. */
  #retry (overloaded: boolean, retryAfter = 0): void {
    if (this.#state === 'closed') return
    if (!this.#retries.enabled) {
      this.#stop()
      this.#outbox.clear()
      return
    }
    if (this.#retries.exhausted) {
      return this.#end(new SocketError(Code.MAX_ATTEMPTS, `Gave up after ${this.#retries.attempts} reconnection attempts in a row (reconnect.maxAttempts)`))
    }
    this.#setState('reconnecting')
    this.#emitter.log(`retry in ${this.#retries.schedule(overloaded, retryAfter, () => { void this.#connect() })} ms`)
  }

  /** The browser is back online: a scheduled retry happens now instead of after its delay. */
  readonly #online = (): void => {
    this.#retries.now(() => {
      this.#emitter.log('online: retry now')
      void this.#connect()
    })
  }

  /** Gives up on a socket that does not answer: closed without waiting for its close event, as a 1006. */
  #abandon (ws: WebSocketLike, reason: string): void {
    ws.onclose = null
    ws.close()
    this.#closed(ws, ABNORMAL_CLOSURE, reason)
  }

  #stop (): void {
    this.#setState('closed')
    this.#subscriptions.clear(new SocketError(Code.CONNECTION_CLOSED, 'The socket closed before the server answered the subscribe'))
    this.#retries.cancel()
    this.#liveness.stop()
    this.#token.stop()
    browser.removeEventListener?.('online', this.#online)
  }

  #setState (state: SocketState): void {
    const previous = this.#state
    if (state === previous) return
    this.#state = state
    this.#emitter.log(`state ${state}`)
    this.#emitter.emitState(state, previous)
  }
}
