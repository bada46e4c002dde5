import type { Broker, BrokerHost, BrokerMessage, ChannelBroadcast, HistorySettings, NodeReport, PresenceEntry, PresenceUpdate, StreamPage, StreamPosition } from './broker.js'
import { Streams } from './streams.js'

interface Node {
  deliver: (message: BrokerMessage) => void
  channels: Set<string>
  host: BrokerHost
}

/**
 * Connects the MemoryBrokers of several forge-socket instances in one process, as Redis connects nodes. Useful to
 * run two apps side by side in one test or one process; a single app needs none.
 */
export class MemoryHub {
  readonly nodes = new Map<string, Node>()
  /** channel → user → node → that user's connections in the channel on that node. */
  readonly presence = new Map<string, Map<string, Map<string, number>>>()
  /** The channels' streams (history), shared by the nodes as a Redis would be. */
  readonly streams = new Streams()
}

/**
 * The embedded default broker: one process, no external service. Messages published by one node reach the other
 * nodes on the same `MemoryHub` synchronously, in the order they were published, and only where that node has
 * members in the channel. Presence, node counts and the channels' history are kept in the hub.
 *
 * @example
 * const hub = new MemoryHub()
 * await a.register(forgeSocket, { jwt, broker: new MemoryBroker(hub) })
 * await b.register(forgeSocket, { jwt, broker: new MemoryBroker(hub) })
 */
export class MemoryBroker implements Broker {
  readonly #hub: MemoryHub
  #nodeId: string | null = null

  constructor (hub: MemoryHub = new MemoryHub()) {
    this.#hub = hub
  }

  start (host: BrokerHost): void {
    this.#nodeId = host.nodeId
    this.#hub.nodes.set(host.nodeId, { deliver: host.deliver, channels: new Set(), host })
  }

  publish (message: BrokerMessage): void {
    for (const [nodeId, node] of this.#hub.nodes) {
      if (nodeId === message.origin) continue
      if (message.type === 'channel' && !node.channels.has(message.channel)) continue
      node.deliver(message)
    }
  }

  subscribe (channel: string): void {
    this.#self()?.channels.add(channel)
  }

  unsubscribe (channel: string): void {
    this.#self()?.channels.delete(channel)
  }

  setPresence (channel: string, user: string, connections: number): PresenceUpdate {
    const self = this.#nodeId
    if (self === null) return { change: null, users: this.#hub.presence.get(channel)?.size ?? 0 }
    const users = this.#hub.presence.get(channel) ?? new Map<string, Map<string, number>>()
    const nodes = users.get(user) ?? new Map<string, number>()
    const before = nodes.size > 0
    if (connections > 0) nodes.set(self, connections)
    else nodes.delete(self)
    const after = nodes.size > 0
    // Nothing stays behind for a user or channel nobody is in.
    if (after) users.set(user, nodes)
    else users.delete(user)
    if (users.size > 0) this.#hub.presence.set(channel, users)
    else this.#hub.presence.delete(channel)
    return { change: before === after ? null : after ? 'joined' : 'left', users: users.size }
  }

  presence (channel: string): PresenceEntry[] {
    const users = this.#hub.presence.get(channel) ?? new Map<string, Map<string, number>>()
    return [...users].map(([user, nodes]) => ({ user, connections: sum(nodes.values()) }))
  }

  nodes (): NodeReport[] {
    const at = Date.now()
    return [...this.#hub.nodes].map(([node, { host }]) => ({ node, ...host.counts(), at }))
  }

  close (): void {
    const self = this.#nodeId
    if (self === null) return
    this.#hub.nodes.delete(self)
    for (const [channel, users] of this.#hub.presence) {
      for (const user of [...users.keys()]) this.setPresence(channel, user, 0)
    }
    this.#nodeId = null
  }

  append (message: ChannelBroadcast, settings: HistorySettings): StreamPosition {
    const position = this.#hub.streams.append(message.channel, message.message, settings)
    this.publish(Object.assign({}, message, { message: Object.assign({}, message.message, { seq: position.seq }), epoch: position.epoch }))
    return position
  }

  position (channel: string, settings: HistorySettings): StreamPosition {
    return this.#hub.streams.position(channel, settings)
  }

  read (channel: string, since: StreamPosition | undefined, limit: number, settings: HistorySettings): StreamPage {
    return this.#hub.streams.read(channel, since, limit, settings)
  }

  #self (): Node | undefined {
    return this.#nodeId === null ? undefined : this.#hub.nodes.get(this.#nodeId)
  }
}

function sum (values: Iterable<number>): number {
  let total = 0
  for (const value of values) total += value
  return total
}
