import type { PresenceMode, ResolvedPresence } from './options.js'

/** Who joined or left, in a `presence-diff` (and in `user-joined` / `user-left`): their connection, or their node. */
export interface PresenceMember {
  user: string
  /** The connection that made the change (absent when a node's users come or go with it). */
  connectionId?: string
  /** The node whose death (or return) made the change. */
  node?: string
}

/** Where announcements go: a channel message to its members on every node, or on this node only. */
export interface PresenceOutlet {
  /** A channel message to every member on every node, skipping `except` (the connection it is about). */
  broadcast (channel: string, cmd: PresenceCommand, param: object, except?: string): void
  /** A channel message to this node's members only. */
  deliver (channel: string, cmd: PresenceCommand, param: object): void
  /**
   * The users in the channel on every node now, or null without a cluster view (or while the broker can't say).
   * Asked once a round per channel, so changes made on other nodes since are seen (see `#announce`).
   */
  present (channel: string): Promise<ReadonlySet<string> | null> | null
  /** Something to log: an `announce` function that threw or answered nonsense. */
  warn (fields: Record<string, unknown>, message: string): void
}

export type PresenceCommand = 'user-joined' | 'user-left' | 'presence-diff'

/** One channel's changes since the last flush. A user is in at most one of the two maps. */
interface Pending {
  mode: 'events' | 'diff'
  joins: Map<string, PresenceMember>
  leaves: Map<string, PresenceMember>
  /** The channel's users, as the last change counted them (every node's, where the broker knows). */
  users: number
}

const MODES: ReadonlySet<string> = new Set(['events', 'diff', 'none'])

/**
 * Presence announcements, so that they cost per interval, not per change times members. Changes are gathered per
 * channel and sent together every `interval` ms by one timer for every channel; a join and a leave of the same
 * user inside one interval cancel out; a channel of more than `maxUsers` users hears nothing; and a channel whose
 * mode is `diff` gets one `presence-diff` per interval instead of one message per user.
 *
 * @example
 * const presence = new PresenceAnnouncer(options.presence, outlet)
 * presence.change('chat-lobby', { user: 'ann', connectionId }, 'joined', 12)
 */
export class PresenceAnnouncer {
  readonly #options: Readonly<ResolvedPresence>
  readonly #outlet: PresenceOutlet
  readonly #pending = new Map<string, Pending>()
  #timer: NodeJS.Timeout | null = null
  /** The round being sent: the next one waits for it, so rounds reach the members in order. */
  #round: Promise<void> = Promise.resolve()
  /** When `announce` was last complained about: once a minute at most, whatever a client makes it see. */
  #warned = -Infinity

  constructor (options: Readonly<ResolvedPresence>, outlet: PresenceOutlet) {
    this.#options = options
    this.#outlet = outlet
  }

