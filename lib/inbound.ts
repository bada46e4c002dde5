import type { RawData } from 'ws'
import { CloseCode, errors, firstError } from './errors.js'
import { isThenable, sendError } from './answers.js'
import type { Dedupe } from './dedupe.js'
import { assertChannel, decode, envelope, type DecodeError } from './codec.js'
import { MessageContext, type CommandRegistry } from './commands.js'
import type { BinaryHandler, Connection } from './connection.js'
import type { CatchUp, Cluster } from './cluster.js'
import { replayFrames, subscribeSince } from './recovery.js'
import type { StreamPosition } from './broker/broker.js'
import type { Expiry } from './expiry.js'
import type { ResolvedOptions } from './options.js'
import { Compile } from 'typebox/compile'
import { HistoryQuery, type HistoryQueryData, type InboundMessage } from '../schemas/envelope.js'

const historyQuery = Compile(HistoryQuery)

/** What a command returns that wrote its answer itself (a subscribe to a channel with history). */
const ANSWERED = Symbol('answered')

/** No channel's held frames to drop. */
const NOTHING: ReadonlyMap<string, number> = new Map()

/**
 * Everything that happens to a frame a client sent: decode, the reserved commands, the membership check, the
 * application's command, and the `reply` or `error` that answers it. Nothing here throws to the socket: every
 * failure becomes a coded `error` message (or a close code), and the connection stays open where it can.
 * Membership goes to the cluster layer and `auth.refresh` to the expiry, both below this one; answers go straight
 * to the connection.
 */
export class Inbound {
  readonly #options: Readonly<ResolvedOptions>
  readonly #commands: CommandRegistry
  readonly #cluster: Pick<Cluster, 'join' | 'leave' | 'read' | 'catchUp' | 'keepsHistory'>
  readonly #expiry: Pick<Expiry, 'refresh'>
  readonly #dedupe: Dedupe | null

  constructor (options: Readonly<ResolvedOptions>, commands: CommandRegistry, cluster: Pick<Cluster, 'join' | 'leave' | 'read' | 'catchUp' | 'keepsHistory'>, expiry: Pick<Expiry, 'refresh'>, dedupe: Dedupe | null = null) {
    this.#options = options
    this.#commands = commands
    this.#cluster = cluster
    this.#expiry = expiry
    this.#dedupe = dedupe
  }

  /** Handles one frame of an open connection. */
  handle (conn: Connection, data: RawData, isBinary: boolean): void {
    const bytes = data as Buffer
    conn.messagesIn++
    conn.bytesIn += bytes.length
    const now = Date.now()
    if (!conn.rate.take(now)) {
      if (conn.refused.hit(now)) return conn.close(CloseCode.POLICY_VIOLATION, 'message rate limit exceeded')
      sendError(conn, conn.home, undefined, new errors.FST_SOCKET_RATE_LIMITED())
      return
    }
    if (isBinary) {
      if (conn.onBinary === undefined) return conn.close(CloseCode.UNSUPPORTED_DATA, 'binary frames are not accepted')
      void this.#binary(conn, conn.onBinary, bytes)
      return
    }
    let message: InboundMessage
    try {
      message = decode(bytes.toString('utf8'), this.#options.maxDepth)
    } catch (err) {
      if (conn.badFrames.hit(now)) return conn.close(CloseCode.POLICY_VIOLATION, 'too many malformed messages')
      sendError(conn, conn.home, (err as DecodeError).ref, err)
      return
    }
    if (conn.observer.tapping) conn.observer.received(conn, message.channel, message.cmd, bytes.length, message.param)
    // `pong` is the whole answer to a ping: going through #settle would add a second one (a `reply` with the ref).
    if (message.cmd === 'ping') {
      conn.send(envelope(message.channel, 'pong', null, message.ref))
      return
    }
    // An application command with an id runs at most once within the window; the record answers its repeats.
    // Reserved commands are no application's, and are handled every time.
    if (message.id !== undefined && this.#dedupe !== null && this.#commands.dedupes(message.cmd)) {
      this.#dedupe.handle(conn, message as InboundMessage & { id: string }, () => this.#dispatch(conn, message))
      return
    }
    this.#answer(conn, message)
  }

  /**
   * Runs one message's handler: its value becomes the `reply` (when `ref` was set), its error an `error` message.
   * A handler that answers synchronously is replied to at once; a promise is waited for.
   */
  #answer (conn: Connection, message: InboundMessage): void {
    let result: unknown
    try {
      result = this.#dispatch(conn, message)
    } catch (err) {
      sendError(conn, message.channel, message.ref, err)
      return
    }
    if (isThenable(result)) {
      result.then((value) => this.#settle(conn, message, value), (err: unknown) => sendError(conn, message.channel, message.ref, err))
    } else {
      this.#settle(conn, message, result)
    }
  }

  #settle (conn: Connection, message: InboundMessage, result: unknown): void {
    if (message.ref !== undefined && result !== ANSWERED) conn.send(envelope(message.channel, 'reply', result, message.ref))
  }

