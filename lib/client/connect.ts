/**
 * Where and how each attempt's WebSocket is opened: the URL (a path is resolved against the page), the WebSocket
 * class, the token beside the subprotocol (or in the query), and the wiring of its events; and what a browser page
 * gives: its location, its WebSocket class, its `online` event.
 */
import { ClientErrorCode, SocketError } from './errors.js'
import type { SocketOptions } from './options.js'
import { watchRefusal, type Refusal } from './refusal.js'
import type { Message, WebSocketConstructor, WebSocketLike } from './types.js'

/** The subprotocol the server selects; the token rides beside it as `bearer.<jwt>`. */
const SUBPROTOCOL = 'forge.v1'

/** What one attempt saw before it closed: the server's `connected`, an HTTP refusal (Node), the error event's message. */
export interface Seen {
  greeted: boolean
  refusal: Refusal | null
  failure: string
}

/** What the Socket hears of an attempt's WebSocket. */
export interface AttemptEvents {
  /** Whether the Socket still holds this WebSocket: events of one it has given up on are ignored. */
  current (): boolean
  /** A frame, decoded: the message, or the FST_SOCKET_BAD_FRAME error it is. */
  frame (message: Message | SocketError): void
  closed (code: number, reason: string): void
}

interface BrowserWindow {
  location?: { protocol: string, host: string }
  addEventListener?: (type: string, listener: () => void) => void
  removeEventListener?: (type: string, listener: () => void) => void
}

/** The page, in a browser; in Node all of it is undefined. */
export const browser = globalThis as unknown as BrowserWindow & { WebSocket?: WebSocketConstructor }

/** Turns a path or an http(s) URL into the ws(s) URL to open. */
export function resolveUrl (url: string, location = browser.location): string {
  if (/^wss?:\/\//i.test(url)) return url
  if (/^https?:\/\//i.test(url)) return url.replace(/^http/i, 'ws')
  if (location === undefined) throw new SocketError(ClientErrorCode.BAD_URL, `"${url}" is a path, and there is no page to resolve it against: pass a ws:// URL`)
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws'
  return `${scheme}://${location.host}${url.startsWith('/') ? '' : '/'}${url}`
}

/** Opens each attempt's WebSocket: the URL, the subprotocol and token, and the wiring of its events to the Socket. */
export class Endpoint {
  /** The ws(s) URL, without a token. */
  readonly url: string
  readonly #WebSocket: WebSocketConstructor
  readonly #tokenIn: 'protocol' | 'query'

  /** @throws SocketError FST_SOCKET_BAD_URL, FST_SOCKET_NO_WEBSOCKET */
  constructor (options: Pick<SocketOptions, 'url' | 'tokenIn' | 'WebSocket'>) {
    this.url = resolveUrl(options.url)
    const WebSocketClass = (options.WebSocket as WebSocketConstructor | undefined) ?? browser.WebSocket
    if (WebSocketClass === undefined) throw new SocketError(ClientErrorCode.NO_WEBSOCKET, 'No WebSocket class here: pass options.WebSocket (in Node 20, the one from "ws")')
    this.#WebSocket = WebSocketClass
    this.#tokenIn = options.tokenIn ?? 'protocol'
  }

  /**
   * A new WebSocket with `token` beside the subprotocol, or in the query, `since` (base64url, see Positions) in the
   * query, its events handed to `on`, and what it shows before it closes written to `seen`. Throws what the
   * constructor throws.
   */
  open (token: string | undefined, since: string | undefined, seen: Seen, on: AttemptEvents): WebSocketLike {
    let url = this.url
    if (since !== undefined) url += `${url.includes('?') ? '&' : '?'}since=${since}`
    const protocols = [SUBPROTOCOL]
    if (token !== undefined && token.length > 0) {
      if (this.#tokenIn === 'query') url += `${url.includes('?') ? '&' : '?'}token=${encodeURIComponent(token)}`
      else protocols.push(`bearer.${token}`)
    }
    const ws = new this.#WebSocket(url, protocols)
    // Frames from a socket this client has given up on (closed, or silent too long) are not delivered.
    ws.onmessage = (event) => { if (on.current()) on.frame(decodeFrame(event.data)) }
    ws.onclose = (event) => on.closed(event.code, event.reason)
    // The close event that follows says what happened; the error event's message (Node's, say "connect
    // ECONNREFUSED"; a browser gives none) only explains a connection that never opened.
    ws.onerror = (event) => { if (on.current()) seen.failure = messageOf(event) }
    // In Node, `ws` shows the status of a refused upgrade: kept until the body's code is read, then the
    // handshake is aborted, and the close event that follows is handled as that refusal.
    watchRefusal(ws, (refusal) => { if (on.current()) seen.refusal = refusal }, () => { if (on.current()) ws.close() })
    return ws
  }
}

/** A frame from the server as a message, or the error it is (not JSON, or no `cmd`). */
function decodeFrame (data: unknown): Message | SocketError {
  let message: Message
  try {
    message = JSON.parse(String(data)) as Message
  } catch {
    return new SocketError(ClientErrorCode.BAD_FRAME, 'The server sent a frame that is not JSON')
  }
  if (typeof message !== 'object' || message === null || typeof message.cmd !== 'string') {
    return new SocketError(ClientErrorCode.BAD_FRAME, 'The server sent a message without a cmd')
  }
  return message
}

/** The message of an error event: Node's `ws` (and undici) give one, a browser does not. */
function messageOf (event: unknown): string {
  const message = typeof event === 'object' && event !== null ? (event as { message?: unknown }).message : undefined
  return typeof message === 'string' ? message : ''
}
