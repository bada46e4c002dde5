import type { OutboundMessage } from '../../schemas/envelope.js'
import { Client, sign } from './server.js'

/** A channel's position, as `connected`, a subscribe reply and `since` carry it. */
export interface Position { epoch: string, seq: number }

/** The upgrade's `since`: base64url of the JSON. */
export function since (positions: Record<string, Position>): string {
  return Buffer.from(JSON.stringify(positions)).toString('base64url')
}

/**
 * A client of the room route's `room` as `user` (with `since`, if given) that records every frame in the order it
 * came: `frames` holds them all, `connected` resolves with the first.
 */
export function open (base: string, room: string, user: string, positions?: Record<string, Position>): { client: Client, frames: OutboundMessage[], connected: Promise<OutboundMessage> } {
  const query = positions === undefined ? '' : `?since=${since(positions)}`
  const client = new Client(`${base}/ws/${room}${query}`, { headers: { authorization: `Bearer ${sign({ sub: user })}` } })
  const frames: OutboundMessage[] = []
  client.ws.on('message', (data) => frames.push(JSON.parse(data.toString()) as OutboundMessage))
  return { client, frames, connected: client.next('connected') }
}

/** The position `connected` gives for `channel`. */
export function positionOf (connected: OutboundMessage, channel: string): Position {
  return (connected.param as { positions: Record<string, Position> }).positions[channel] as Position
}
