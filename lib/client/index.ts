/**
 * The forge-socket client, for browsers and Node: `import { Socket } from 'fastify-forge-socket/client'`.
 * No Node-only import anywhere below this folder.
 */
export { Socket, resolveUrl, type SocketOptions, type TokenProvider } from './socket.js'
export { SocketError, type ClientCommands, type ServerCommands, type ClientParam, type ServerParam, type Message, type SocketState, type WebSocketLike, type WebSocketConstructor } from './types.js'
export { backoffDelay, DEFAULT_BACKOFF, type BackoffOptions } from './backoff.js'
export { closeAction, type CloseAction } from './close-policy.js'
export { OutboundQueue, QueueFullError, DEFAULT_QUEUE, type QueueOptions, type DropReason } from './queue.js'
