/**
 * The WebSocket close codes forge-socket sends, named after what they mean (docs/protocol.md). They live here,
 * with the client, because the client ships to browsers and may import nothing outside lib/client/; the server's
 * lib/errors.ts re-exports this table, so both ends read the same numbers.
 */
export const CloseCode = Object.freeze({
  NORMAL: 1000,
  GOING_AWAY: 1001,
  UNSUPPORTED_DATA: 1003,
  INVALID_PAYLOAD: 1007,
  POLICY_VIOLATION: 1008,
  MESSAGE_TOO_BIG: 1009,
  INTERNAL_ERROR: 1011,
  TRY_AGAIN_LATER: 1013,
  STOP: 4000,
  UNAUTHORIZED: 4001,
  FORBIDDEN: 4003,
  SLOW_CONSUMER: 4008
} as const)

/** One of the numbers in `CloseCode`. */
export type CloseCodeValue = typeof CloseCode[keyof typeof CloseCode]
