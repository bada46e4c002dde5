/**
 * The forge-socket client, for browsers and Node: `import { Socket } from 'fastify-forge-socket/client'`.
 * No Node-only import anywhere below this folder.
 */
export { Socket, resolveUrl, type SocketOptions, type TokenProvider } from './socket.js'
export type { SubscribeAnswer } from './subscriptions.js'
export { presenceChanges, type PresenceChanges } from './presence.js'
export { SocketError, type SocketErrorDetails, type ClientCommands, type ServerCommands, type ClientParam, type ServerParam, type Message, type PresenceMember, type SocketState, type WebSocketLike, type WebSocketConstructor } from './types.js'
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js'
export { closeAction, refusalAction, type CloseAction } from './close-policy.js'
export { retryAfterMs, RETRY_AFTER_CAP } from './refusal.js'
export { OutboundQueue, QueueFullError, DEFAULT_QUEUE, type QueueOptions, type DropReason } from './queue.js'
