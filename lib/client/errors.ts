/**
 * The client's errors: `SocketError`, and the table of every code the client raises itself. The server's codes
 * (lib/errors.ts) reach the client in `error` messages and are passed on as they come, so `code` stays a string.
 * Each code here has a row in the error table of docs/client.md (a unit test checks it).
 */
export const ClientErrorCode = Object.freeze({
  BAD_FRAME: 'FST_SOCKET_BAD_FRAME',
  BAD_URL: 'FST_SOCKET_BAD_URL',
  CONNECT_FAILED: 'FST_SOCKET_CONNECT_FAILED',
  CONNECTION_CLOSED: 'FST_SOCKET_CONNECTION_CLOSED',
  HANDSHAKE_FAILED: 'FST_SOCKET_HANDSHAKE_FAILED',
  INVALID_OPTIONS: 'FST_SOCKET_INVALID_OPTIONS',
  MAX_ATTEMPTS: 'FST_SOCKET_MAX_ATTEMPTS',
  MESSAGE_DROPPED: 'FST_SOCKET_MESSAGE_DROPPED',
  NO_WEBSOCKET: 'FST_SOCKET_NO_WEBSOCKET',
  QUEUE_FULL: 'FST_SOCKET_QUEUE_FULL',
  REQUEST_TIMEOUT: 'FST_SOCKET_REQUEST_TIMEOUT',
  RESUBSCRIBE_REFUSED: 'FST_SOCKET_RESUBSCRIBE_REFUSED',
  SUBSCRIBE_CANCELLED: 'FST_SOCKET_SUBSCRIBE_CANCELLED',
  TOKEN_PROVIDER: 'FST_SOCKET_TOKEN_PROVIDER',
  UPGRADE_REFUSED: 'FST_SOCKET_UPGRADE_REFUSED'
} as const)

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
