import { Type, type Static } from 'typebox'

/** `POST api/send`: a channel message from an admin, to every member on every node. */
export const AdminSendSchema = Type.Object({
  channel: Type.String({ minLength: 1, maxLength: 255 }),
  cmd: Type.String({ minLength: 1, maxLength: 255 }),
  param: Type.Optional(Type.Unknown())
}, { additionalProperties: false })

/** `POST api/disconnect`: closes one connection, on whichever node holds it. */
export const AdminDisconnectSchema = Type.Object({
  id: Type.String({ minLength: 1, maxLength: 64 }),
  code: Type.Optional(Type.Integer({ minimum: 1000, maximum: 4999 })),
  reason: Type.Optional(Type.String({ maxLength: 120 }))
}, { additionalProperties: false })

/** `GET api/connections?channel=`. */
export const AdminConnectionsQuerySchema = Type.Object({
  channel: Type.Optional(Type.String({ minLength: 1, maxLength: 255 }))
}, { additionalProperties: false })

export type AdminSend = Static<typeof AdminSendSchema>
export type AdminDisconnect = Static<typeof AdminDisconnectSchema>
export type AdminConnectionsQuery = Static<typeof AdminConnectionsQuerySchema>
