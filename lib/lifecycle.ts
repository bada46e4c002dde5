import { randomUUID } from 'node:crypto'
import type { Duplex } from 'node:stream'
import type { FastifyBaseLogger } from 'fastify'
import type { RawData, WebSocket } from 'ws'
import { CloseCode, errors, withRetryAfter } from './errors.js'
import { encodeConnected, envelope, type ConnectedParam } from './codec.js'
import { Connection, ConnectionState, type UpgradePlan } from './connection.js'
import { Heartbeat } from './heartbeat.js'
import { ConnectionCounter, RateByKey, addressBlock } from './limits.js'
import { kConnection, kLifecycle } from './symbols.js'
import type { Hub } from './hub.js'
import type { Cluster } from './cluster.js'
import type { Expiry } from './expiry.js'
import type { Dedupe } from './dedupe.js'
import type { Inbound } from './inbound.js'
import type { ResolvedOptions } from './options.js'
import { replayFrames, type Recovery } from './recovery.js'
import type { StreamPosition } from './broker/broker.js'
import type { OutboundMessage } from '../schemas/envelope.js'

export type OpenHook = (conn: Connection) => void | Promise<void>
export type CloseHook = (conn: Connection, code: number) => void | Promise<void>

/** Frames that may wait while a connection is being registered; more than this is abuse (1008). */
const MAX_PENDING_FRAMES = 256
/** …and the bytes they may hold, in frames of `maxPayload`. */
const MAX_PENDING_PAYLOADS = 4

/** `Retry-After` of a refusal for too many open connections: when one of them closes can't be known. */
const FULL_RETRY_AFTER = 5000

/** A socket this node accepted: it knows its connection and the lifecycle its events go to. */
type TaggedSocket = WebSocket & { [kConnection]?: Connection, [kLifecycle]?: Lifecycle }

// The socket listeners, one of each for every socket (as ws's own `socketOnClose`, `receiverOnPong`…): `this` is
// the socket, which knows its connection and lifecycle. They are registered only once both are set.

function socketOnMessage (this: TaggedSocket, data: RawData, isBinary: boolean): void {
  (this[kLifecycle] as Lifecycle).message(this[kConnection] as Connection, data, isBinary)
}

function socketOnPong (this: TaggedSocket): void {
  (this[kConnection] as Connection).awaitingPong = false
}

function socketOnPing (this: TaggedSocket): void {
  (this[kConnection] as Connection).pinged()
}

function socketOnClose (this: TaggedSocket, code: number): void {
  (this[kLifecycle] as Lifecycle).closed(this[kConnection] as Connection, code)
}

/** Replaces @fastify/websocket's default error listener (log, terminate) without keeping the request alive. */
function socketOnError (this: TaggedSocket, err: Error): void {
  // A socket refused in `accept` has no connection. ws's own WS_ERR_* errors are the peer breaking the protocol
  // (too big, bad UTF-8, too many fragments): ws has closed it with the matching code, and one line per such
  // client at error level would let any client write the log full.
  const conn = this[kConnection]
  const code = (err as { code?: unknown }).code
  if (typeof code === 'string' && code.startsWith('WS_ERR_')) {
    const fields = { code, message: err.message }
    if (conn !== undefined) conn.debug(fields, 'socket closed: the client broke the protocol')
    else (this[kLifecycle] as Lifecycle).log.debug(fields, 'socket closed: the client broke the protocol')
  } else {
    (conn?.log ?? (this[kLifecycle] as Lifecycle).log).error({ err }, 'socket error')
  }
  this.terminate()
}

/** What a lifecycle works with: the layers below it, and the options it reads. */
export interface LifecycleParts {
  hub: Hub
  cluster: Cluster
  inbound: Inbound
  expiry: Expiry
  options: Readonly<ResolvedOptions>
  log: FastifyBaseLogger
  /**
   * forge-socket registered @fastify/websocket itself (with its default error handler), so the upgraded socket's
   * error listener may be replaced by one that keeps no request alive.
   */
  ownWebsocket: boolean
  /** Message dedupe, when on: `connected` tells the client its window. */
  dedupe?: Dedupe | null
}

