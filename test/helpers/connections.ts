// Connections for unit tests of the layers (hub, cluster) without a server: a Connection over a socket that
// records what it is sent and how it was closed. Everything above the socket is the real code.
import { Observer } from '../../lib/observer.js'
import type { WebSocket } from 'ws'
import type { FastifyBaseLogger } from 'fastify'
import { Connection } from '../../lib/connection.js'
import { resolveOptions } from '../../lib/options.js'
import type { OutboundMessage } from '../../schemas/envelope.js'
import type { Profile } from '../../lib/options.js'

/** What the recording socket saw. */
export interface SocketRecord {
  /** Every message written to it, decoded. */
  sent: OutboundMessage[]
  /** The close code and reason, once closed. */
  closed: { code: number, reason: string } | null
}

const quiet = (): void => {}
/** A logger that writes nothing (what the layers log is not what these tests check). */
export const silentLog: FastifyBaseLogger = {
  level: 'silent', fatal: quiet, error: quiet, warn: quiet, info: quiet, debug: quiet, trace: quiet, silent: quiet,
  child: () => silentLog
}
const limits = resolveOptions({ jwt: { secret: 'unit-test-secret-that-is-long-enough' } })

/** A Connection (id `id`, user `user`, home channel `home`) over a recording socket. */
export function recordedConnection (id: string, user: string | null, home = 'home'): { conn: Connection, socket: SocketRecord } {
  const record: SocketRecord = { sent: [], closed: null }
  const socket = {
    readyState: 1,
    bufferedAmount: 0,
    send (data: Buffer) { record.sent.push(JSON.parse(data.toString('utf8')) as OutboundMessage) },
    close (code: number, reason: string) { record.closed = { code, reason } },
    terminate () { record.closed = { code: 1006, reason: '' } },
    ping () {}
  } as unknown as WebSocket
  const profile: Profile | null = user === null ? null : { id: user }
  const conn = new Connection({ id, socket, stream: null, profile, metadata: null, home, ip: '127.0.0.1', peer: null, log: silentLog, act: null, onBinary: undefined, limits, observer: new Observer() })
  return { conn, socket: record }
}
