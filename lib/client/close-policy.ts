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
