import type { OutboundMessage } from '../../schemas/envelope.js'

/**
 * What one node tells the others. Every message carries the id of the node it came from, so a node never
 * delivers its own messages twice (its local members already got them without a broker round trip).
 */
export type BrokerMessage =
  | { type: 'channel', origin: string, channel: string, message: OutboundMessage, except?: string }
  | { type: 'connection', origin: string, connectionId: string, message: Omit<OutboundMessage, 'channel'> & { channel?: string } }
  | { type: 'join', origin: string, connectionId: string, channel: string }
  | { type: 'leave', origin: string, connectionId: string, channel: string }
  | { type: 'disconnect', origin: string, connectionId: string, code: number, reason: string }

/**
 * The scale-out engine behind `app.socket`. Implementations: `MemoryBroker` (one process, the default) and, for
 * several nodes, the Redis broker. Every method may be synchronous or return a promise.
 *
 * @example
 * const broker: Broker = new MemoryBroker()
 * await broker.start('node-a', (msg) => console.log(msg.type))
 */
export interface Broker {
  /** Starts delivering other nodes' messages to `deliver`; `log` is for trouble the broker meets later. Called once, at register time. */
  start (nodeId: string, deliver: (message: BrokerMessage) => void, log: BrokerLogger): Promise<void> | void
  /** Sends a message to the other nodes. */
  publish (message: BrokerMessage): Promise<void> | void
  /** This node has its first local member in `channel`: start receiving the channel's messages. */
  subscribe (channel: string): Promise<void> | void
  /** This node's last local member left `channel`. */
  unsubscribe (channel: string): Promise<void> | void
  /** Stops delivering and releases what the broker created. Called from the app's `onClose`. */
  close (): Promise<void> | void
  /** `degraded` while the broker cannot reach the other nodes (local delivery goes on). Absent means always `ok`. */
  readonly health?: BrokerHealth
}

/** `ok`, or `degraded` while other nodes can't be reached. */
export type BrokerHealth = 'ok' | 'degraded'

/** The logger a broker gets (the app's, as a child). */
export interface BrokerLogger {
  error (obj: object, msg: string): void
  warn (obj: object, msg: string): void
}

/** Tells whether a value has the shape of a Broker (used to validate the `broker` option). */
export function isBroker (value: unknown): value is Broker {
  if (typeof value !== 'object' || value === null) return false
  const candidate = value as Record<string, unknown>
  return ['start', 'publish', 'subscribe', 'unsubscribe', 'close'].every((name) => typeof candidate[name] === 'function')
}
