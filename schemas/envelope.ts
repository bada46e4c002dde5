import Type, { type Static } from 'typebox'

/**
 * The wire envelope of protocol v1, as a client sends it. `channel` names the channel the message is about (the
 * connection must be a member), `cmd` the command, `param` anything JSON, `ref` an id the answer will carry.
 */
export const InboundEnvelope = Type.Object({
  channel: Type.String({ maxLength: 255 }),
  cmd: Type.String({ minLength: 1, maxLength: 128 }),
  param: Type.Optional(Type.Unknown()),
  ref: Type.Optional(Type.String({ minLength: 1, maxLength: 64 }))
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
