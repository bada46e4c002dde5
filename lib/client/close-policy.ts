/**
 * The close policy: what the client does after a close or a refused upgrade, and the error it reports for it.
 */
import { CloseCode } from './close-codes.js'
import type { Seen } from './connect.js'
import { ClientErrorCode, SocketError } from './errors.js'

/** What the client does after the server closed the connection. */
export type CloseAction = 'stop' | 'reconnect' | 'reconnect-slowly' | 'refresh-token'

/**
 * The close-code policy of docs/protocol.md: 1000, 4000 and 4003 stop; 4001 asks for a fresh token; 1013
 * (overloaded) backs off longer; anything else (1001 shutdown, 1006 lost connection, 1011, 4008, …) reconnects
 * with backoff.
 */
export function closeAction (code: number): CloseAction {
  switch (code) {
    case CloseCode.NORMAL:
    case CloseCode.STOP:
    case CloseCode.FORBIDDEN:
      return 'stop'
    case CloseCode.UNAUTHORIZED:
      return 'refresh-token'
    case CloseCode.TRY_AGAIN_LATER:
      return 'reconnect-slowly'
    default:
      return 'reconnect'
  }
}

/**
 * What the client does after the server refused the upgrade with an HTTP status (seen in Node only):
 * 401 asks for a fresh token once; 429 and 503 (over a limit, shutting down) back off longer, like 1013; 408 and
 * the other 5xx (a proxy or server in trouble) back off; everything else stops, since it would be refused again
 * the same way (400 bad request, 403 forbidden, 404 no such route, a redirect the client does not follow, a 200
 * from something that is not a WebSocket server).
 *
 * @example
 * refusalAction(401)   // 'refresh-token'
 * refusalAction(503)   // 'reconnect-slowly'
 * refusalAction(404)   // 'stop'
 */
export function refusalAction (status: number): CloseAction {
  if (status === 401) return 'refresh-token'
  if (status === 429 || status === 503) return 'reconnect-slowly'
  if (status === 408 || (status >= 500 && status <= 599)) return 'reconnect'
  return 'stop'
}

/** The close code of a connection lost without a close frame: never sent by anyone, so not a `CloseCode`. */
export const ABNORMAL_CLOSURE = 1006

/** What follows a close: the action, the error it is reported as, and the wait the server asked for (ms, 0 without one). */
export interface CloseOutcome {
  action: CloseAction
  error: SocketError
  /** Reported even when the client goes on: a refusal or a failed handshake is news; a reconnection after a close is not. */
  always: boolean
  retryAfter: number
}

/** The outcome of a close with `code` and `reason`, after what the attempt had `seen`. */
export function closeOutcome (code: number, reason: string, seen: Seen): CloseOutcome {
  const refusal = seen.refusal
  if (refusal !== null) {
    const { status, serverCode } = refusal
    const error = new SocketError(ClientErrorCode.UPGRADE_REFUSED, `The server refused the upgrade with HTTP ${status}${serverCode === undefined ? '' : ` (${serverCode})`}`, undefined, { status, serverCode })
    return { action: refusalAction(status), error, always: true, retryAfter: refusal.retryAfter }
  }
  if (code === ABNORMAL_CLOSURE && !seen.greeted) {
    // All a browser shows of a refused upgrade (401, 403, 429…) as well as of a server that is down.
    const cause = seen.failure.length > 0 ? seen.failure : reason.length > 0 ? reason : 'refused, or unreachable'
    return { action: 'reconnect', error: new SocketError(ClientErrorCode.HANDSHAKE_FAILED, `The connection could not be established (${cause})`, code), always: true, retryAfter: 0 }
  }
  const error = new SocketError(ClientErrorCode.CONNECTION_CLOSED, `The server closed the connection (${code}${reason.length > 0 ? `: ${reason}` : ''})`, code)
  return { action: closeAction(code), error, always: false, retryAfter: 0 }
}
