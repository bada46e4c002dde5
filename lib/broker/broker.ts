import type { OutboundMessage } from '../../schemas/envelope.js'

/** A user whose presence in a channel changed with their node (`node-presence`). */
export interface Departure {
  channel: string
  user: string
}

/**
 * What one node tells the others. Every message carries the id of the node it came from, so a node never
 * delivers its own messages twice (its local members already got them without a broker round trip).
 */
export type BrokerMessage =
  /** On a channel with history, `message.seq` is its place in the channel's stream, which `epoch` names. */
  | { type: 'channel', origin: string, channel: string, message: OutboundMessage, except?: string, epoch?: string }
  | { type: 'connection', origin: string, connectionId: string, message: Omit<OutboundMessage, 'channel'> & { channel?: string } }
  | { type: 'join', origin: string, connectionId: string, channel: string }
  | { type: 'leave', origin: string, connectionId: string, channel: string }
  | { type: 'disconnect', origin: string, connectionId: string, code: number, reason: string }
  | { type: 'disconnect-user', origin: string, user: string, code: number, reason: string }
  /**
   * `node` stopped reporting and its users `left` (or it was back after all, and its users `joined` again): each
   * node tells its members in those channels. Its origin is `node`, whichever node found out.
   */
  | { type: 'node-presence', origin: string, node: string, joined: Departure[], left: Departure[] }

/** A channel message for every node: what `append` numbers, keeps and sends. */
export type ChannelBroadcast = Extract<BrokerMessage, { type: 'channel' }>

/** One user present in a channel, with how many connections they have in it (on every node). */
export interface PresenceEntry {
  user: string
  connections: number
}

/** What a presence change did cluster-wide: the user's first connection anywhere, their last, or neither. */
export type PresenceChange = 'joined' | 'left' | null

/** What a presence change did, and how many users the channel has on every node after it (for the announcement cap). */
export interface PresenceUpdate {
  change: PresenceChange
  users: number
}

/** How a channel keeps its history (the `history` option, resolved): every field set. */
export interface HistorySettings {
  /** Messages kept. */
  size: number
  /** ms after the last message before the messages are forgotten (the position is kept). */
  ttl: number
  /** ms after the last message before the position (epoch and seq) is forgotten: a new epoch begins then. */
  metaTtl: number
  /** The most messages one recovery replays: a client further behind is told `too-many`. */
  maxRecover: number
}

/** Where a channel's stream stands: `seq` is the newest message's (0: none), in the stream that `epoch` names. */
export interface StreamPosition {
  epoch: string
  seq: number
}

/** Kept messages of a channel, with its position. */
export interface StreamPage extends StreamPosition {
  messages: OutboundMessage[]
}

/** A node's counts. */
export interface NodeCounts {
  connections: number
  channels: number
  messagesIn: number
  messagesOut: number
}

/** A node's counts as it last reported them (`at`: epoch ms). */
export interface NodeReport extends NodeCounts {
  node: string
  at: number
}

/** What the cluster layer (lib/cluster.ts) gives its broker at start: its id, where other nodes' messages go, and its own state. */
export interface BrokerHost {
  readonly nodeId: string
  /** Hands a message from another node to this node's connections. */
  deliver: (message: BrokerMessage) => void
  /** For trouble the broker meets later (the app's logger, as a child). */
  readonly log: BrokerLogger
  /** This node's counts now. */
  counts: () => NodeCounts
  /** Every `[channel, user, connections]` of this node: what a broker writes again after its store lost it. */
  presence: () => Iterable<[channel: string, user: string, connections: number]>
  /**
   * The broker is receiving again after an outage (its subscriptions renewed): messages may have been lost
   * meanwhile, and channels with history are checked against their streams. A broker that can lose messages
   * should call it.
   */
  resumed?: () => void
}

/**
 * The scale-out engine behind `app.socket`. Implementations: `MemoryBroker` (one process, the default) and
 * `RedisBroker` (several nodes). Every method may be synchronous or return a promise.
 *
 * The last three methods are the cluster view. A broker without them still carries messages; `presence(channel)`
 * and `clusterStatus()` then report this node only, and presence events are decided by this node's members.
 *
 * @example
 * const broker: Broker = new MemoryBroker()
 * await broker.start({ nodeId: 'node-a', deliver: (msg) => console.log(msg.type), log: console, counts, presence })
 */
