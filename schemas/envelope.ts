import Type, { type Static } from 'typebox'

/**
 * The wire envelope of protocol v1, as a client sends it. `channel` names the channel the message is about (the
 * connection must be a member), `cmd` the command, `param` anything JSON, `ref` an id the answer will carry, `id`
 * the message's own id (dedupe).
 */
export const InboundEnvelope = Type.Object({
  channel: Type.String({ maxLength: 255 }),
  cmd: Type.String({ minLength: 1, maxLength: 128 }),
  param: Type.Optional(Type.Unknown()),
  ref: Type.Optional(Type.String({ minLength: 1, maxLength: 64 })),
  /**
   * The client's own id for the message, the same on every resend: the server handles each of a user's ids once
   * within `dedupe.window` (docs/protocol.md#message-ids).
   */
  id: Type.Optional(Type.String({ minLength: 1, maxLength: 64 }))
})

export type InboundMessage = Static<typeof InboundEnvelope>

/** What the server sends: the same envelope, with `seq` on channel messages. */
export interface OutboundMessage<P = unknown> {
  channel: string
  cmd: string
  param: P
  ref?: string
  seq?: number
}

/** What application code passes to `broadcast`, `sendToChannel` and `sendToConnection`. */
export const ServerMessage = Type.Object({
  cmd: Type.String({ minLength: 1, maxLength: 128 }),
  param: Type.Optional(Type.Unknown())
})

export type ServerMessageData = Static<typeof ServerMessage>

/** A place in a channel's stream, as a client sends it: the stream's epoch, and the last seq it saw there. */
export const Position = Type.Object({
  epoch: Type.String({ minLength: 1, maxLength: 64 }),
  seq: Type.Integer({ minimum: 0, maximum: Number.MAX_SAFE_INTEGER })
}, { additionalProperties: false })

/**
 * The upgrade's `since` query parameter, decoded (base64url of this JSON): each channel's last position, for the
 * channels the route and `onOpen` put the connection in.
 */
export const SinceMap = Type.Record(Type.String(), Position, { maxProperties: 128 })
export type SinceMapData = Static<typeof SinceMap>

/** The `history` command's param: what to read of a channel's kept messages (docs/protocol.md). */
export const HistoryQuery = Type.Union([Type.Null(), Type.Object({
  /** Messages after this position (of the channel's epoch); without it, the newest. */
  since: Type.Optional(Position),
  /** At most this many (default 100). */
  limit: Type.Optional(Type.Integer({ minimum: 0, maximum: 100 }))
}, { additionalProperties: false })])
export type HistoryQueryData = Static<typeof HistoryQuery>
