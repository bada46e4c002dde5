import { DEFAULT_BACKOFF, backoffDelay, type BackoffOptions } from './backoff.js'
import { closeAction, refusalAction, type CloseAction } from './close-policy.js'
import { checkOptions } from './options.js'
import { DEFAULT_QUEUE, OutboundQueue, type DropReason, type Queued, type QueueOptions } from './queue.js'
import { watchRefusal, type Refusal } from './refusal.js'
import { Subscriptions, type SubscribeAnswer } from './subscriptions.js'
import {
  SocketError,
  expiryOf,
  type ClientParam,
  type Message,
  type ServerParam,
  type SocketState,
  type WebSocketConstructor,
  type WebSocketLike
} from './types.js'

/** The subprotocol the server selects; the token rides beside it as `bearer.<jwt>`. */
const SUBPROTOCOL = 'forge.v1'
const OPEN = 1

export type TokenProvider = () => string | Promise<string>

/** Everything `new Socket({...})` takes; only `url` is required. Defaults in docs/client.md. */
export interface SocketOptions {
  /** A full `ws(s)://` (or `http(s)://`) URL, or a path on the page's host (`/ws/chat/lobby`). */
  url: string
  /** The JWT, or a function that returns one (called before every connection attempt). */
  token?: string | TokenProvider
  /** Where the token goes: the `bearer.<jwt>` subprotocol (default) or `?token=` (only if the server allows it). */
  tokenIn?: 'protocol' | 'query'
  /** One concise line per event (never a param or a token). Default false. */
  debug?: boolean
  /** Where debug lines go. Default `console.debug`. */
  logger?: (line: string) => void
  /**
   * The WebSocket class: the browser's by default; in Node 20 pass `ws`'s. Typed loosely on purpose: `ws` and the
   * DOM declare their constructors differently, and the client uses only what both have (`WebSocketLike`).
   */
  WebSocket?: new (...args: never[]) => unknown
  /**
   * Reconnection backoff; how long a connection must stay up before the backoff (and `maxAttempts`) starts again
   * from the bottom (`resetAfter`, default 5000 ms); how many reconnection attempts in a row are made before the
   * client gives up with FST_SOCKET_MAX_ATTEMPTS (`maxAttempts`, default `Infinity`: never). `false` never
   * reconnects.
   *
   * @example
   * reconnect: { initialDelay: 1000, maxAttempts: 10 }
   */
  reconnect?: (Partial<BackoffOptions> & { resetAfter?: number, maxAttempts?: number }) | false
  /** Bounds of the queue for messages sent while not open. */
  queue?: Partial<QueueOptions>
  /** Client-side liveness: ping after `interval` ms of silence, give up after `interval + timeout`; `false` turns it off. */
  heartbeat?: { interval?: number, timeout?: number } | false
  /** Default timeout of `request()`, in ms. Default 10000. */
  requestTimeout?: number
  /** How long an attempt may take until the server's `connected`, in ms; then it is given up and retried. Default 10000. */
  connectTimeout?: number
  /**
   * With a token provider: this many ms before the token's `exp`, the provider is asked for a fresh token, which
   * goes to the server in band (`auth.refresh`) so the connection is not closed with 4001. Default 30000.
   */
  refreshBefore?: number
  onOpen?: () => void
  onMessage?: (message: Message) => void
  onError?: (error: SocketError) => void
  onStateChange?: (state: SocketState, previous: SocketState) => void
}

interface Pending {
  resolve: (value: unknown) => void
  reject: (error: SocketError) => void
  timer: ReturnType<typeof setTimeout> | undefined
}

type Listener = (message: Message) => void

interface BrowserWindow {
  location?: { protocol: string, host: string }
  addEventListener?: (type: string, listener: () => void) => void
  removeEventListener?: (type: string, listener: () => void) => void
}

const browser = globalThis as unknown as BrowserWindow & { WebSocket?: WebSocketConstructor }

