// What the bench's processes share: the kinds of server, the JWT, the messages and their sizes.
import { createSigner } from 'fast-jwt'

export const SECRET = 'bench-secret-that-is-long-enough-for-hs256'
/** The channel (room) every subscriber is in. */
export const CHANNEL = 'bench-fan'
/** The channel forge-socket's publisher connection is in (it is not a subscriber). */
export const PUB_CHANNEL = 'bench-pub'

export const KINDS = ['forge', 'ws', 'wscork', 'socketio'] as const
/** Every kind of server: those of KINDS, and bare Fastify with @fastify/websocket (connection setup only). */
export type Kind = typeof KINDS[number] | 'fastify'
export const KIND_NAMES: Record<Kind, string> = { forge: 'forge-socket', ws: 'raw ws (naive)', wscork: 'ws, framed once, corked', socketio: 'socket.io 4', fastify: 'Fastify + @fastify/websocket (bare)' }

/** What a role connects as: a channel member, the publisher, or an echo client (also a member). */
export type Role = 'sub' | 'pub' | 'echo'

/** Served by every bench server at GET /__bench/stats (with ?gc=1, after a full garbage collection). */
export interface ServerStats {
  /** user + system CPU since the process started, µs. */
  cpu: number
  rss: number
  heapUsed: number
  external: number
  arrayBuffers: number
  /** Open WebSocket connections. */
  open: number
}

/** Server-side CPU time of this process, µs. */
export function cpuMicros (): number {
  const { user, system } = process.cpuUsage()
  return user + system
}

/** A signed HS256 token for `sub` (each server verifies it on connect). */
export function token (sub: string): string {
  return createSigner({ key: SECRET, algorithm: 'HS256', expiresIn: 3_600_000 })({ sub })
}

/**
 * The published param: the send time (performance.now() of the load generator, which also receives, so one
 * clock) and padding, so that forge-socket's envelope of it is about 100 bytes.
 */
export function param (t: number): string {
  return `{"t":${t.toFixed(3)},"p":"abcdefghijklmnopqrstuvwxyz0123"}`
}