  /** Hands a binary frame to the route's `onBinary`; what it throws becomes an `error` message. */
  async #binary (conn: Connection, onBinary: BinaryHandler, bytes: Buffer): Promise<void> {
    try {
      await onBinary(bytes, conn.id)
    } catch (err) {
      sendError(conn, conn.home, undefined, err)
    }
  }

  /** The answer to one message: a value, or a promise of one; throws the coded error for a refusal. */
  #dispatch (conn: Connection, message: InboundMessage): unknown {
    const { channel, cmd, param, ref, id } = message
    if (cmd === 'subscribe' || cmd === 'unsubscribe' || cmd === 'auth.refresh') return this.#reserved(conn, message)
    if (!conn.channels.has(channel)) throw new errors.FST_SOCKET_NOT_SUBSCRIBED(channel)
    if (cmd === 'history') return this.#history(channel, param)
    return this.#commands.run(cmd, param, new MessageContext(conn, channel, ref, id))
  }

  /** The reserved commands a client sends: membership and the token refresh. */
  async #reserved (conn: Connection, message: InboundMessage): Promise<unknown> {
    const { channel, cmd, param } = message
    // Membership changes have a rate of their own: each may be presence traffic for every member of the channel.
    // A client that keeps at it past its limit is closed like one that floods messages.
    const now = Date.now()
    if (cmd !== 'auth.refresh' && !conn.subscribes.take(now)) {
      if (conn.subscribeRefused.hit(now)) conn.close(CloseCode.POLICY_VIOLATION, 'subscribe rate limit exceeded')
      throw new errors.FST_SOCKET_LIMIT_EXCEEDED(`at most ${this.#options.subscribeRate.perSecond} subscribes and unsubscribes a second`)
    }
    switch (cmd) {
      case 'subscribe': {
        assertChannel(channel)
        const since = subscribeSince(param)
        // A member already: where the channel's stream stands is all there is to say (live messages flow).
        if (!this.#roomFor(conn, channel)) return await this.#withPosition(channel)
        // Run on every subscribe, recoveries included: a user whose access was revoked replays nothing.
        if (await this.#options.authorizeChannel(conn.profile, channel) !== true) throw new errors.FST_SOCKET_FORBIDDEN(`subscribing to "${channel}"`)
        // Checked again: other subscribes of this connection may have taken the last slots while this one was
        // being authorized, and the limit must hold however many are pipelined.
        if (!this.#roomFor(conn, channel)) return await this.#withPosition(channel)
        if (this.#cluster.keepsHistory(channel)) return await this.#joinWithHistory(conn, message, since)
        await this.#cluster.join(conn, channel)
        return { channel }
      }
      case 'unsubscribe':
        assertChannel(channel)
        await this.#cluster.leave(conn, channel)
        return { channel }
      default:
        return await this.#expiry.refresh(conn, param)
    }
  }

  /**
   * Joins a channel with history and answers with its position, and the recovery when the client gave `since`. The
   * connection's frames are held from before the join until the answer is written, so the answer comes first, then
   * the replay (the messages after the client's position), then the channel's live messages after the position,
   * each once, whatever was published meanwhile. The answer is written here, not by `#settle`.
   */
  async #joinWithHistory (conn: Connection, message: InboundMessage, since: StreamPosition | undefined): Promise<typeof ANSWERED> {
    const { channel, ref } = message
    conn.hold()
    let catchUp: CatchUp | null
    try {
      await this.#cluster.join(conn, channel)
      catchUp = await this.#cluster.catchUp(channel, since)
    } catch (err) {
      conn.release([], NOTHING)
      throw err
    }
    const { epoch, seq } = catchUp?.position ?? { epoch: undefined, seq: undefined }
    const answer = catchUp === null ? { channel } : { channel, epoch, seq, ...catchUp.recovery }
    const head = envelope(channel, 'reply', answer, ref)
    const frames = replayFrames(head, catchUp?.replay ?? [])
    // Without a ref nobody waits for an answer: the replay alone.
    conn.release(ref === undefined ? frames.slice(1) : frames, catchUp === null ? NOTHING : new Map([[channel, catchUp.position.seq]]))
    return ANSWERED
  }

  /** `{ channel }`, and the channel's `epoch` and `seq` when it keeps history. */
  async #withPosition (channel: string): Promise<{ channel: string, epoch?: string, seq?: number }> {
    const position = (await this.#cluster.catchUp(channel, undefined))?.position
    return position === undefined ? { channel } : { channel, epoch: position.epoch, seq: position.seq }
  }

  /** The `history` command: a page of the channel's kept messages, with its position. */
  async #history (channel: string, param: unknown): Promise<unknown> {
    if (!historyQuery.Check(param)) throw new errors.FST_SOCKET_BAD_REQUEST(`history: ${firstError(historyQuery, param, 'param', 'is invalid')}`)
    const query = param as HistoryQueryData
    const page = await this.#cluster.read(channel, query?.since, query?.limit ?? 100)
    if (page === null) throw new errors.FST_SOCKET_BAD_REQUEST(`"${channel}" keeps no history`)
    return page
  }

  /** False when the connection is in the channel already; FST_SOCKET_LIMIT_EXCEEDED when it has no room for one more. */
  #roomFor (conn: Connection, channel: string): boolean {
    if (conn.channels.has(channel)) return false
    if (conn.channels.size >= this.#options.maxChannelsPerConnection) {
      throw new errors.FST_SOCKET_LIMIT_EXCEEDED(`at most ${this.#options.maxChannelsPerConnection} channels per connection`)
    }
    return true
  }
}