/** Turns a path or an http(s) URL into the ws(s) URL to open. */
export function resolveUrl (url: string, location = browser.location): string {
  if (/^wss?:\/\//i.test(url)) return url
  if (/^https?:\/\//i.test(url)) return url.replace(/^http/i, 'ws')
  if (location === undefined) throw new SocketError('FST_SOCKET_BAD_URL', `"${url}" is a path, and there is no page to resolve it against: pass a ws:// URL`)
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws'
  return `${scheme}://${location.host}${url.startsWith('/') ? '' : '/'}${url}`
}

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
  readonly #url: string
  readonly #token: string | TokenProvider | undefined
  readonly #tokenIn: 'protocol' | 'query'
  readonly #WebSocket: WebSocketConstructor
  readonly #backoff: BackoffOptions | null
  readonly #resetAfter: number
  readonly #maxAttempts: number
  readonly #heartbeat: { interval: number, timeout: number } | null
  readonly #requestTimeout: number
  readonly #connectTimeout: number
  readonly #debug: boolean
  readonly #logger: (line: string) => void
  readonly #queue: OutboundQueue
  readonly #listeners = new Map<string, Set<Listener>>()
  readonly #stateListeners = new Set<(state: SocketState, previous: SocketState) => void>()
  readonly #pending = new Map<string, Pending>()
  readonly #subscriptions = new Subscriptions({
    connection: () => this.#connected(),
    ask: (ws, channel, timeout) => {
      const ref = `r${++this.#refs}`
      const answer = this.#expect(ref, 'subscribe', timeout)
      ws.send(JSON.stringify({ channel, cmd: 'subscribe', param: null, ref }))
      this.#log(`send ${channel}:subscribe`)
      return answer
    },
    leave: (channel, timeout) => this.request<SubscribeAnswer>(channel, 'unsubscribe', null, { timeout }),
    closed: () => this.#state === 'closed',
    report: (error) => this.#report(error),
    log: (line) => this.#log(line)
  })
  readonly #onOpen: (() => void) | undefined
  readonly #onMessage: ((message: Message) => void) | undefined
  readonly #onError: ((error: SocketError) => void) | undefined
  #state: SocketState = 'connecting'
  #ws: WebSocketLike | null = null
  #connectionId: string | null = null
  #home = ''
  #attempt = 0
  #refs = 0
  #tokenRefreshed = false
  #lastTraffic = 0
  #retryTimer: ReturnType<typeof setTimeout> | undefined
  #stableTimer: ReturnType<typeof setTimeout> | undefined
  #heartbeatTimer: ReturnType<typeof setInterval> | undefined
  #refreshTimer: ReturnType<typeof setTimeout> | undefined
  #handshakeTimer: ReturnType<typeof setTimeout> | undefined
  #currentToken: string | undefined
  // What the current attempt has seen: `connected`; an HTTP refusal (Node); the error event's message.
  #greeted = false
  #refusal: Refusal | null = null
  #failure = ''
  readonly #refreshBefore: number

  constructor (options: SocketOptions)
  constructor (debug: boolean, onOpen?: () => void, onMessage?: (message: Message) => void, onError?: (error: SocketError) => void, url?: string)
  constructor (first: SocketOptions | boolean, onOpen?: () => void, onMessage?: (message: Message) => void, onError?: (error: SocketError) => void, url = '/ws') {
    const options: SocketOptions = typeof first === 'object' ? first : { url, debug: first, onOpen, onMessage, onError }
    checkOptions(options)
    this.#url = resolveUrl(options.url)
    this.#token = options.token
    this.#tokenIn = options.tokenIn ?? 'protocol'
    const WebSocketClass = (options.WebSocket as WebSocketConstructor | undefined) ?? browser.WebSocket
    if (WebSocketClass === undefined) throw new SocketError('FST_SOCKET_NO_WEBSOCKET', 'No WebSocket class here: pass options.WebSocket (in Node 20, the one from "ws")')
    this.#WebSocket = WebSocketClass
    this.#backoff = options.reconnect === false ? null : { ...DEFAULT_BACKOFF, ...options.reconnect }
    this.#resetAfter = (options.reconnect === false ? undefined : options.reconnect?.resetAfter) ?? 5000
    this.#maxAttempts = (options.reconnect === false ? undefined : options.reconnect?.maxAttempts) ?? Infinity
    this.#heartbeat = options.heartbeat === false ? null : { interval: 25_000, timeout: 10_000, ...options.heartbeat }
    this.#requestTimeout = options.requestTimeout ?? 10_000
    this.#connectTimeout = options.connectTimeout ?? 10_000
    this.#refreshBefore = options.refreshBefore ?? 30_000
    this.#debug = options.debug ?? false
    this.#logger = options.logger ?? ((line) => console.debug(line))
    this.#onOpen = options.onOpen
    this.#onMessage = options.onMessage
    this.#onError = options.onError
    if (options.onStateChange !== undefined) this.#stateListeners.add(options.onStateChange)
    this.#queue = new OutboundQueue({ ...DEFAULT_QUEUE, ...options.queue }, (item, reason) => this.#dropped(item, reason))
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

  /** How many messages wait for the connection to open. */
  get queued (): number {
    return this.#queue.length
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
    return this.#send(message.channel, message.cmd, message.param, undefined)
  }

  /**
   * Sends a message with a `ref` and resolves with the server's `reply` param. Rejects with the server's error code
   * on `error`, with FST_SOCKET_REQUEST_TIMEOUT after `timeout` ms, or with FST_SOCKET_CONNECTION_CLOSED when the
   * connection closes before the answer. A request made while the socket is down waits in the queue.
   *
   * @example
   * const saved = await socket.request('chat-room-lobby', 'chat-message', { text: 'hi' }, { timeout: 5000 })
   */
  request<T = unknown, C extends string = string> (channel: string, cmd: C, param: ClientParam<C>, options: { timeout?: number } = {}): Promise<T> {
    const ref = `r${++this.#refs}`
    const answer = this.#expect<T>(ref, cmd, options.timeout ?? this.#requestTimeout)
    try {
      this.#send(channel, cmd, param, ref)
    } catch (err) {
      this.#settle(ref, err as SocketError)
    }
    return answer
  }

  /**
   * Joins `channel` (the server's `authorizeChannel` decides) and keeps it: after every reconnection the client
   * subscribes again, before it flushes the queue, so a queued send to the channel finds the connection in it.
   * Resolves with the server's `{ channel }`; rejects with the server's code (FST_SOCKET_FORBIDDEN, …) when it
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
    let set = this.#listeners.get(cmd)
    if (set === undefined) this.#listeners.set(cmd, set = new Set())
    set.add(fn as Listener)
    return this
  }

  /** Removes a listener added with `on`. */
  off<C extends string> (cmd: C, fn: (message: Message<ServerParam<C>, C>) => void): this {
    this.#listeners.get(cmd)?.delete(fn as Listener)
    return this
  }

  /** Calls `fn(state, previous)` on every state change; returns a function that removes it. */
  onStateChange (fn: (state: SocketState, previous: SocketState) => void): () => void {
    this.#stateListeners.add(fn)
    return () => { this.#stateListeners.delete(fn) }
  }

  /**
   * Closes at once and for good: no reconnection, pending requests rejected, queued messages reported dropped.
   *
   * @example
   * socket.close()
   */
  close (code = 1000, reason = ''): void {
    if (this.#state === 'closed') return
    this.#log(`close ${code}`)
    this.#stop()
    this.#ws?.close(code, reason)
    this.#ws = null
    this.#rejectAll(new SocketError('FST_SOCKET_CONNECTION_CLOSED', 'The socket was closed', code))
    this.#queue.clear('closed')
  }

  /** The connection a frame reaches the server on now: open, or being set up after its `connected`. */
  #connected (): WebSocketLike | null {
    const ws = this.#ws
    return ws !== null && ws.readyState === OPEN && (this.#state === 'open' || this.#subscriptions.settingUp === ws) ? ws : null
  }

  /** A promise of the answer to the message with `ref`, rejected with FST_SOCKET_REQUEST_TIMEOUT after `timeout` ms (never without one). */
  #expect<T> (ref: string, cmd: string, timeout: number | undefined): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const timer = timeout === undefined
        ? undefined
        : setTimeout(() => {
          this.#pending.delete(ref)
          reject(new SocketError('FST_SOCKET_REQUEST_TIMEOUT', `No answer to "${cmd}" within ${timeout} ms`))
        }, timeout)
      this.#pending.set(ref, { resolve: resolve as (value: unknown) => void, reject, timer })
    })
  }

  #send (channel: string, cmd: string, param: unknown, ref: string | undefined): boolean {
    const data = JSON.stringify(ref === undefined ? { channel, cmd, param: param ?? null } : { channel, cmd, param: param ?? null, ref })
    if (this.#state === 'closed') {
      this.#dropped({ data, bytes: data.length, at: Date.now(), ref }, 'closed')
      return false
    }
    const ws = this.#ws
    if (this.#state === 'open' && ws !== null && ws.readyState === OPEN) {
      ws.send(data)
      this.#log(`send ${channel}:${cmd}`)
      return true
    }
    this.#queue.push(data, ref)
    this.#log(`queue ${channel}:${cmd} (${this.#queue.length} queued)`)
    return false
  }

  async #connect (): Promise<void> {
    this.#retryTimer = undefined
    this.#greeted = false
    this.#refusal = null
    this.#failure = ''
    let token: string | undefined
    try {
      token = typeof this.#token === 'function' ? await this.#token() : this.#token
      this.#currentToken = token
    } catch (err) {
      this.#report(new SocketError('FST_SOCKET_TOKEN_PROVIDER', `The token provider failed: ${(err as Error).message}`))
      return this.#retry(false)
    }
    if (this.#state === 'closed') return
    let url = this.#url
    const protocols = [SUBPROTOCOL]
    if (token !== undefined && token.length > 0) {
      if (this.#tokenIn === 'query') url += `${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`
      else protocols.push(`bearer.${token}`)
    }
    this.#log(`connect ${this.#url}`)
    let ws: WebSocketLike
    try {
      ws = new this.#WebSocket(url, protocols)
    } catch (err) {
      this.#report(new SocketError('FST_SOCKET_CONNECT_FAILED', `Could not open the socket: ${(err as Error).message}`))
      return this.#retry(false)
    }
    this.#ws = ws
    // Frames from a socket this client has given up on (closed, or silent too long) are not delivered.
    ws.onmessage = (event) => { if (ws === this.#ws) this.#frame(event.data) }
    ws.onclose = (event) => this.#closed(ws, event.code, event.reason)
    // The close event that follows says what happened; the error event's message (Node's, say "connect
    // ECONNREFUSED"; a browser gives none) only explains a connection that never opened.
    ws.onerror = (event) => { if (ws === this.#ws) this.#failure = messageOf(event) }
    // In Node, `ws` shows the status of a refused upgrade: kept until the body's code is read, then the
    // handshake is aborted, and the close event that follows is handled as that refusal.
    watchRefusal(ws, (refusal) => { if (ws === this.#ws) this.#refusal = refusal }, () => { if (ws === this.#ws) ws.close() })
    // A server that takes the connection and never answers (a hung proxy, a half-open path) must not hold the
    // client for the minutes a TCP timeout takes: without `connected` in time, the attempt is given up and retried.
    // The re-subscriptions after `connected` are part of the attempt: a server that never answers them is given up
    // on the same way.
    this.#handshakeTimer = setTimeout(() => {
      if (ws !== this.#ws) return
      this.#log(this.#subscriptions.settingUp !== ws ? `no connected within ${this.#connectTimeout} ms` : `no answer to the re-subscriptions within ${this.#connectTimeout} ms`)
      this.#abandon(ws, 'handshake timeout')
    }, this.#connectTimeout)
  }

  #frame (data: unknown): void {
    this.#lastTraffic = Date.now()
    let message: Message
    try {
      message = JSON.parse(String(data)) as Message
    } catch {
      return this.#report(new SocketError('FST_SOCKET_BAD_FRAME', 'The server sent a frame that is not JSON'))
    }
    if (typeof message !== 'object' || message === null || typeof message.cmd !== 'string') {
      return this.#report(new SocketError('FST_SOCKET_BAD_FRAME', 'The server sent a message without a cmd'))
    }
    this.#log(`recv ${message.channel}:${message.cmd}`)
    if (message.cmd === 'connected') return this.#opened(message as Message<ServerParam<'connected'>>)
    if (message.ref !== undefined && this.#pending.has(message.ref)) {
      if (message.cmd === 'error') {
        const { code, message: text } = message.param as ServerParam<'error'>
        return this.#settle(message.ref, new SocketError(code, text))
      }
      return this.#settle(message.ref, undefined, message.param)
    }
    if (message.cmd === 'error') {
      const { code, message: text } = message.param as ServerParam<'error'>
      this.#report(new SocketError(code, text))
    }
    this.#emit(message)
  }

  #opened (message: Message<ServerParam<'connected'>>): void {
    this.#connectionId = message.param.connectionId
    this.#home = message.channel
    this.#greeted = true
    const ws = this.#ws as WebSocketLike
    // The queue waits for the answers to the re-subscriptions (see Subscriptions).
    this.#subscriptions.setUp(ws, message.param.channels, () => this.#ready(ws, message))
  }

  /** The connection is set up (`connected`, and the re-subscriptions answered): flush the queue, then open. */
  #ready (ws: WebSocketLike, message: Message<ServerParam<'connected'>>): void {
    clearTimeout(this.#handshakeTimer)
    // Queued messages go before the application hears of the open (state listeners included), so they keep their
    // place in line ahead of anything sent from onStateChange('open') or onOpen.
    const items = this.#queue.drain()
    if (items.length > 0) this.#log(`flush ${items.length} queued`)
    // A request that timed out while queued was already answered "timeout": it must not run on the server later.
    for (const item of items) if (item.ref === undefined || this.#pending.has(item.ref)) ws.send(item.data)
    this.#setState('open')
    // A state listener may have closed the socket: then nothing more may start.
    if (this.#state !== 'open') return
    // Only a connection that stayed up resets the backoff and the one token refresh: a server that closes every
    // connection with 4001 right after `connected` must not get a reconnect loop without any delay.
    this.#stableTimer = setTimeout(() => {
      this.#attempt = 0
      this.#tokenRefreshed = false
    }, this.#resetAfter)
    this.#startHeartbeat()
    this.#scheduleRefresh(this.#currentToken)
    this.#onOpen?.()
    this.#emit(message)
  }

  #closed (ws: WebSocketLike, code: number, reason: string): void {
    if (ws !== this.#ws) return
    this.#ws = null
    this.#subscriptions.interrupt()
    clearTimeout(this.#handshakeTimer)
    clearTimeout(this.#stableTimer)
    clearInterval(this.#heartbeatTimer)
    clearTimeout(this.#refreshTimer)
    this.#log(`closed ${code}${reason.length > 0 ? ` ${reason}` : ''}`)
    this.#rejectAll(new SocketError('FST_SOCKET_CONNECTION_CLOSED', `The connection closed (${code}) before the answer came`, code))
    if (this.#state === 'closed') return
    const refusal = this.#refusal
    if (refusal !== null) {
      const { status, serverCode } = refusal
      this.#log(`refused ${status}${serverCode === undefined ? '' : ` ${serverCode}`}`)
      const error = new SocketError('FST_SOCKET_UPGRADE_REFUSED', `The server refused the upgrade with HTTP ${status}${serverCode === undefined ? '' : ` (${serverCode})`}`, undefined, { status, serverCode })
      return this.#after(refusalAction(status), error, true, refusal.retryAfter)
    }
    if (code === 1006 && !this.#greeted) {
      // All a browser shows of a refused upgrade (401, 403, 429…) as well as of a server that is down.
      const cause = this.#failure.length > 0 ? this.#failure : reason.length > 0 ? reason : 'refused, or unreachable'
      return this.#after('reconnect', new SocketError('FST_SOCKET_HANDSHAKE_FAILED', `The connection could not be established (${cause})`, code), true)
    }
    const error = new SocketError('FST_SOCKET_CONNECTION_CLOSED', `The server closed the connection (${code}${reason.length > 0 ? `: ${reason}` : ''})`, code)
    this.#after(closeAction(code), error, false)
  }

  /**
   * What follows a close or a refusal. `error` is reported when the client stops, and also when it goes on if
   * `always` (a refusal or a failed handshake is news; a reconnection after a close is not).
   */
  #after (action: CloseAction, error: SocketError, always: boolean, retryAfter = 0): void {
    const refresh = action === 'refresh-token' && typeof this.#token === 'function' && !this.#tokenRefreshed
    if (!refresh && (action === 'stop' || action === 'refresh-token' || this.#backoff === null)) return this.#end(error)
    if (always) this.#report(error)
    if (!refresh) return this.#retry(action === 'reconnect-slowly', retryAfter)
    // Once: the provider is asked for a fresh token; a second 4001 (or 401) in a row means it has none to give.
    this.#tokenRefreshed = true
    if (this.#state === 'closed') return
    this.#setState('reconnecting')
    void this.#connect()
  }

  /** Stops for good, reporting why; what was queued is reported dropped. */
  #end (error: SocketError): void {
    this.#stop()
    this.#report(error)
    this.#queue.clear('closed')
  }

  /** Schedules the next attempt: the backoff delay, plus the server's Retry-After (ms) if it gave one. */
  #retry (overloaded: boolean, retryAfter = 0): void {
    if (this.#state === 'closed') return
    if (this.#backoff === null) {
      this.#stop()
      this.#queue.clear('closed')
      return
    }
    if (this.#attempt >= this.#maxAttempts) {
      return this.#end(new SocketError('FST_SOCKET_MAX_ATTEMPTS', `Gave up after ${this.#attempt} reconnection attempts in a row (reconnect.maxAttempts)`))
    }
    this.#setState('reconnecting')
    // Added, not the larger of the two: clients refused at the same moment with the same Retry-After would
    // otherwise all come back at the same instant; the backoff's jitter spreads them.
    const delay = retryAfter + backoffDelay(this.#attempt++, this.#backoff, overloaded)
    this.#log(`retry in ${delay} ms`)
    this.#retryTimer = setTimeout(() => { void this.#connect() }, delay)
  }

  /** The browser is back online: a scheduled retry happens now instead of after its delay. */
  readonly #online = (): void => {
    if (this.#retryTimer === undefined) return
    this.#log('online: retry now')
    clearTimeout(this.#retryTimer)
    void this.#connect()
  }

  /** With a provider and a token that has `exp`: refresh it in band `refreshBefore` ms ahead (at half-life if sooner). */
  #scheduleRefresh (token: string | undefined): void {
    clearTimeout(this.#refreshTimer)
    if (typeof this.#token !== 'function' || token === undefined) return
    const exp = expiryOf(token)
    if (exp === null) return
    const remaining = exp * 1000 - Date.now()
    this.#refreshTimer = setTimeout(() => { void this.#refresh() }, Math.max(0, remaining - Math.min(this.#refreshBefore, remaining / 2)))
  }

  async #refresh (): Promise<void> {
    try {
      const token = await (this.#token as TokenProvider)()
      await this.request(this.#home, 'auth.refresh', { token })
      this.#currentToken = token
      this.#log('token refreshed')
      this.#scheduleRefresh(token)
    } catch (err) {
      // The server closes with 4001 at exp; the close policy then asks the provider once more.
      this.#report(err instanceof SocketError ? err : new SocketError('FST_SOCKET_TOKEN_PROVIDER', `The token provider failed: ${(err as Error).message}`))
    }
  }

  /** Gives up on a socket that does not answer: closed without waiting for its close event, as a 1006. */
  #abandon (ws: WebSocketLike, reason: string): void {
    ws.onclose = null
    ws.close()
    this.#closed(ws, 1006, reason)
  }

  #startHeartbeat (): void {
    if (this.#heartbeat === null) return
    const { interval, timeout } = this.#heartbeat
    // Checked twice per period: checked only once, the ping after an answered one can go out just short of
    // interval + timeout of silence, and a late tick then gives up on a server that answers every ping.
    this.#heartbeatTimer = setInterval(() => {
      const silent = Date.now() - this.#lastTraffic
      const ws = this.#ws
      if (ws === null) return
      if (silent >= interval + timeout) {
        this.#log(`server silent for ${silent} ms`)
        this.#abandon(ws, 'heartbeat timeout')
      } else if (silent >= interval) {
        ws.send(JSON.stringify({ channel: this.#home, cmd: 'ping', param: null }))
      }
    }, Math.min(interval, timeout) / 2)
  }

  #stop (): void {
    this.#setState('closed')
    this.#subscriptions.clear(new SocketError('FST_SOCKET_CONNECTION_CLOSED', 'The socket closed before the server answered the subscribe'))
    clearTimeout(this.#retryTimer)
    clearTimeout(this.#handshakeTimer)
    clearTimeout(this.#stableTimer)
    clearInterval(this.#heartbeatTimer)
    clearTimeout(this.#refreshTimer)
    this.#retryTimer = undefined
    browser.removeEventListener?.('online', this.#online)
  }

  #setState (state: SocketState): void {
    const previous = this.#state
    if (state === previous) return
    this.#state = state
    this.#log(`state ${state}`)
    for (const fn of this.#stateListeners) fn(state, previous)
  }

  #emit (message: Message): void {
    for (const fn of this.#listeners.get(message.cmd) ?? []) fn(message)
    for (const fn of this.#listeners.get('*') ?? []) fn(message)
    this.#onMessage?.(message)
  }

  #settle (ref: string, error: SocketError | undefined, value?: unknown): void {
    const pending = this.#pending.get(ref)
    if (pending === undefined) return
    this.#pending.delete(ref)
    clearTimeout(pending.timer)
    if (error === undefined) pending.resolve(value)
    else pending.reject(error)
  }

  #rejectAll (error: SocketError): void {
    for (const ref of [...this.#pending.keys()]) {
      // Requests still in the queue were never sent: they wait for the next connection.
      if (!this.#queue.has(ref)) this.#settle(ref, error)
    }
  }

  #dropped (item: Queued, reason: DropReason): void {
    const error = new SocketError('FST_SOCKET_MESSAGE_DROPPED', `A message was dropped (${reason}) before it could be sent`)
    this.#log(`drop (${reason})`)
    if (item.ref !== undefined && this.#pending.has(item.ref)) this.#settle(item.ref, error)
    else this.#report(error)
  }

  #report (error: SocketError): void {
    this.#log(`error ${error.code}`)
    this.#onError?.(error)
  }

  #log (line: string): void {
    if (this.#debug) this.#logger(`[forge-socket] ${line}`)
  }
}

/** The message of an error event: Node's `ws` (and undici) give one, a browser does not. */
function messageOf (event: unknown): string {
  const message = typeof event === 'object' && event !== null ? (event as { message?: unknown }).message : undefined
  return typeof message === 'string' ? message : ''
}
