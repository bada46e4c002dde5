import type { Connection } from './connection.js'
import { Tally } from './tally.js'

/** One channel on this node: its local members, its message counter, and how many connections each user has in it. */
export class Channel {
  readonly name: string
  readonly members = new Set<Connection>()
  /** Per-user connection counts, so presence says "joined" for a user's first connection and "left" for the last. */
  readonly users = new Tally()
  /** The `seq` of the last message sent to this channel from this node. */
  seq = 0
  /** This node's broker subscription to the channel; joiners wait for it. */
  subscribed: Promise<void> = Promise.resolve()

  constructor (name: string) {
    this.name = name
  }
}

/** What a join or leave changed, so the caller knows whom to tell. */
export interface MembershipChange {
  channel: Channel
  /** The channel had no local member before this join, or has none after this leave (broker subscription). */
  firstOrLast: boolean
  /** The connection's user had no other connection in the channel (presence). */
  userFirstOrLast: boolean
}

/**
 * The channels of this node and their members. A channel exists while it has a local member and is removed with
 * its last member, so churn leaves nothing behind.
 */
export class ChannelRegistry {
  readonly #channels = new Map<string, Channel>()

  get (name: string): Channel | undefined {
    return this.#channels.get(name)
  }

  get size (): number {
    return this.#channels.size
  }

  all (): IterableIterator<Channel> {
    return this.#channels.values()
  }

  /** Adds the connection to the channel; returns null when it was a member already. */
  join (conn: Connection, name: string): MembershipChange | null {
    let channel = this.#channels.get(name)
    const created = channel === undefined
    if (channel === undefined) {
      channel = new Channel(name)
      this.#channels.set(name, channel)
    }
    if (channel.members.has(conn)) return null
    channel.members.add(conn)
    conn.channels.add(name)
    const user = conn.profileId
    const userFirst = user !== null && channel.users.increment(user) === 1
    return { channel, firstOrLast: created, userFirstOrLast: userFirst }
  }

  /** Removes the connection from the channel; returns null when it was not a member. */
  leave (conn: Connection, name: string): MembershipChange | null {
    const channel = this.#channels.get(name)
    if (channel === undefined || !channel.members.delete(conn)) return null
    conn.channels.delete(name)
    const user = conn.profileId
    const userLast = user !== null && channel.users.decrement(user) === 0
    const empty = channel.members.size === 0
    if (empty) this.#channels.delete(name)
    return { channel, firstOrLast: empty, userFirstOrLast: userLast }
  }
}
