/**
 * The forge-socket client, for browsers and Node: `import { Socket } from 'fastify-forge-socket/client'`.
 * No Node-only import anywhere below this folder.
 */
export { Socket } from './socket.js'
export { resolveUrl } from './connect.js'
export type { SocketOptions, TokenProvider } from './options.js'
export type { SubscribeAnswer } from './subscriptions.js'
export { presenceChanges, type PresenceChanges } from './presence.js'
export { SocketError, type SocketErrorDetails } from './errors.js'
export type { ClientCommands, ServerCommands, ClientParam, ServerParam, Message, PresenceMember, SocketState, WebSocketLike, WebSocketConstructor, ChannelPosition, RecoveryResult, RecoveryReason, Dedupe } from './types.js'
export { CloseCode, type CloseCodeValue } from './close-codes.js'
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js'
export { closeAction, refusalAction, type CloseAction } from './close-policy.js'
export { retryAfterMs, RETRY_AFTER_CAP } from './refusal.js'
export { OutboundQueue, QueueFullError, DEFAULT_QUEUE, type QueueOptions, type DropReason } from './queue.js'