/**
 * A new connection's id. Node 20's randomUUID concatenates its text from 20 pieces, and V8 keeps that tree (about
 * 490 bytes, where the text itself takes 67) until something reads the string whole: reading one of its characters
 * makes V8 flatten it in place, for the connection's whole life.
 */
function connectionId (): string {
  const id = randomUUID()
  // The character is used, so no compiler can drop the read (a UUID never starts with NUL).
  return id.charCodeAt(0) === 0 ? '' : id
}

/**
 * A connection's life on this node, from the admission check before the upgrade to its last close hook: accept
 * (the socket's listeners, before any await), open (the home channel, `onOpen` hooks, the frames that waited),
 * close (its channels left, `onClose` hooks), and the node's drain and stop.
 */
export class Lifecycle {
  readonly log: FastifyBaseLogger
  readonly #hub: Hub
  readonly #cluster: Cluster
  readonly #inbound: Inbound
  readonly #expiry: Expiry
  readonly #options: Readonly<ResolvedOptions>
  readonly #ownWebsocket: boolean
  readonly #dedupe: Dedupe | null
  readonly #heartbeat: Heartbeat
  readonly #openHooks: OpenHook[] = []
  readonly #closeHooks: CloseHook[] = []
  readonly #perIp: ConnectionCounter
  readonly #perUser: ConnectionCounter
  readonly #ratePerIp: RateByKey
  readonly #ratePerUser: RateByKey
  /** Close paths still leaving channels and running onClose hooks; shutdown waits for them. */
  readonly #closePaths = new Set<Promise<void>>()
  #closing = false
  #drained: (() => void) | null = null

  constructor ({ hub, cluster, inbound, expiry, options, log, ownWebsocket, dedupe = null }: LifecycleParts) {
    this.#dedupe = dedupe
    this.#hub = hub
    this.#cluster = cluster
    this.#inbound = inbound
    this.#expiry = expiry
    this.#options = options
    this.log = log
    this.#ownWebsocket = ownWebsocket
    this.#perIp = new ConnectionCounter(options.connectionLimits.perIp)
    this.#perUser = new ConnectionCounter(options.connectionLimits.perUser)
    const { ratePerIp, ratePerUser, burst } = options.connectionLimits
    this.#ratePerIp = new RateByKey(ratePerIp, burst)
    this.#ratePerUser = new RateByKey(ratePerUser, burst)
    this.#heartbeat = new Heartbeat(() => hub.all(), options.heartbeat.interval, options.heartbeat.timeout)
  }

  /** Whether an upgrade's address decides something before it is accepted (a per-IP limit). */
  get addressNeeded (): boolean {
    return this.#options.connectionLimits.perIp > 0 || this.#options.connectionLimits.ratePerIp > 0
  }

  /** True once the drain has begun: new upgrades are refused (503). */
  get closing (): boolean {
    return this.#closing
  }

  onOpen (hook: OpenHook): void {
    this.#openHooks.push(hook)
  }

  onClose (hook: CloseHook): void {
    this.#closeHooks.push(hook)
  }

  start (): void {
    this.#heartbeat.start()
  }

