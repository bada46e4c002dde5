/** The subprotocol the server selects; a client offers it beside its `bearer.<jwt>` token. */
export const SUBPROTOCOL = 'forge.v1'

/** Prefix of the subprotocol entry that carries a token. */
export const BEARER_PREFIX = 'bearer.'

/**
 * Commands the protocol owns. An application can't register a handler for any of them (FST_SOCKET_RESERVED_COMMAND
 * at boot). docs/protocol.md describes each; keep the two lists the same (a test compares them).
 */
export const RESERVED_COMMANDS = Object.freeze([
  'connected', // server → client, first message: { connectionId, channels, positions?, recovery? }
  'reply', // server → client, the answer to a message that carried `ref`
  'error', // server → client, { code, message }, with the `ref` of the message it answers
  'user-joined', // server → client, presence
  'user-left', // server → client, presence
  'presence-diff', // server → client, presence gathered over an interval: { joins, leaves } (channels that opt in)
  'subscribe', // client → server, join a channel through `authorizeChannel`
  'unsubscribe', // client → server, leave a channel
  'ping', // client → server, answered by `pong` (browsers cannot send WebSocket pings)
  'pong', // server → client
  'auth.refresh', // client → server, a fresh token for the same subject (not accepted yet: see docs/protocol.md)
  'channel-reset', // server → client, a gap a node could not fill: { epoch, seq, reason } (reload the channel's state)
  'history', // client → server, a page of a channel's kept messages: { since?, limit? } → { epoch, seq, messages }
  'close-connection' // server → client, Project Forge's "stop, do not reconnect" (sent as close code 4000)
] as const)

export type ReservedCommand = typeof RESERVED_COMMANDS[number]

const reserved: ReadonlySet<string> = new Set(RESERVED_COMMANDS)

export function isReserved (cmd: string): boolean {
  return reserved.has(cmd)
}

/** Close codes an application may send with `disconnect`: everything a peer may legally receive. */
export function isSendableCloseCode (code: number): boolean {
  if (!Number.isInteger(code)) return false
  return code === 1000 || code === 1001 || code === 1003 || (code >= 1007 && code <= 1011) || code === 1013 ||
    (code >= 4000 && code <= 4999)
}

/** Close reasons must fit in a control frame (123 bytes of UTF-8); longer ones are cut on a character boundary. */
export function closeReason (reason: string): string {
  if (Buffer.byteLength(reason) <= 123) return reason
  // By code point, so a surrogate pair (an emoji) is never split into a lone half that would arrive as U+FFFD.
  let cut = ''
  for (const char of reason) {
    if (Buffer.byteLength(cut) + Buffer.byteLength(char) > 123) break
    cut += char
  }
  return cut
}
