/** Who joined or left: their connection, or (when their node died or came back) their node. */
export interface PresenceMember {
  user: string
  connectionId?: string
  node?: string
}

/** A message as it travels: `Message<P>` for a known param type. */
export interface Message<P = unknown, C extends string = string> {
  readonly channel: string
  readonly cmd: C
  readonly param: P
  readonly ref?: string
  readonly seq?: number
}

/**
 * The params of the commands a client sends, by command. Declare yours once and `send` / `request` check them:
 *
 * @example
 * declare module 'fastify-forge-socket/client' {
 *   interface ClientCommands { 'chat-message': { text: string } }
 * }
 */
export interface ClientCommands {}

/**
 * The params of the messages a server sends, by command. The protocol's own are here; add yours the same way and
 * `on(cmd, fn)` hands `fn` a typed message.
 */
export interface ServerCommands {
  'connected': { connectionId: string, channels: string[] }
  'error': { code: string, message: string }
  'user-joined': { user: string, connectionId: string }
  'user-left': { user: string, connectionId: string }
  /** Presence in channels whose mode is `diff`: every join and leave of one interval. */
  'presence-diff': { joins: PresenceMember[], leaves: PresenceMember[] }
  'pong': null
}

export type ClientParam<C extends string> = C extends keyof ClientCommands ? ClientCommands[C] : unknown
export type ServerParam<C extends string> = C extends keyof ServerCommands ? ServerCommands[C] : unknown

/** `connecting` (first attempt), `open` (after `connected`), `reconnecting` (waiting or trying again), `closed` (for good). */
export type SocketState = 'connecting' | 'open' | 'reconnecting' | 'closed'

/** The part of the WebSocket API the client uses: the browser's, or `ws` in Node. */
export interface WebSocketLike {
  readonly readyState: number
  onopen: ((event: unknown) => void) | null
  onmessage: ((event: { data: unknown }) => void) | null
  onclose: ((event: { code: number, reason: string }) => void) | null
  onerror: ((event: unknown) => void) | null
  send (data: string): void
  close (code?: number, reason?: string): void
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike

/** What a `SocketError` may carry besides its code, depending on what went wrong. */
export interface SocketErrorDetails {
  /** The HTTP status of a refused upgrade (401, 403, 429…); only in Node, where `ws` shows it. */
  status?: number | undefined
  /** The `FST_SOCKET_*` code of the server's JSON error body with that status (`FST_SOCKET_TOKEN_EXPIRED`…). */
  serverCode?: string | undefined
  /** The channel a refused `subscribe` named. */
  channel?: string | undefined
}

/**
 * Every error the client reports (through `onError`, or by rejecting a request) has a stable code.
 *
 * @example
 * onError: (err) => { if (err.code === 'FST_SOCKET_UPGRADE_REFUSED' && err.status === 401) login() }
 */
export class SocketError extends Error {
  readonly code: string
  /** The close code, for errors about a closed connection. */
  readonly closeCode: number | undefined
  /** The HTTP status, for a refused upgrade (Node only: browsers do not show it). */
  readonly status: number | undefined
  /** The code in the server's refusal body, when there was one. */
  readonly serverCode: string | undefined
  /** The channel, for a refused `subscribe` or re-subscription. */
  readonly channel: string | undefined

  constructor (code: string, message: string, closeCode?: number, details: SocketErrorDetails = {}) {
    super(message)
    this.name = 'SocketError'
    this.code = code
    this.closeCode = closeCode
    this.status = details.status
    this.serverCode = details.serverCode
    this.channel = details.channel
  }
}

/**
 * The `exp` claim of a JWT, read without verifying it (the server verifies; the client only needs to know when to
 * refresh). Null when the token has none or is not a JWT.
 */
export function expiryOf (token: string): number | null {
  const payload = token.split('.')[1]
  if (payload === undefined) return null
  try {
    const claims = JSON.parse(atob(payload.replace(/-/g, '+').replace(/_/g, '/'))) as { exp?: unknown }
    return typeof claims.exp === 'number' ? claims.exp : null
  } catch {
    return null
  }
}