  /**
   * The admission check, before the upgrade, for an IP address (before the token: this refusal needs none) or a
   * user (after it): its open connections (429, try again in a few seconds: when one closes is anyone's guess) and
   * its new connections a second (429, when the next is allowed). Every attempt counts against the rate, refused
   * or not, so a loop of refused attempts stays refused. An IP's rate counts its address block (IPv6 by /64).
   */
  admit (what: 'IP address' | 'user', key: string | null): void {
    const ip = what === 'IP address'
    const wait = (ip ? this.#ratePerIp : this.#ratePerUser).take(ip ? addressBlock(key ?? undefined) : key, Date.now())
    if (wait > 0) throw withRetryAfter(new errors.FST_SOCKET_CONNECTION_RATE_LIMITED(what), wait)
    if (!(ip ? this.#perIp : this.#perUser).allows(key)) throw withRetryAfter(new errors.FST_SOCKET_TOO_MANY_CONNECTIONS(what), FULL_RETRY_AFTER)
  }

  /** An upgrade refused before it happened: counted by the status it was refused with. */
  refused (err: unknown): void {
    const status = (err as { statusCode?: unknown }).statusCode
    this.#hub.observer.handshake(typeof status === 'number' ? String(status) : '500')
  }

  /** Takes an upgraded socket: a Connection, listening before any await, told `connected`, then opened. */
  accept (socket: WebSocket, plan: UpgradePlan, stream: Duplex | null): void {
    const tagged = socket as TaggedSocket
    tagged[kLifecycle] = this
    if (this.#ownWebsocket) {
      socket.removeAllListeners('error')
      socket.on('error', socketOnError)
    }
    // An act handler that was still running when app.close() began: its upgrade completes, and is told to go.
    if (this.#closing) return socket.close(CloseCode.GOING_AWAY, 'server shutting down')
    // Checked before the upgrade too (429); here again for upgrades that raced each other past that check.
    const user = plan.profile?.id ?? null
    if (!this.#perIp.allows(plan.ip) || !this.#perUser.allows(user)) return socket.close(CloseCode.TRY_AGAIN_LATER, 'too many connections')
    this.#perIp.add(plan.ip)
    this.#perUser.add(user)
    const id = connectionId()
    const conn = new Connection({
      id,
      socket,
      stream,
      profile: plan.profile,
      metadata: plan.metadata,
      home: plan.channel,
      ip: plan.ip,
      peer: plan.peer,
      log: plan.logger,
      act: plan.act,
      onBinary: plan.onBinary,
      limits: this.#options,
      observer: this.#hub.observer
    })
    // Listeners go on before any await, so frames that arrive while the connection is registered wait in
    // `pending` instead of being lost.
    tagged[kConnection] = conn
    socket.on('message', socketOnMessage)
    socket.on('pong', socketOnPong)
    socket.on('ping', socketOnPing)
    socket.on('close', socketOnClose)
    this.#hub.add(conn)
    this.#hub.observer.handshake('accepted')
    this.#hub.observer.opened(conn)
    this.#expiry.arm(conn, plan.payload?.exp)
    // Through the upgrade's logger: the connection's own is made only when something logs through it.
    conn.debug({ channel: plan.channel }, 'connection open')
    // With history, `connected` goes once the connection is in its channels, with where each stands (and what its
    // recovery replays): every frame for it is held until then. Without, at once.
    if (this.#options.historyEnabled) conn.hold()
    else {
      const param = this.#connectedParam(conn)
      conn.send(envelope(plan.channel, 'connected', param), encodeConnected(plan.channel, param))
    }
    void this.#open(conn, plan.since ?? null)
  }

  /** A frame from a connection's socket: handled when it is open, kept in `pending` while it opens. */
  message (conn: Connection, data: RawData, isBinary: boolean): void {
    conn.awaitingPong = false
    if (conn.state === ConnectionState.OPEN) return this.#inbound.handle(conn, data, isBinary)
    // Once a close has started, frames still in flight are dropped: none may jump ahead of `pending` (after a
    // 1008 for too many frames) or run handlers for a connection the server is closing.
    if (conn.state !== ConnectionState.OPENING) return
    const pending = (conn.pending ??= { frames: [], bytes: 0 })
    pending.bytes += (data as Buffer).length
    if (pending.frames.length >= MAX_PENDING_FRAMES || pending.bytes > this.#options.maxPayload * MAX_PENDING_PAYLOADS) {
      return conn.close(CloseCode.POLICY_VIOLATION, 'too many frames before open')
    }
    pending.frames.push([data, isBinary])
  }

  /** The socket closed, whatever closed it: the connection is forgotten now, its channels and hooks follow. */
  closed (conn: Connection, code: number): void {
    const path = this.#release(conn, code)
    this.#closePaths.add(path)
    void path.finally(() => this.#closePaths.delete(path))
  }

  /**
   * Graceful shutdown (from the app's `preClose`): refuses new upgrades (503), closes every connection with 1001,
   * waits for them up to `shutdownTimeout`, then terminates the rest.
   */
  async drain (): Promise<void> {
    this.#closing = true
    this.#heartbeat.stop()
    if (this.#hub.size === 0) return
    const drained = new Promise<void>((resolve) => { this.#drained = resolve })
    for (const conn of this.#hub.all()) conn.close(CloseCode.GOING_AWAY, 'server shutting down')
    const deadline = setTimeout(() => {
      // One line for all of them: a shutdown with thousands of stragglers must not write thousands of warnings.
      this.log.warn({ connections: this.#hub.size }, 'connections still open at the shutdown deadline: terminating')
      for (const conn of this.#hub.all()) conn.terminate()
    }, this.#options.shutdownTimeout)
    await drained
    clearTimeout(deadline)
    await Promise.all(this.#closePaths)
  }

  /** Stops the timers and waits for the close paths still running (from the app's `onClose`). */
  async stop (): Promise<void> {
    this.#heartbeat.stop()
    this.#expiry.clear()
    await Promise.all(this.#closePaths)
  }

  async #open (conn: Connection, since: Readonly<Record<string, StreamPosition>> | null): Promise<void> {
    try {
      await this.#cluster.join(conn, conn.home)
      for (const hook of this.#openHooks) {
        // A connection that closed meanwhile has had its onClose hooks (or will): no onOpen may run after them.
        if (conn.state !== ConnectionState.OPENING) return
        await hook(conn)
      }
      if (this.#options.historyEnabled && conn.state === ConnectionState.OPENING) await this.#connected(conn, since)
    } catch (err) {
      conn.log.error({ err }, 'connection setup failed')
      conn.close(CloseCode.INTERNAL_ERROR, 'internal error')
      return
    }
    if (conn.state !== ConnectionState.OPENING) return
    conn.state = ConnectionState.OPEN
    const pending = conn.pending
    conn.pending = null
    for (const [data, isBinary] of pending?.frames ?? []) this.#inbound.handle(conn, data, isBinary)
  }

  /**
   * `connected`, for a node with history: once the route and `onOpen` have put the connection in its channels, with
   * each channel's position, and the recovery of each the client gave a position for (`since`), followed by what
   * the recoveries replay, then whatever was held meanwhile (less what the replay had).
   */
  async #connected (conn: Connection, since: Readonly<Record<string, StreamPosition>> | null): Promise<void> {
    const channels = [...conn.channels]
    const catchUps = await Promise.all(channels.map((channel) => this.#cluster.catchUp(channel, since?.[channel])))
    const positions: Record<string, StreamPosition> = {}
    const recovery: Record<string, Recovery> = {}
    const replay: OutboundMessage[] = []
    const upTo = new Map<string, number>()
    catchUps.forEach((catchUp, i) => {
      const channel = channels[i] as string
      if (catchUp === null) return
      positions[channel] = catchUp.position
      upTo.set(channel, catchUp.position.seq)
      if (catchUp.recovery === null) return
      recovery[channel] = catchUp.recovery
      for (const message of catchUp.replay) replay.push(message)
    })
    const param = this.#connectedParam(conn)
    if (upTo.size > 0) param.positions = positions
    if (since !== null) param.recovery = recovery
    conn.release(replayFrames(envelope(conn.home, 'connected', param), replay), upTo, true)
  }

  /** `connected`'s param: the connection's id and channel, and how long its message ids are remembered. */
  #connectedParam (conn: Connection): ConnectedParam {
    const param: ConnectedParam = { connectionId: conn.id, channels: [conn.home] }
    if (this.#dedupe !== null) param.dedupe = this.#dedupe.advertised(conn)
    return param
  }

  async #release (conn: Connection, code: number): Promise<void> {
    conn.state = ConnectionState.CLOSED
    this.#hub.remove(conn)
    this.#perIp.remove(conn.ip)
    this.#perUser.remove(conn.profileId)
    this.#expiry.delete(conn)
    conn.debug({ code }, 'connection closed')
    this.#hub.observer.closed(conn, code)
    if (this.#hub.size === 0) this.#drained?.()
    // Each step fails alone: a broker error must not keep the connection in its other channels (a leak), and one
    // application hook must not stop the others.
    await Promise.all([...conn.channels].map(async (channel) => {
      try {
        await this.#cluster.leave(conn, channel)
      } catch (err) {
        conn.log.error({ err, channel }, 'leaving a channel failed')
      }
    }))
    for (const hook of this.#closeHooks) {
      try {
        await hook(conn, code)
      } catch (err) {
        conn.log.error({ err }, 'close hook failed')
      }
    }
  }
}
