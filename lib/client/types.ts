/** Who joined or left: their connection, or (when their node died or came back) their node. */
export interface PresenceMember {
  user: string
  connectionId?: string
  node?: string
}

/** Where a channel's stream stands: the stream (`epoch`) and its last seq. A seq is comparable only within one epoch. */
export interface ChannelPosition {
  readonly epoch: string
  readonly seq: number
}

/**
 * Why a recovery did not replay what was missed: another stream (`epoch`: the server's store restarted or lost its
 * data), the messages are gone (`expired`), too many are missing (`too-many`), the client's seq is past the top
 * (`future`); or the reason of a `channel-reset` (`gap`, …).
 */
export type RecoveryReason = 'epoch' | 'expired' | 'too-many' | 'future' | (string & {})

/**
 * How one channel came back: its position now, and whether exactly what was missed follows (`recovered`,
 * `replayed` messages, before any live one). When not, nothing is replayed, and what the app shows of the channel
 * must be read again (the `history` command).
 */
export interface RecoveryResult extends ChannelPosition {
  readonly recovered: boolean
  readonly replayed: number
  readonly reason?: RecoveryReason
}

/** A message as it travels: `Message<P>` for a known param type. */
export interface Message<P = unknown, C extends string = string> {
  readonly channel: string
  readonly cmd: C
  readonly param: P
  readonly ref?: string
  readonly seq?: number
  /** On a `reply`: the server had handled this request's `id` already, and this is the answer it kept. */
  readonly dup?: boolean
}

/**
 * The server's dedupe of client commands by `id`, as `connected` announces it: a message with an `id` it has seen
 * within `window` ms is answered, not run again. `scope: 'user'` dedupes across the user's connections, so the
 * client resends an unanswered request after a reconnection; `'connection'` (anonymous) only within one connection.
 */
export interface Dedupe {
  readonly window: number
  readonly scope: 'user' | 'connection'
}

/**
 * The params of the commands a client sends, by command. Declare yours once and `send` / `request` check them:
 *
 * @example
 * declare module 'fastify-forge-socket/client' {
 *   interface ClientCommands { 'chat-message': { text: string } }
 * }
 */
export interface ClientCommands {}

/**
 * The params of the messages a server sends, by command. The protocol's own are here; add yours the same way and
 * `on(cmd, fn)` hands `fn` a typed message.
 */
export interface ServerCommands {
  /**
   * `positions`: where each of the channels that keep history stands (docs/protocol.md, channel history);
   * `recovery`, when the client sent `since`: how each of those channels came back; `dedupe`, when the server
   * dedupes client commands by `id`.
   */
  'connected': { connectionId: string, channels: string[], positions?: Record<string, ChannelPosition>, recovery?: Record<string, RecoveryResult>, dedupe?: Dedupe }
  /** The server could not fill a gap in the channel: its position is now this, and what the app shows of it must be read again. */
  'channel-reset': { epoch: string, seq: number, reason: string }
  'error': { code: string, message: string }
  'user-joined': { user: string, connectionId: string }
  'user-left': { user: string, connectionId: string }
  /** Presence in channels whose mode is `diff`: every join and leave of one interval. */
  'presence-diff': { joins: PresenceMember[], leaves: PresenceMember[] }
  'pong': null
}

export type ClientParam<C extends string> = C extends keyof ClientCommands ? ClientCommands[C] : unknown
export type ServerParam<C extends string> = C extends keyof ServerCommands ? ServerCommands[C] : unknown

/** `connecting` (first attempt), `open` (after `connected`), `reconnecting` (waiting or trying again), `closed` (for good). */
export type SocketState = 'connecting' | 'open' | 'reconnecting' | 'closed'

/** The part of the WebSocket API the client uses: the browser's, or `ws` in Node. */
export interface WebSocketLike {
  readonly readyState: number
  onopen: ((event: unknown) => void) | null
  onmessage: ((event: { data: unknown }) => void) | null
  onclose: ((event: { code: number, reason: string }) => void) | null
  onerror: ((event: unknown) => void) | null
  send (data: string): void
  close (code?: number, reason?: string): void
}

export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike
