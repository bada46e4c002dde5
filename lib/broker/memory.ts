import type { Broker, BrokerMessage } from './broker.js'

interface Node {
  deliver: (message: BrokerMessage) => void
  channels: Set<string>
}

/**
 * Connects the MemoryBrokers of several forge-socket instances in one process, as Redis connects nodes. Useful to
 * run two apps side by side in one test or one process; a single app needs none.
 */
export class MemoryHub {
  readonly nodes = new Map<string, Node>()
}

/**
 * The embedded default broker: one process, no external service. Messages published by one node reach the other
 * nodes on the same `MemoryHub` synchronously, in the order they were published, and only where that node has
 * members in the channel.
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

  start (nodeId: string, deliver: (message: BrokerMessage) => void): void {
    this.#nodeId = nodeId
    this.#hub.nodes.set(nodeId, { deliver, channels: new Set() })
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

  close (): void {
    if (this.#nodeId !== null) this.#hub.nodes.delete(this.#nodeId)
    this.#nodeId = null
  }

  #self (): Node | undefined {
    return this.#nodeId === null ? undefined : this.#hub.nodes.get(this.#nodeId)
  }
}
