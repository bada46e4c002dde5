import { ChannelRegistry, type Channel, type MembershipChange } from './channels.js'
import { ConnectionState, type Connection, type ConnectionInfo } from './connection.js'
import { encode, envelope } from './codec.js'
import { headerLength, textFrame } from './frame.js'
import type { NodeCounts, PresenceEntry } from './broker/broker.js'
import type { OutboundMessage } from '../schemas/envelope.js'
import { Observer } from './observer.js'

/** What `channels()` reports for each channel of this node. */
export interface ChannelInfo {
  name: string
  connections: number
  users: number
  seq: number
}

/** A message for one connection, wherever it came from: its channel defaults to the one the connection started in. */
export interface DirectMessage {
  channel?: string | undefined
  cmd: string
  param?: unknown
}

/**
 * This node's connections and channels, and delivery to them: the local half of every operation (centrifuge's
 * `Hub`, socket.io's in-memory `Adapter`). It knows nothing of the broker or of other nodes; lib/cluster.ts calls the
 * same methods for work that starts here and for work another node sends.
 *
 * The node's message counts are the connections' own, summed when asked for (`counts`), so no message is counted
 * twice on its way out or in.
 */
export class Hub {
  /** The node's metrics and taps: told of every join, leave and delivery here. */
  readonly observer: Observer
  readonly #connections = new Map<string, Connection>()
  readonly #channels = new ChannelRegistry()
  /** What the connections that have closed had counted. */
  #closedIn = 0
  #closedOut = 0
  #closedBytesIn = 0
  #closedBytesOut = 0

  constructor (observer = new Observer()) {
    this.observer = observer
  }

  get size (): number {
    return this.#connections.size
  }

  get (connectionId: string): Connection | undefined {
    return this.#connections.get(connectionId)
  }

  all (): IterableIterator<Connection> {
    return this.#connections.values()
  }

  add (conn: Connection): void {
    this.#connections.set(conn.id, conn)
  }

  /** Forgets a closed connection (its channels are left through the cluster, which tells the broker). */
  remove (conn: Connection): void {
    if (!this.#connections.delete(conn.id)) return
    this.#closedIn += conn.messagesIn
    this.#closedOut += conn.messagesOut
    this.#closedBytesIn += conn.bytesIn
    this.#closedBytesOut += conn.bytesOut
  }

  channel (name: string): Channel | undefined {
    return this.#channels.get(name)
  }

  /** Adds a connection to a channel; null when it was a member already or has closed. */
  join (conn: Connection, channel: string): MembershipChange | null {
    // A connection that closed while a hook was still joining it somewhere must not be left behind in a channel.
    if (conn.state === ConnectionState.CLOSED) return null
    const change = this.#channels.join(conn, channel)
    if (change !== null) this.observer.joined(conn, channel)
    return change
  }

  /** Removes a connection from a channel; null when it was not a member. */
  leave (conn: Connection, channel: string): MembershipChange | null {
    const change = this.#channels.leave(conn, channel)
    if (change !== null) this.observer.left(conn, channel)
    return change
  }

  /**
   * Writes a channel message to this node's members: one encoding, the same bytes for each. Returns how many it
   * was written to. `numbering` `node` gives it this node's next `seq` for the channel (channels without history);
   * `given` sends it as it is, with the seq the cluster gave it, or none (channels with history).
   */
  deliver (name: string, message: OutboundMessage, except: string | undefined, numbering: 'node' | 'given' = 'node'): number {
    const channel = this.#channels.get(name)
    if (channel === undefined) return 0
    // `seq` numbers the messages every member receives, so a gap in it always means a lost message; a message
    // with `except` skips someone and carries none.
    // Object.assign, not a spread: in Node 20 a spread's copies get a hidden class each after a few calls, which
    // made every broadcast allocate one and serialize about twice as slowly.
    let numbered = message
    if (numbering === 'given') {
      if (message.seq !== undefined) channel.seq = message.seq
    } else if (except === undefined) {
      numbered = Object.assign({}, message, { seq: ++channel.seq })
    }
    const frame = textFrame(encode(numbered))
    let delivered = 0
    for (const member of channel.members) {
      if (member.id !== except && member.sendFrame(frame, name, numbered.seq)) delivered++
    }
    this.observer.delivered(name, message.cmd, frame.length - headerLength(frame), delivered, message.param)
    return delivered
  }

  /** Sends one message to one of this node's connections; false when it can't take it. */
  send (conn: Connection, message: DirectMessage): boolean {
    return conn.send(envelope(message.channel ?? conn.home, message.cmd, message.param))
  }

  /** Closes one of this node's connections; false when it is not here. */
  close (connectionId: string, code: number, reason: string): boolean {
    const conn = this.#connections.get(connectionId)
    conn?.close(code, reason)
    return conn !== undefined
  }

  /** Closes this node's connections of `user`; returns how many. */
  closeUser (user: string, code: number, reason: string): number {
    let closed = 0
    for (const conn of this.#connections.values()) {
      if (conn.profileId !== user || conn.state >= ConnectionState.CLOSING) continue
      conn.close(code, reason)
      closed++
    }
    return closed
  }

  /** The bytes of every message in and out since the node started (the metrics read them when collected). */
  bytes (): { in: number, out: number } {
    let bytesIn = this.#closedBytesIn
    let bytesOut = this.#closedBytesOut
    for (const conn of this.#connections.values()) {
      bytesIn += conn.bytesIn
      bytesOut += conn.bytesOut
    }
    return { in: bytesIn, out: bytesOut }
  }

  /** This node's counts: its open connections and channels, and the messages in and out since it started. */
  counts (): NodeCounts {
    let messagesIn = this.#closedIn
    let messagesOut = this.#closedOut
    for (const conn of this.#connections.values()) {
      messagesIn += conn.messagesIn
      messagesOut += conn.messagesOut
    }
    return { connections: this.#connections.size, channels: this.#channels.size, messagesIn, messagesOut }
  }

  channels (): ChannelInfo[] {
    return [...this.#channels.all()].map((channel) => ({
      name: channel.name, connections: channel.members.size, users: channel.users.size, seq: channel.seq
    }))
  }

  /** This node's connections, all or those in one channel. */
  connections (channel?: string): ConnectionInfo[] {
    const conns = channel === undefined ? this.#connections.values() : (this.#channels.get(channel)?.members ?? [])
    return [...conns].map((conn) => conn.info())
  }

  /** The users present in a channel on this node, with how many connections each has here. */
  presence (channel: string): PresenceEntry[] {
    return [...this.#channels.get(channel)?.users ?? []].map(([user, connections]) => ({ user, connections }))
  }

  /** Every `[channel, user, connections]` on this node (the broker's view of this node's presence). */
  * presenceEntries (): Iterable<[string, string, number]> {
    for (const channel of this.#channels.all()) {
      for (const [user, connections] of channel.users) yield [channel.name, user, connections]
    }
  }
}
