/** What the client does after the server closed the connection. */
export type CloseAction = 'stop' | 'reconnect' | 'reconnect-slowly' | 'refresh-token'

/**
 * The close-code policy of docs/protocol.md: 1000, 4000 and 4003 stop; 4001 asks for a fresh token; 1013
 * (overloaded) backs off longer; anything else (1001 shutdown, 1006 lost connection, 1011, 4008, …) reconnects
 * with backoff.
 */
export function closeAction (code: number): CloseAction {
  switch (code) {
    case 1000:
    case 4000:
    case 4003:
      return 'stop'
    case 4001:
      return 'refresh-token'
    case 1013:
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
