import type { FastifyInstance } from 'fastify'
import type { Client } from './server.js'

/**
 * Broadcasts a sentinel from `app` and waits for it on every client. A node delivers in order on each connection
 * and publishes in order, so whatever `app` sent to the channel before has arrived by then (used to show that
 * something did NOT arrive).
 */
export async function flush (app: FastifyInstance, channel: string, ...clients: Client[]): Promise<void> {
  const ref = Math.random().toString(36).slice(2)
  app.socket.broadcast(channel, { cmd: 'sentinel', param: ref })
  await Promise.all(clients.map((c) => c.next((m) => m.cmd === 'sentinel' && m.param === ref)))
}

/** Waits for a condition another node makes true, checking once per event-loop turn (bounded). */
export async function until (condition: () => boolean | Promise<boolean>): Promise<void> {
  for (let turns = 0; !(await condition()); turns++) {
    if (turns > 100_000) throw new Error('condition never became true')
    await new Promise((resolve) => setImmediate(resolve))
  }
}