  /**
   * A user became present in a channel for the first time (`joined`) or absent from it everywhere (`left`);
   * `users` is how many users the channel has now.
   */
  change (channel: string, member: PresenceMember & { connectionId: string }, change: 'joined' | 'left', users: number): void {
    let pending = this.#pending.get(channel)
    if (pending === undefined) {
      const mode = this.#mode(channel)
      if (mode === 'none') return
      pending = { mode, joins: new Map(), leaves: new Map(), users }
      this.#pending.set(channel, pending)
    }
    pending.users = users
    const [add, cancel] = change === 'joined' ? [pending.joins, pending.leaves] : [pending.leaves, pending.joins]
    if (!cancel.delete(member.user)) add.set(member.user, member)
    if (this.#options.interval === 0) return this.#flushNow()
    this.#timer ??= setTimeout(this.#flushNow, this.#options.interval)
  }

  /**
   * A node's users came or went with it (`node-presence`): every node tells its own members at once, each user
   * once, under the same mode and cap as any other change. `users` is this node's count for the channel, besides
   * those who came or went.
   */
  nodeChange (channel: string, joins: PresenceMember[], leaves: PresenceMember[], users: number): void {
    const mode = this.#mode(channel)
    // Counted with the users who came or went: a dead node's 3,000 leaving a channel with 500 left is a change in a
    // channel of 3,500, over the cap.
    if (mode === 'none' || this.#overCap(users + joins.length + leaves.length)) return
    if (mode === 'diff') return this.#outlet.deliver(channel, 'presence-diff', { joins, leaves })
    for (const member of joins) this.#outlet.deliver(channel, 'user-joined', member)
    for (const member of leaves) this.#outlet.deliver(channel, 'user-left', member)
  }

  /** Sends every channel's gathered changes; resolves once they are sent (after any round before them). */
  flush (): Promise<void> {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
    // Taken out first: announcing may run code (a broker) that makes new changes, which wait for the next round.
    // A channel over the cap at its last change is not asked about (a read of its thousands of users): it is dropped.
    const pending = [...this.#pending].filter(([, changes]) => !this.#overCap(changes.users))
    this.#pending.clear()
    if (pending.length === 0) return this.#round
    this.#round = this.#round.then(async () => {
      const present = await Promise.all(pending.map(async ([channel]) => await this.#present(channel)))
      pending.forEach(([channel, changes], i) => this.#announce(channel, changes, present[i] ?? null))
    })
    return this.#round
  }

  /** Drops what is gathered and the timer (shutdown: the members are being closed anyway). */
  stop (): void {
    if (this.#timer !== null) clearTimeout(this.#timer)
    this.#timer = null
    this.#pending.clear()
  }

  readonly #flushNow = (): void => { void this.flush() }

  /** The channel's users on every node, or null (then this node's view of the round stands); never rejects. */
  async #present (channel: string): Promise<ReadonlySet<string> | null> {
    try {
      return await this.#outlet.present(channel)
    } catch {
      return null
    }
  }

  /**
   * Sends one channel's round. With the users every node has now (`present`), a change that another node's has
   * undone since is dropped: each node gathers on its own timer, so a user's leave on one node and their return on
   * another a moment later could otherwise reach the members in the wrong order and leave them "gone".
   */
  #announce (channel: string, { mode, joins, leaves, users }: Pending, present: ReadonlySet<string> | null): void {
    if (present !== null) {
      for (const user of joins.keys()) if (!present.has(user)) joins.delete(user)
      for (const user of leaves.keys()) if (present.has(user)) leaves.delete(user)
    }
    if (joins.size === 0 && leaves.size === 0) return
    if (this.#overCap(present?.size ?? users)) return
    if (mode === 'diff') {
      this.#outlet.broadcast(channel, 'presence-diff', { joins: [...joins.values()], leaves: [...leaves.values()] })
      return
    }
    // The member a message is about is not told about itself.
    for (const member of joins.values()) this.#outlet.broadcast(channel, 'user-joined', member, member.connectionId)
    for (const member of leaves.values()) this.#outlet.broadcast(channel, 'user-left', member, member.connectionId)
  }

  #overCap (users: number): boolean {
    return this.#options.maxUsers > 0 && users > this.#options.maxUsers
  }

  /** The channel's mode; an `announce` function that throws or answers something else means `none`, logged. */
  #mode (channel: string): PresenceMode {
    let mode: unknown
    try {
      mode = this.#options.announce(channel)
    } catch (err) {
      this.#complain({ err, channel }, 'presence.announce threw: nothing is announced')
      return 'none'
    }
    if (typeof mode === 'string' && MODES.has(mode)) return mode as PresenceMode
    this.#complain({ channel, mode: String(mode) }, 'presence.announce must answer "events", "diff" or "none": nothing is announced')
    return 'none'
  }

  /** A warning about `announce`, at most once a minute: it runs on every change a client can cause. */
  #complain (fields: Record<string, unknown>, message: string): void {
    const now = Date.now()
    if (now - this.#warned < 60_000) return
    this.#warned = now
    this.#outlet.warn(fields, message)
  }
}