export interface Broker {
  /**
   * Starts delivering other nodes' messages to `host.deliver`. Called once, at register time. An outage of what the
   * broker connects through (Redis down) is no failure: the broker starts degraded (`health`), says so in
   * `host.log`, and joins the other nodes when it can.
   */
  start (host: BrokerHost): Promise<void> | void
  /** Sends a message to the other nodes. */
  publish (message: BrokerMessage): Promise<void> | void
  /** This node has its first local member in `channel`: start receiving the channel's messages. */
  subscribe (channel: string): Promise<void> | void
  /** This node's last local member left `channel`. */
  unsubscribe (channel: string): Promise<void> | void
  /**
   * Stops delivering and releases what the broker created. Called from the app's `onClose`, or when the start gave
   * up waiting for the broker (`waitForBroker`).
   */
  close (): Promise<void> | void
  /** `degraded` while the broker cannot reach the other nodes (local delivery goes on). Absent means always `ok`. */
  readonly health?: BrokerHealth
  /**
   * Resolves once the broker reaches the other nodes: its subscriptions are in place and this node is known to
   * them. What the plugin's `waitForBroker` waits on when the broker started degraded; rejects once the broker is
   * closed. A broker whose `health` may be `degraded` at start should have it: without it, `waitForBroker` has
   * nothing to wait on, and refuses a degraded start when its time is up.
   *
   * @example
   * await broker.whenReady()   // cross-node delivery and presence work from here
   */
  whenReady? (): Promise<void>
  /**
   * Records that `user` has `connections` connections in `channel` on this node (0: none), and says whether that
   * made them present in the channel for the first time on any node (`joined`) or absent from every node (`left`),
   * with the channel's users on every node (`{ change, users }`). A broker that answers with the change alone (the
   * form before `users`) still works: the announcement cap then counts this node's users.
   */
  setPresence? (channel: string, user: string, connections: number): Promise<PresenceUpdate | PresenceChange> | PresenceUpdate | PresenceChange
  /** The users in `channel` on every live node. */
  presence? (channel: string): Promise<PresenceEntry[]> | PresenceEntry[]
  /** Every live node's last report (this node's own counts are current). */
  nodes? (): Promise<NodeReport[]> | NodeReport[]
  /**
   * Channel history (the `history` option needs a broker that has these three). `append` gives the message the
   * channel's next seq, keeps it in the channel's stream and sends it to the other nodes with that seq and the
   * stream's epoch, in one step, so that every node sees a channel's messages in one order whoever published them.
   * It answers the position it gave. A rejection whose error has `notSent: true` kept nothing (the broker could
   * not reach its store); any other may have kept the message (a timeout), which then reaches every node,
   * this one included, from the stream. `position` is where the channel's stream stands (a stream that does not
   * exist yet begins there, at seq 0, with a new epoch); `read` pages through what is kept.
   */
  append? (message: ChannelBroadcast, settings: HistorySettings): StreamPosition | Promise<StreamPosition>
  position? (channel: string, settings: HistorySettings): StreamPosition | Promise<StreamPosition>
  read? (channel: string, since: StreamPosition | undefined, limit: number, settings: HistorySettings): StreamPage | Promise<StreamPage>
  /**
   * The record of client commands already handled (the `dedupe` option, docs/server.md), shared by every node: a
   * broker that has these four keeps it, one without leaves each node a record of its own (in process).
   * `claimCommand` records `(scope, id)` as pending for `lease` ms unless a record is there already: null when it
   * made the record (the caller runs the command), the record otherwise. `commandRecord` reads the record.
   * `finishCommand` replaces it with the command's answer, kept `window` ms. `releaseCommand` deletes a pending
   * record (the handler threw: a retry runs it again) and leaves a finished one alone.
   */
  claimCommand? (scope: string, id: string, lease: number): CommandRecord | null | Promise<CommandRecord | null>
  commandRecord? (scope: string, id: string): CommandRecord | null | Promise<CommandRecord | null>
  finishCommand? (scope: string, id: string, answer: string, window: number): Promise<void> | void
  releaseCommand? (scope: string, id: string): Promise<void> | void
}

/**
 * What the record of handled client commands holds for one `(scope, id)`: a first run still under way (on some
 * node), or its answer, as the JSON text `{"cmd":"reply"|"error","param":…}`.
 */
export type CommandRecord = { state: 'pending' } | { state: 'done', answer: string }

/** `ok`, or `degraded` while other nodes can't be reached. */
export type BrokerHealth = 'ok' | 'degraded'

/** The logger a broker gets (the app's, as a child). */
export interface BrokerLogger {
  error (obj: object, msg: string): void
  warn (obj: object, msg: string): void
  /** Back to normal (the Redis broker connected again); optional, for loggers of the Broker interface before it. */
  info? (obj: object, msg: string): void
}

/** The methods every Broker has. */
export const BROKER_METHODS = ['start', 'publish', 'subscribe', 'unsubscribe', 'close'] as const

/** Tells whether a value has the shape of a Broker (used to validate the `broker` option). */
export function isBroker (value: unknown): value is Broker {
  if (typeof value !== 'object' || value === null) return false
  const candidate = value as Record<string, unknown>
  return BROKER_METHODS.every((name) => typeof candidate[name] === 'function')
}
