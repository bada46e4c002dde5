/**
 * The private symbols forge-socket puts on objects it does not own (ws sockets, Fastify requests and route
 * configs), in one place so that two files can never mint two symbols for one slot.
 */

/** On a ws socket: the Connection its events are for (lib/lifecycle.ts). */
export const kConnection = Symbol('forge-socket.connection')
/** On a ws socket: the Lifecycle that accepted it, for the listeners every socket shares. */
export const kLifecycle = Symbol('forge-socket.lifecycle')
/** On an upgrading request: the act handler's plan (lib/act.ts). */
export const kPlan = Symbol('forge-socket.plan')
/** On an upgrading request: the HTTP response @fastify/websocket hands the socket, detached after the upgrade. */
export const kResponse = Symbol('forge-socket.response')
/** In a route's config: a route that does not take WebSocket upgrades (plugin.ts). */
export const kPlainRoute = Symbol('forge-socket.plain-route')
/** On an upgrade's raw request: the `?token=` taken out of its URL (lib/auth.ts). */
export const kQueryToken = Symbol('forge-socket.query-token')
/** `app.socket[kAdmin]()`: what the admin plugin uses of the node. */
export const kAdmin = Symbol('forge-socket.admin')
